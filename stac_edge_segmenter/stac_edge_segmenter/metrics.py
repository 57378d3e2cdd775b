"""Segmentation accuracy from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

The one home of mIoU in the project. A matrix has K rows (truth) and K columns (prediction),
or K + 1 columns where some truth pixels had no prediction at all (a robot that holds no mask
yet, in the replay): the last column counts them, and they lower their class's IoU as misses.
"""

from __future__ import annotations

import numpy as np


def mask_confusion(
    truth: np.ndarray, prediction: np.ndarray | None, num_classes: int
) -> np.ndarray:
    """K x (K+1) int32 counts of one frame, rows truth, columns prediction; column K: pixels
    without a prediction (all of them when `prediction` is None; ids outside 0..K-1, such as a
    robot's 255 = no class yet). Truth ids outside 0..K-1 (void) are not counted."""
    columns = num_classes + 1
    truth = _ids(truth, num_classes).astype(np.intp)
    if prediction is None:
        predicted = num_classes
    else:
        predicted = _ids(prediction, num_classes)
        if predicted.size != truth.size:
            raise ValueError(f"a mask of {np.shape(prediction)} for {truth.size} truth pixels")
    # one bin per (truth, prediction) pair; truth ids >= K land past the K x (K+1) bins
    counts = np.bincount(truth * columns + predicted, minlength=num_classes * columns)
    return counts[: num_classes * columns].reshape(num_classes, columns).astype(np.int32)


def _ids(values: np.ndarray, num_classes: int) -> np.ndarray:
    """Flat class ids with every id outside 0..K-1 set to K."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype == np.uint8:
        return np.minimum(flat, num_classes)
    return np.where((flat >= 0) & (flat < num_classes), flat, num_classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU of a K x K or K x (K+1) matrix: TP / (truth + predicted - TP), NaN for a
    class never in truth nor predicted."""
    matrix = np.asarray(matrix, dtype=np.float64)
    classes = matrix.shape[0]
    true_positive = np.diag(matrix[:, :classes])
    union = matrix.sum(1) + matrix[:, :classes].sum(0) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """mIoU of a summed K x K or K x (K+1) matrix over the classes present (NaN: none)."""
    iou = iou_per_class(matrix)
    return float(np.nanmean(iou)) if np.any(np.isfinite(iou)) else float("nan")


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
        return iou_per_class(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

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
