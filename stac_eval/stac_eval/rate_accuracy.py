"""Bits-vs-mIoU curves kept per frame, so BD-rates come with bootstrap confidence intervals.

A method's curve is a sweep of its knob (CRF, JPEG quality). Every operating point keeps each
frame's coded bytes and confusion matrices (against human labels and against the DNN's output
on the raw frame); a curve point is the mean bytes per frame and the mIoU of the summed
confusion matrix (the standard dataset mIoU). Resampling frames with replacement and recomputing
both curves gives a bootstrap interval for the BD-rate between two methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_eval.bd_rate import NoOverlapError, bd_rate_pct

LABEL_KINDS = ("human", "pseudo")


@dataclass
class MethodCurve:
    """One method's sweep: knob values and, per knob value, per-frame bytes and confusions."""

    name: str
    knob_name: str
    knob_values: list[float]
    num_classes: int
    frame_bytes: list[list[int]] = field(default_factory=list)
    feedback_bytes: list[list[int]] = field(default_factory=list)
    confusion: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = len(self.knob_values)
        self.frame_bytes = [[] for _ in range(points)]
        self.feedback_bytes = [[] for _ in range(points)]
        self.confusion = {kind: [[] for _ in range(points)] for kind in LABEL_KINDS}

    def add(
        self,
        point: int,
        coded_bytes: int,
        confusions: dict[str, np.ndarray],
        feedback_bytes: int = 0,
    ) -> None:
        """Record one frame at operating point `point` (confusions: label kind -> KxK)."""
        self.frame_bytes[point].append(int(coded_bytes))
        self.feedback_bytes[point].append(int(feedback_bytes))
        for kind in LABEL_KINDS:
            if kind in confusions:
                self.confusion[kind][point].append(confusions[kind])

    def has_labels(self, kind: str) -> bool:
        return all(len(frames) > 0 for frames in self.confusion[kind])

    def rates_bytes(self, frames: np.ndarray | None = None, with_feedback: bool = False):
        """Mean bytes per frame at each point (over `frames`, default all)."""
        values = np.asarray(self.frame_bytes, dtype=np.float64)
        if with_feedback:
            values = values + np.asarray(self.feedback_bytes, dtype=np.float64)
        chosen = values if frames is None else values[:, frames]
        return chosen.mean(axis=1)

    def mious(self, kind: str, frames: np.ndarray | None = None) -> np.ndarray:
        """Dataset mIoU at each point against `kind` labels (over `frames`, default all)."""
        values = []
        for per_frame in self.confusion[kind]:
            stacked = np.asarray(per_frame)
            summed = (stacked if frames is None else stacked[frames]).sum(axis=0)
            values.append(miou_of(summed, self.num_classes))
        return np.asarray(values)

    def as_json(self) -> dict:
        points = []
        rates = self.rates_bytes()
        feedback = np.asarray(self.feedback_bytes, dtype=np.float64).mean(axis=1)
        mious = {kind: self.mious(kind) for kind in LABEL_KINDS if self.has_labels(kind)}
        for index, knob in enumerate(self.knob_values):
            point = {self.knob_name: knob, "bytes_per_frame": round(float(rates[index]), 1)}
            if feedback[index] > 0:
                point["feedback_bytes_per_frame"] = round(float(feedback[index]), 1)
            for kind, values in mious.items():
                point[f"miou_{kind}"] = round(float(values[index]), 4)
            points.append(point)
        return {"knob": self.knob_name, "frames": len(self.frame_bytes[0]), "points": points}


def miou_of(confusion: np.ndarray, num_classes: int) -> float:
    """mIoU of a summed KxK confusion matrix (classes never seen nor predicted left out)."""
    matrix = ConfusionMatrix(num_classes)
    matrix.matrix = np.asarray(confusion, dtype=np.int64)
    return matrix.mean_iou()


def frame_confusion(
    truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore: int | None
):
    """KxK confusion matrix of one frame (truth `ignore` pixels left out)."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore)
    matrix.update(truth, prediction)
    return matrix.matrix.copy()


def curve_bd_rate(
    anchor: MethodCurve,
    test: MethodCurve,
    kind: str,
    frames: np.ndarray | None = None,
    with_feedback: bool = False,
) -> float:
    """BD-rate (percent) of `test` against `anchor` on `kind` labels."""
    return bd_rate_pct(
        anchor.rates_bytes(frames, with_feedback),
        anchor.mious(kind, frames),
        test.rates_bytes(frames, with_feedback),
        test.mious(kind, frames),
    )


def bootstrap_bd_rate_ci(
    anchor: MethodCurve,
    test: MethodCurve,
    kind: str,
    resamples: int = 200,
    seed: int = 0,
) -> tuple[float, float] | None:
    """95% bootstrap interval (over frames) of the BD-rate; None if too few resamples overlap."""
    count = len(anchor.frame_bytes[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        frames = rng.integers(0, count, size=count)
        try:
            values.append(curve_bd_rate(anchor, test, kind, frames))
        except (NoOverlapError, ValueError):
            continue
    if len(values) < resamples // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
