"""Segmentation accuracy from a confusion matrix: per-class IoU, mIoU, pixel accuracy."""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates a KxK matrix (rows: truth, columns: prediction) over many frames.

    Pixels whose truth is `ignore_index` (or any id outside 0..K-1) are not counted.
    Classes absent from both truth and prediction get IoU NaN and are left out of the mean.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        """Add one or more frames; `truth` and `prediction` are integer arrays of one shape."""
        truth = np.asarray(truth)
        prediction = np.asarray(prediction)
        if truth.shape != prediction.shape:
            raise ValueError(f"truth shape {truth.shape} != prediction shape {prediction.shape}")
        truth = truth.astype(np.int64).ravel()
        prediction = prediction.astype(np.int64).ravel()
        valid = (truth >= 0) & (truth < self.num_classes)
        if self.ignore_index is not None:
            valid &= truth != self.ignore_index
        if np.any((prediction[valid] < 0) | (prediction[valid] >= self.num_classes)):
            raise ValueError(f"prediction has ids outside 0..{self.num_classes - 1}")
        index = truth[valid] * self.num_classes + prediction[valid]
        self.matrix += np.bincount(index, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def iou(self) -> np.ndarray:
        """Per-class intersection over union, NaN for classes never seen nor predicted."""
        true_positive = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    def mean_iou(self) -> float:
        return float(np.nanmean(self.iou())) if np.any(self.matrix) else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self, class_names: list[str]) -> dict:
        """JSON-ready: miou, pixel_accuracy, per_class_iou {name: iou or None}."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        per_class = {
            name: (None if np.isnan(value) else round(float(value), 4))
            for name, value in zip(class_names, self.iou(), strict=True)
        }
        return {
            "miou": round(self.mean_iou(), 4),
            "pixel_accuracy": round(self.pixel_accuracy(), 4),
            "per_class_iou": per_class,
        }
