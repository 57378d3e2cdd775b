"""`stac-calibrate`: fix STAC's offline settings for a model on frames it never saw.

Protocol: the settings are chosen only on frames that are neither in the model's training set
nor in any set results are reported on. The model has fitted its training frames (a search on
CamVid train picked settings that measured -18.1% vs uniform on CamVid val where the built-in
defaults measured -33.8%), and settings chosen on the reported set flatter it. stac-calibrate
therefore refuses frames that its overlap check finds in the model's training or validation
split (training_overlap.py; `--allow-overlap` records them instead, for experiments only).
Unlabelled video is the natural source: frames spread over each clip, cropped and resized to
the working size, scored against the model's own output on the raw frames (pseudo labels).

What it fixes, in order:
1. The rate model of the rate-aware rule (allocation.py): x264 codes each frame with random
   per-macroblock offsets by energy class and a regression measures bits per QP per macroblock
   against AC energy (rate_model.py): a_i ~ (E_i + E0)^gamma. Measured, not searched.
2. By coordinate descent over small grids, on the BD-rate against uniform QP (intra, the
   practical variant: the gradient and the energy of the frame decoded at the base quality,
   averaged over the kinds of labels present): the class weighting of the loss (each frame's
   own predicted class frequencies to a power, so nothing of the calibration set's class
   balance is carried to other content; sensitivity.py), the weight of the
   rate term (0 = STAC's rule q ~ 1/g, 1 = the measured rate model as derived), x264's AQ
   strength under the map, the offset scale alpha, the clamp dmax and the smoothing.
3. The level bank (Lloyd) for a few sizes: the smallest within 0.5 BD-rate points of the best,
   with the map's wire bytes counted on every frame.
The result is written beside the model's weights, where the benchmark and the edge node find it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stac_codec.qp_map_wire import encode_qp_map
from stac_edge_segmenter.loading import SegmentationModel, load_model
from stac_eval.frame_dirs import read_sources
from stac_eval.intra import code_intra
from stac_eval.rate_accuracy import MethodCurve, curve_bd_rate, frame_confusion
from stac_eval.rate_model import RateSlopeFit, fit_rate_slope, measure_rate_slopes
from stac_eval.training_overlap import check_frames
from stac_sensitivity.allocation import AllocationConfig, allocate, continuous_offsets_qp
from stac_sensitivity.calibration import (
    Calibration,
    default_calibration_path,
    save_calibration,
)
from stac_sensitivity.macroblocks import macroblock_ac_energy
from stac_sensitivity.sensitivity import compute_sensitivity
from stac_training.camvid import IGNORE_INDEX

DEFAULT_CRFS = (20, 26, 32, 38, 44)
# Coordinate-descent grids, searched in this order (each starts from the best so far).
SEARCH_GRID: dict[str, tuple] = {
    "class_weight_exponent": (0.0, 0.5, 1.0),
    "rate_weight": (0.0, 0.5, 0.75, 1.0, 1.5),
    "aq_strength": (0.001, 0.5, 1.0),
    "alpha": (0.3, 0.4, 0.5, 0.65, 0.8),
    "max_offset_qp": (6, 8, 10, 13, 16),
    "smoothing_sigma_mb": (0.0, 0.7, 1.2),
}
SEARCH_PASSES = 2
BANK_SIZES = (4, 8, 16)
# The smallest bank within this many BD-rate points of the best wins (differences below it are
# noise on a few dozen frames; fewer levels mean a smaller, simpler map).
BANK_TOLERANCE_PCT = 0.5
START = {
    "class_weight_exponent": 0.0,
    "rate_weight": 1.0,
    "alpha": 0.5,
    "max_offset_qp": 10,
    "smoothing_sigma_mb": 0.0,
    "aq_strength": 0.001,
}
DEFAULT_VIDEO_FRAMES = 24


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stac-calibrate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        help="frame sources the model never saw: PNG directories and/or video files",
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="class-id PNGs (one directory source only)"
    )
    parser.add_argument("--limit", type=int, default=24, help="frames per PNG directory")
    parser.add_argument("--stride", type=int, default=15, help="take every Nth PNG")
    parser.add_argument(
        "--video-frames",
        type=int,
        default=DEFAULT_VIDEO_FRAMES,
        help="frames spread over each video file",
    )
    parser.add_argument(
        "--crf", type=float, nargs="+", default=list(DEFAULT_CRFS), help="H.264 base qualities"
    )
    parser.add_argument(
        "--bank-sizes", type=int, nargs="+", default=list(BANK_SIZES), help="level banks to try"
    )
    parser.add_argument(
        "--allow-overlap",
        action="store_true",
        help="record, instead of refusing, frames of the model's training or validation set "
        "(experiments only: settings chosen there do not transfer)",
    )
    parser.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    parser.add_argument("--out", type=Path, default=None, help="default: beside the weights")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return parser


@dataclass
class TrainingSweep:
    """What every candidate shares: frames, truth, and the uniform anchor at each CRF."""

    images: np.ndarray
    truth: dict[str, np.ndarray]  # "pseudo": the DNN on the raw frames; "human": labels, if any
    crfs: list[float]
    decoded: list[np.ndarray]  # per CRF: N x H x W x 3 uniform-coded frames
    anchor: MethodCurve
    sensitivities: dict[float, np.ndarray]  # class-weight exponent -> (C, N, rows, cols)
    energies: np.ndarray  # (C, N, rows, cols): AC energy of the uniform-coded frames
    rate_fit: RateSlopeFit | None = None


def lloyd_levels(offsets_qp: np.ndarray, num_levels: int, max_offset_qp: int) -> tuple[int, ...]:
    """Integer level bank minimising the squared snapping error of the offsets (1-D k-means)."""
    values = np.clip(offsets_qp.reshape(-1), -max_offset_qp, max_offset_qp)
    centres = np.quantile(values, (np.arange(num_levels) + 0.5) / num_levels)
    for _ in range(50):
        nearest = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        for index in range(num_levels):
            members = values[nearest == index]
            if members.size:
                centres[index] = members.mean()
    return tuple(int(v) for v in np.unique(np.round(centres)))


class Calibrator:
    """Evaluates candidate settings on a TrainingSweep, caching every result."""

    def __init__(self, model: SegmentationModel, sweep: TrainingSweep, device: str) -> None:
        self.model = model
        self.sweep = sweep
        self.device = device
        self.log: list[dict] = []
        self._logged: list[dict] = []
        self._curves: dict[tuple, MethodCurve] = {}

    def sensitivities(self, exponent: float) -> np.ndarray:
        if exponent not in self.sweep.sensitivities:
            per_crf = [
                compute_sensitivity(
                    self.model.logits,
                    decoded,
                    device=self.device,
                    class_weight_exponent=exponent,
                ).macroblock_sensitivity
                for decoded in self.sweep.decoded
            ]
            self.sweep.sensitivities[exponent] = np.stack(per_crf)
        return self.sweep.sensitivities[exponent]

    def objective(
        self, params: dict, levels_qp: tuple[int, ...] = (), with_feedback: bool = False
    ) -> float:
        """Mean BD-rate (percent) against uniform over the kinds of labels; inf if undefined."""
        key = (tuple(sorted(params.items())), levels_qp)
        if key not in self._curves:
            self._curves[key] = self._code(params, levels_qp)
        curve = self._curves[key]
        try:
            value = float(
                np.mean(
                    [
                        curve_bd_rate(self.sweep.anchor, curve, kind, with_feedback=with_feedback)
                        for kind in self.sweep.truth
                    ]
                )
            )
        except ValueError:  # no overlap, or a curve without 2 efficient points: unusable
            value = float("inf")
        entry = {**params, "levels_qp": list(levels_qp), "with_feedback": with_feedback}
        if entry not in self._logged:
            self._logged.append(entry)
            self.log.append({**entry, "bd_rate_pct": _finite_or_none(value)})
            banks = f"levels={list(levels_qp) or 'all'}{' +feedback' if with_feedback else ''}"
            print(f"  {params} {banks}: {value:+.2f}%", flush=True)
        return value

    def _code(self, params: dict, levels_qp: tuple[int, ...]) -> MethodCurve:
        config = _allocation_config(params, levels_qp, self.sweep.rate_fit)
        sensitivities = self.sensitivities(params["class_weight_exponent"])
        sweep = self.sweep
        curve = MethodCurve("stac", "crf", sweep.crfs, self.model.num_classes)
        for point, crf in enumerate(sweep.crfs):
            allocations = [
                allocate(s, config, e)
                for s, e in zip(sensitivities[point], sweep.energies[point], strict=True)
            ]
            coded = [
                code_intra(image, crf, allocation.offsets_qp, params["aq_strength"])
                for image, allocation in zip(sweep.images, allocations, strict=True)
            ]
            predicted = self.model.predict(np.stack([c.decoded_rgb for c in coded])).class_ids
            for index, c in enumerate(coded):
                confusions = _confusions(sweep.truth, index, predicted[index], self.model)
                feedback = len(encode_qp_map(allocations[index]))
                curve.add(point, c.slice_bytes, confusions, feedback)
        return curve


def _rate_model(params: dict, rate_fit: RateSlopeFit | None) -> tuple[float, float]:
    """(rate_exponent, energy_floor) of a candidate: the measured model times its weight."""
    if rate_fit is None or params.get("rate_weight", 0.0) == 0.0:
        return 0.0, 1.0
    return params["rate_weight"] * rate_fit.rate_exponent, rate_fit.energy_floor


def _allocation_config(
    params: dict, levels_qp: tuple[int, ...] = (), rate_fit: RateSlopeFit | None = None
) -> AllocationConfig:
    rate_exponent, energy_floor = _rate_model(params, rate_fit)
    return AllocationConfig(
        alpha=params["alpha"],
        max_offset_qp=params["max_offset_qp"],
        levels_qp=levels_qp,
        smoothing_sigma_mb=params["smoothing_sigma_mb"],
        rate_exponent=rate_exponent,
        energy_floor=energy_floor,
    )


def _confusions(
    truth: dict[str, np.ndarray], index: int, prediction: np.ndarray, model: SegmentationModel
) -> dict[str, np.ndarray]:
    return {
        kind: frame_confusion(labels[index], prediction, model.num_classes, IGNORE_INDEX)
        for kind, labels in truth.items()
    }


def prepare_sweep(
    model: SegmentationModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    crfs: Sequence[float],
) -> TrainingSweep:
    """Code every frame uniformly at every CRF and measure the anchor curve."""
    truth = {"pseudo": model.predict(images).class_ids}
    if labels is not None:
        truth["human"] = labels
    anchor = MethodCurve("uniform", "crf", list(crfs), model.num_classes)
    decoded = []
    for point, crf in enumerate(crfs):
        coded = [code_intra(image, crf) for image in images]
        frames = np.stack([c.decoded_rgb for c in coded])
        predicted = model.predict(frames, with_probabilities=False).class_ids
        for index, c in enumerate(coded):
            anchor.add(point, c.slice_bytes, _confusions(truth, index, predicted[index], model))
        decoded.append(frames)
    energies = np.stack([[macroblock_ac_energy(frame) for frame in frames] for frames in decoded])
    return TrainingSweep(images, truth, list(crfs), decoded, anchor, {}, energies)


def coordinate_descent(
    calibrator: Calibrator, grid: dict[str, tuple] = SEARCH_GRID, passes: int = SEARCH_PASSES
) -> dict:
    """Passes over the grid, each parameter set to its best value given the others (results
    are cached, so a second pass only costs the candidates the first one did not try)."""
    best = {**START, **{name: values[0] for name, values in grid.items() if name not in START}}
    for _ in range(passes):
        before = dict(best)
        for name, values in grid.items():
            scores = {value: calibrator.objective({**best, name: value}) for value in values}
            best[name] = min(scores, key=scores.get)
        if best == before:
            break
    return best


def calibrate(
    model: SegmentationModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    crfs: Sequence[float],
    bank_sizes: Sequence[int] = BANK_SIZES,
    device: str = "cpu",
    grid: dict[str, tuple] = SEARCH_GRID,
    passes: int = SEARCH_PASSES,
    provenance: dict | None = None,
) -> Calibration:
    """Measure the rate model, search the rule's settings on coded bytes, then the level bank
    on bytes + feedback."""
    started = time.time()
    sweep = prepare_sweep(model, images, labels, crfs)
    print(f"  uniform anchor coded ({time.time() - started:.0f} s); measuring the rate model")
    sweep.rate_fit = fit_rate_slope(measure_rate_slopes(images, sweep.decoded, crfs))
    print(
        f"  bits per QP per macroblock ~ (E + {sweep.rate_fit.energy_floor:g})"
        f"^{sweep.rate_fit.rate_exponent:.3f} (rms {sweep.rate_fit.residual_rms_log2:.2f} in "
        f"log2; {time.time() - started:.0f} s)",
        flush=True,
    )
    calibrator = Calibrator(model, sweep, device)
    best = coordinate_descent(calibrator, grid, passes)
    banks = {}
    for size in sorted(bank_sizes):
        bank = fit_level_bank(calibrator, best, size)
        banks[bank] = calibrator.objective(best, bank, with_feedback=True)
    banks[()] = calibrator.objective(best, (), with_feedback=True)  # every integer level
    good_enough = min(banks.values()) + BANK_TOLERANCE_PCT
    levels = next(bank for bank, value in banks.items() if value <= good_enough)
    exponent = best["class_weight_exponent"]
    rate_exponent, energy_floor = _rate_model(best, sweep.rate_fit)
    return Calibration(
        alpha=best["alpha"],
        max_offset_qp=best["max_offset_qp"],
        levels_qp=levels,
        smoothing_sigma_mb=best["smoothing_sigma_mb"],
        class_weight_exponent=exponent,
        aq_strength=best["aq_strength"],
        rate_exponent=round(rate_exponent, 4),
        energy_floor=energy_floor,
        provenance={
            **(provenance or {}),
            "model": model.spec.name,
            "weights_file": model.spec.weights.name,
            "frames": len(images),
            "labels": sorted(sweep.truth),
            "crfs": list(crfs),
            "objective": "mean BD-rate vs uniform QP over label kinds, practical variant, intra; "
            "the bank: the same with the map's wire bytes added to every frame",
            "class_weight_exponent": exponent,
            "rate_weight": best["rate_weight"],
            "rate_model": sweep.rate_fit.as_json(),
            "bd_rate_pct": _finite_or_none(calibrator.objective(best, levels)),
            "bd_rate_pct_with_feedback": _finite_or_none(banks[levels]),
            "search": calibrator.log,
            "seconds": round(time.time() - started, 1),
        },
    )


def fit_level_bank(calibrator: Calibrator, params: dict, size: int) -> tuple[int, ...]:
    """A `size`-level bank fitted (Lloyd) to the rule's offsets over the calibration maps."""
    config = _allocation_config(params, (), calibrator.sweep.rate_fit)
    maps = calibrator.sensitivities(params["class_weight_exponent"])
    energies = calibrator.sweep.energies
    offsets = [
        continuous_offsets_qp(s, config, e)
        for s, e in zip(
            maps.reshape(-1, *maps.shape[-2:]),
            energies.reshape(-1, *energies.shape[-2:]),
            strict=True,
        )
    ]
    return lloyd_levels(np.stack(offsets), size, config.max_offset_qp)


def _finite_or_none(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    frames = read_sources(args.images, args.labels, args.limit, args.stride, args.video_frames)
    overlap = check_frames(frames.names, frames.images, model.spec.weights, args.allow_overlap)
    sources = ", ".join(str(source) for source in args.images)
    print(f"calibrating {model.spec.name} on {len(frames.names)} frames of {sources}")
    calibration = calibrate(
        model,
        frames.images,
        frames.labels,
        args.crf,
        args.bank_sizes,
        args.device,
        provenance={
            "command": "stac-calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
            "sources": [str(source) for source in args.images],
            "frame_names": frames.names,
            "frame_size": list(frames.images.shape[1:3][::-1]),
            "overlap_check": overlap.as_json(),
        },
    )
    out = args.out or default_calibration_path(model.spec.weights)
    save_calibration(calibration, out)
    summary = {
        k: v
        for k, v in calibration.provenance.items()
        if k not in ("search", "frame_names", "rate_model")
    }
    print(
        f"alpha {calibration.alpha}, dmax {calibration.max_offset_qp}, "
        f"levels {list(calibration.levels_qp)}, smoothing {calibration.smoothing_sigma_mb}, "
        f"rate exponent {calibration.rate_exponent} (E0 {calibration.energy_floor:g}), "
        f"aq {calibration.aq_strength}\n{summary}\nwrote {out}"
    )
    return 0
