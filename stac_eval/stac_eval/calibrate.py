"""`stac-calibrate`: fix STAC's offline settings for a model from training frames (not val).

The online rule dQP = alpha * 6 * log2(G / g) leaves choices that the first-order model cannot
settle: how far to trust it (alpha), how far to let it go (dmax), whether to smooth, how to
weigh classes in the loss whose gradient is taken, whether x264's variance AQ should add to the
map, and which few levels the feedback may use. They are chosen here by what the evaluation
measures: the BD-rate against uniform QP on training frames (intra, the practical variant: the
gradient of the frame decoded at the base quality), averaged over mIoU against the human labels
and against the DNN's own output on the raw frames (the second is far less noisy on a few
frames), by coordinate descent over small grids. The level bank is then fitted (Lloyd) for a
few sizes and the one with the best BD-rate counting the map's wire bytes on every frame wins:
more levels follow the rule closer but cost feedback. The result is written beside the model's
weights, where the benchmark and the edge node find it.

Known limitation: the frames must be ones the model was not trained on. On CamVid train frames,
which the shipped model has fitted, the search preferred class weights, smoothing and x264 AQ
1.0 under the map (-44.8% in-sample), settings that measured -18.1% vs uniform on CamVid val
where the built-in defaults measured -33.8% (stac_eval/results/spatial_camvid_val*.json).
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
from stac_edge_segmenter.camvid import IGNORE_INDEX
from stac_edge_segmenter.loading import SegmentationModel, load_model
from stac_eval.frame_dirs import read_frames
from stac_eval.intra import code_intra
from stac_eval.rate_accuracy import MethodCurve, curve_bd_rate, frame_confusion
from stac_sensitivity.allocation import AllocationConfig, allocate, continuous_offsets_qp
from stac_sensitivity.calibration import (
    Calibration,
    default_calibration_path,
    save_calibration,
)
from stac_sensitivity.sensitivity import compute_sensitivity

DEFAULT_CRFS = (24, 30, 36, 42)
# Coordinate-descent grids, searched in this order (each starts from the best so far).
SEARCH_GRID: dict[str, tuple] = {
    "class_weight_exponent": (0.0, 0.5, 1.0),
    "aq_strength": (0.001, 0.5, 1.0, 1.5),
    "alpha": (0.3, 0.4, 0.5, 0.65, 0.8),
    "max_offset_qp": (6, 8, 10, 13, 16),
    "smoothing_sigma_mb": (0.0, 0.7, 1.2),
}
BANK_SIZES = (4, 8, 16)
# The smallest bank within this many BD-rate points of the best wins (differences below it are
# noise on a few dozen frames; fewer levels mean a smaller, simpler map).
BANK_TOLERANCE_PCT = 0.5
START = {
    "class_weight_exponent": 0.0,
    "alpha": 0.5,
    "max_offset_qp": 10,
    "smoothing_sigma_mb": 0.0,
    "aq_strength": 0.001,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stac-calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="training frames (PNG dir)")
    parser.add_argument("--labels", type=Path, default=None, help="their class-id PNGs")
    parser.add_argument("--limit", type=int, default=24, help="number of frames to use")
    parser.add_argument("--stride", type=int, default=15, help="take every Nth frame")
    parser.add_argument(
        "--crf", type=float, nargs="+", default=list(DEFAULT_CRFS), help="H.264 base qualities"
    )
    parser.add_argument(
        "--bank-sizes", type=int, nargs="+", default=list(BANK_SIZES), help="level banks to try"
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


def class_weights_for(truth: np.ndarray, num_classes: int, exponent: float) -> tuple | None:
    """frequency^-exponent per class, pixel-weighted mean 1 (None for exponent 0).

    mIoU averages classes, cross-entropy averages pixels; weighting the loss by inverse
    frequency moves the sensitivity towards what mIoU counts.
    """
    if exponent == 0:
        return None
    counts = np.bincount(truth.reshape(-1), minlength=num_classes + 1)[:num_classes]
    frequency = np.maximum(counts / max(counts.sum(), 1), 1e-6)
    weights = frequency**-exponent
    return tuple(float(w) for w in weights / (frequency * weights).sum())


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
            weights = class_weights_for(_class_source(self.sweep), self.model.num_classes, exponent)
            per_crf = [
                compute_sensitivity(
                    self.model.logits, decoded, device=self.device, class_weights=weights
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
        config = _allocation_config(params, levels_qp)
        sensitivities = self.sensitivities(params["class_weight_exponent"])
        sweep = self.sweep
        curve = MethodCurve("stac", "crf", sweep.crfs, self.model.num_classes)
        for point, crf in enumerate(sweep.crfs):
            allocations = [allocate(s, config) for s in sensitivities[point]]
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


def _allocation_config(params: dict, levels_qp: tuple[int, ...] = ()) -> AllocationConfig:
    return AllocationConfig(
        alpha=params["alpha"],
        max_offset_qp=params["max_offset_qp"],
        levels_qp=levels_qp,
        smoothing_sigma_mb=params["smoothing_sigma_mb"],
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
        predicted = model.predict(frames).class_ids
        for index, c in enumerate(coded):
            anchor.add(point, c.slice_bytes, _confusions(truth, index, predicted[index], model))
        decoded.append(frames)
    return TrainingSweep(images, truth, list(crfs), decoded, anchor, {})


def coordinate_descent(calibrator: Calibrator, grid: dict[str, tuple] = SEARCH_GRID) -> dict:
    """One pass over the grid, each parameter set to its best value given the others."""
    best = dict(START)
    for name, values in grid.items():
        scores = {value: calibrator.objective({**best, name: value}) for value in values}
        best[name] = min(scores, key=scores.get)
    return best


def calibrate(
    model: SegmentationModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    crfs: Sequence[float],
    bank_sizes: Sequence[int] = BANK_SIZES,
    device: str = "cpu",
    grid: dict[str, tuple] = SEARCH_GRID,
) -> Calibration:
    """Search the rule's settings on coded bytes, then the level bank on bytes + feedback."""
    started = time.time()
    sweep = prepare_sweep(model, images, labels, crfs)
    calibrator = Calibrator(model, sweep, device)
    best = coordinate_descent(calibrator, grid)
    banks = {}
    for size in sorted(bank_sizes):
        bank = fit_level_bank(calibrator, best, size)
        banks[bank] = calibrator.objective(best, bank, with_feedback=True)
    banks[()] = calibrator.objective(best, (), with_feedback=True)  # every integer level
    good_enough = min(banks.values()) + BANK_TOLERANCE_PCT
    levels = next(bank for bank, value in banks.items() if value <= good_enough)
    exponent = best["class_weight_exponent"]
    return Calibration(
        alpha=best["alpha"],
        max_offset_qp=best["max_offset_qp"],
        levels_qp=levels,
        smoothing_sigma_mb=best["smoothing_sigma_mb"],
        class_weights=class_weights_for(_class_source(sweep), model.num_classes, exponent),
        aq_strength=best["aq_strength"],
        provenance={
            "model": model.spec.name,
            "weights_file": model.spec.weights.name,
            "frames": len(images),
            "labels": sorted(sweep.truth),
            "crfs": list(crfs),
            "objective": "mean BD-rate vs uniform QP over label kinds, practical variant, intra; "
            "the bank: the same with the map's wire bytes added to every frame",
            "class_weight_exponent": exponent,
            "bd_rate_pct": _finite_or_none(calibrator.objective(best, levels)),
            "bd_rate_pct_with_feedback": _finite_or_none(banks[levels]),
            "search": calibrator.log,
            "seconds": round(time.time() - started, 1),
        },
    )


def fit_level_bank(calibrator: Calibrator, params: dict, size: int) -> tuple[int, ...]:
    """A `size`-level bank fitted (Lloyd) to the rule's offsets over the training maps."""
    config = _allocation_config(params)
    maps = calibrator.sensitivities(params["class_weight_exponent"])
    offsets = [continuous_offsets_qp(s, config) for s in maps.reshape(-1, *maps.shape[-2:])]
    return lloyd_levels(np.stack(offsets), size, config.max_offset_qp)


def _class_source(sweep: TrainingSweep) -> np.ndarray:
    """Labels to count class frequencies on: human ones when given (offline), else the DNN's."""
    return sweep.truth.get("human", sweep.truth["pseudo"])


def _finite_or_none(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    frames = read_frames(args.images, args.labels, args.limit, args.stride)
    print(f"calibrating {model.spec.name} on {len(frames.names)} frames of {args.images}")
    calibration = calibrate(
        model, frames.images, frames.labels, args.crf, args.bank_sizes, args.device
    )
    out = args.out or default_calibration_path(model.spec.weights)
    save_calibration(calibration, out)
    summary = {k: v for k, v in calibration.provenance.items() if k != "search"}
    print(
        f"alpha {calibration.alpha}, dmax {calibration.max_offset_qp}, "
        f"levels {list(calibration.levels_qp)}, smoothing {calibration.smoothing_sigma_mb}, "
        f"aq {calibration.aq_strength}\n{summary}\nwrote {out}"
    )
    return 0
