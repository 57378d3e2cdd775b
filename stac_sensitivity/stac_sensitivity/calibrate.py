"""`stac-calibrate`: fix STAC's offline settings for a model from training frames (not val).

The online rule dQP = alpha * 6 * log2(G / g) leaves choices that the first-order model cannot
settle: how far to trust it (alpha), how far to let it go (dmax), whether to smooth, how to
weigh classes in the loss whose gradient is taken, whether x264's variance AQ should add to the
map, and which few levels the feedback may use. They are chosen here by what the evaluation
measures: the BD-rate against uniform QP on training frames (intra, the practical variant: the
gradient of the frame decoded at the base quality), by coordinate descent over small grids.
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

from stac_edge_segmenter.camvid import IGNORE_INDEX
from stac_edge_segmenter.loading import SegmentationModel, load_model
from stac_eval.rate_accuracy import MethodCurve, curve_bd_rate, frame_confusion
from stac_sensitivity.allocation import AllocationConfig, allocate, continuous_offsets_qp
from stac_sensitivity.calibration import (
    Calibration,
    default_calibration_path,
    save_calibration,
)
from stac_sensitivity.frame_dirs import read_frames
from stac_sensitivity.intra import code_intra
from stac_sensitivity.sensitivity import compute_sensitivity

DEFAULT_CRFS = (24, 30, 36, 42)
# Coordinate-descent grids, searched in this order (each starts from the best so far).
SEARCH_GRID: dict[str, tuple] = {
    "class_weight_exponent": (0.0, 0.5, 1.0),
    "aq_strength": (0.001, 0.5, 1.0, 1.5, 2.0),
    "alpha": (0.3, 0.4, 0.5, 0.65, 0.8),
    "max_offset_qp": (6, 8, 10, 13, 16),
    "smoothing_sigma_mb": (0.0, 0.7, 1.5),
}
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
    parser.add_argument("--levels", type=int, default=8, help="size of the level bank")
    parser.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    parser.add_argument("--out", type=Path, default=None, help="default: beside the weights")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    return parser


@dataclass
class TrainingSweep:
    """What every candidate shares: frames, truth, and the uniform anchor at each CRF."""

    images: np.ndarray
    truth: np.ndarray  # human labels, or the DNN's output on the raw frames
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
        self._cache: dict[tuple, float] = {}

    def sensitivities(self, exponent: float) -> np.ndarray:
        if exponent not in self.sweep.sensitivities:
            weights = class_weights_for(self.sweep.truth, self.model.num_classes, exponent)
            per_crf = [
                compute_sensitivity(
                    self.model.logits, decoded, device=self.device, class_weights=weights
                ).macroblock_sensitivity
                for decoded in self.sweep.decoded
            ]
            self.sweep.sensitivities[exponent] = np.stack(per_crf)
        return self.sweep.sensitivities[exponent]

    def bd_rate(self, params: dict, levels_qp: tuple[int, ...] = ()) -> float:
        key = (tuple(sorted(params.items())), levels_qp)
        if key not in self._cache:
            self._cache[key] = self._evaluate(params, levels_qp)
            entry = {**params, "levels_qp": list(levels_qp)}
            self.log.append({**entry, "bd_rate_pct": _finite_or_none(self._cache[key])})
            print(f"  {params} levels={list(levels_qp) or 'all'}: {self._cache[key]:+.2f}%")
        return self._cache[key]

    def _evaluate(self, params: dict, levels_qp: tuple[int, ...]) -> float:
        config = _allocation_config(params, levels_qp)
        sensitivities = self.sensitivities(params["class_weight_exponent"])
        sweep = self.sweep
        curve = MethodCurve("stac", "crf", sweep.crfs, self.model.num_classes)
        for point, crf in enumerate(sweep.crfs):
            coded = [
                code_intra(image, crf, allocate(s, config).offsets_qp, params["aq_strength"])
                for image, s in zip(sweep.images, sensitivities[point], strict=True)
            ]
            predicted = self.model.predict(np.stack([c.decoded_rgb for c in coded])).class_ids
            for index, c in enumerate(coded):
                confusion = _confusion(sweep.truth[index], predicted[index], self.model)
                curve.add(point, c.slice_bytes, {"human": confusion})
        try:
            return curve_bd_rate(sweep.anchor, curve, "human")
        except ValueError:  # no overlap, or a curve without 2 efficient points: unusable
            return float("inf")


def _allocation_config(params: dict, levels_qp: tuple[int, ...] = ()) -> AllocationConfig:
    return AllocationConfig(
        alpha=params["alpha"],
        max_offset_qp=params["max_offset_qp"],
        levels_qp=levels_qp,
        smoothing_sigma_mb=params["smoothing_sigma_mb"],
    )


def _confusion(truth: np.ndarray, prediction: np.ndarray, model: SegmentationModel) -> np.ndarray:
    return frame_confusion(truth, prediction, model.num_classes, IGNORE_INDEX)


def prepare_sweep(
    model: SegmentationModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    crfs: Sequence[float],
) -> TrainingSweep:
    """Code every frame uniformly at every CRF and measure the anchor curve."""
    truth = labels if labels is not None else model.predict(images).class_ids
    anchor = MethodCurve("uniform", "crf", list(crfs), model.num_classes)
    decoded = []
    for point, crf in enumerate(crfs):
        coded = [code_intra(image, crf) for image in images]
        frames = np.stack([c.decoded_rgb for c in coded])
        predicted = model.predict(frames).class_ids
        for index, c in enumerate(coded):
            anchor.add(
                point, c.slice_bytes, {"human": _confusion(truth[index], predicted[index], model)}
            )
        decoded.append(frames)
    return TrainingSweep(images, truth, list(crfs), decoded, anchor, {})


def coordinate_descent(calibrator: Calibrator, grid: dict[str, tuple] = SEARCH_GRID) -> dict:
    """One pass over the grid, each parameter set to its best value given the others."""
    best = dict(START)
    for name, values in grid.items():
        scores = {value: calibrator.bd_rate({**best, name: value}) for value in values}
        best[name] = min(scores, key=scores.get)
    return best


def calibrate(
    model: SegmentationModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    crfs: Sequence[float],
    num_levels: int,
    device: str = "cpu",
    grid: dict[str, tuple] = SEARCH_GRID,
) -> Calibration:
    """Search the settings, then fit a num_levels bank to the chosen rule's offsets."""
    started = time.time()
    sweep = prepare_sweep(model, images, labels, crfs)
    calibrator = Calibrator(model, sweep, device)
    best = coordinate_descent(calibrator, grid)
    continuous_bd = calibrator.bd_rate(best)
    config = _allocation_config(best)
    maps = calibrator.sensitivities(best["class_weight_exponent"])
    offsets = [continuous_offsets_qp(s, config) for s in maps.reshape(-1, *maps.shape[-2:])]
    levels = lloyd_levels(np.stack(offsets), num_levels, config.max_offset_qp)
    banked_bd = calibrator.bd_rate(best, levels)
    weights = class_weights_for(sweep.truth, model.num_classes, best["class_weight_exponent"])
    return Calibration(
        alpha=best["alpha"],
        max_offset_qp=best["max_offset_qp"],
        levels_qp=levels,
        smoothing_sigma_mb=best["smoothing_sigma_mb"],
        class_weights=weights,
        aq_strength=best["aq_strength"],
        provenance={
            "model": model.spec.name,
            "weights_file": model.spec.weights.name,
            "frames": len(images),
            "labels": "human" if labels is not None else "pseudo",
            "crfs": list(crfs),
            "objective": "BD-rate vs uniform QP, practical variant, intra",
            "class_weight_exponent": best["class_weight_exponent"],
            "bd_rate_pct_all_integer_levels": _finite_or_none(continuous_bd),
            "bd_rate_pct_with_bank": _finite_or_none(banked_bd),
            "search": calibrator.log,
            "seconds": round(time.time() - started, 1),
        },
    )


def _finite_or_none(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device)
    frames = read_frames(args.images, args.labels, args.limit, args.stride)
    print(f"calibrating {model.spec.name} on {len(frames.names)} frames of {args.images}")
    calibration = calibrate(model, frames.images, frames.labels, args.crf, args.levels, args.device)
    out = args.out or default_calibration_path(model.spec.weights)
    save_calibration(calibration, out)
    summary = {k: v for k, v in calibration.provenance.items() if k != "search"}
    print(
        f"alpha {calibration.alpha}, dmax {calibration.max_offset_qp}, "
        f"levels {list(calibration.levels_qp)}, smoothing {calibration.smoothing_sigma_mb}, "
        f"aq {calibration.aq_strength}\n{summary}\nwrote {out}"
    )
    return 0
