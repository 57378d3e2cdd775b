"""ConfusionMatrix arithmetic and the CamVid reader."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_training.camvid import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    load_split,
    split_pairs,
)


def test_iou_miou_and_pixel_accuracy_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 3]])
    prediction = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    matrix = ConfusionMatrix(num_classes=4, ignore_index=3)
    matrix.update(truth, prediction)
    # class 0: tp 1, fp 1 (a 2 predicted 0), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3;
    # class 2: tp 2, fn 1 -> 2/3; class 3 ignored as truth and never counted -> NaN.
    np.testing.assert_allclose(matrix.iou()[:3], [1 / 3, 2 / 3, 2 / 3])
    assert math.isnan(matrix.iou()[3])
    assert matrix.mean_iou() == pytest.approx(5 / 9)
    assert matrix.pixel_accuracy() == pytest.approx(5 / 7)


def test_updates_accumulate_like_one_update():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, (3, 8, 8))
    prediction = rng.integers(0, 4, (3, 8, 8))
    whole, parts = ConfusionMatrix(4, ignore_index=4), ConfusionMatrix(4, ignore_index=4)
    whole.update(truth, prediction)
    for t, p in zip(truth, prediction, strict=True):
        parts.update(t, p)
    np.testing.assert_array_equal(whole.matrix, parts.matrix)
    assert whole.matrix.sum() == np.count_nonzero(truth != 4)


def test_summary_names_classes_and_marks_absent_ones():
    matrix = ConfusionMatrix(2)
    matrix.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    summary = matrix.summary(["a", "b"])
    assert summary == {"miou": 1.0, "pixel_accuracy": 1.0, "per_class_iou": {"a": 1.0, "b": None}}


def test_bad_input_is_rejected():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="outside"):
        matrix.update(np.zeros((2, 2), int), np.full((2, 2), 3))
    with pytest.raises(ValueError, match="class names"):
        matrix.summary(["only one"])
    with pytest.raises(ValueError, match="positive"):
        ConfusionMatrix(0)


def test_camvid_constants_agree():
    assert len(CLASS_NAMES) == NUM_CLASSES == 11 == len(PALETTE)
    assert PALETTE.dtype == np.uint8 and IGNORE_INDEX == 11


def test_split_errors_name_the_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="split directory"):
        split_pairs(tmp_path / "val")
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="label directory"):
        split_pairs(tmp_path / "val")


def test_load_split_reads_aligned_pairs(data_dir):
    split = load_split(data_dir / "camvid" / "val", limit=3)
    assert len(split) == 3
    assert split.images.shape == (3, 360, 480, 3) and split.images.dtype == np.uint8
    assert split.labels.shape == (3, 360, 480) and split.labels.max() <= IGNORE_INDEX
    assert split.names == sorted(split.names)


def test_a_missing_prediction_is_a_miss_of_its_class():
    """mask_confusion's last column: pixels without a class (no mask yet, or id 255); void
    truth is not counted; mean_iou takes K x K and K x (K+1) matrices alike."""
    from stac_edge_segmenter.metrics import mask_confusion, mean_iou

    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 3]], np.uint8)  # 255 and 3: void for K = 3
    prediction = np.array([[0, 255, 1, 1], [2, 0, 1, 1]], np.uint8)
    matrix = mask_confusion(truth, prediction, 3)
    np.testing.assert_array_equal(matrix, [[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0]])
    # class 0: tp 1, truth 2, predicted 2 -> 1/3; class 1: 2/2; class 2: tp 1, truth 2 -> 1/2
    assert mean_iou(matrix) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert mean_iou(mask_confusion(truth, None, 3)) == 0.0
    square = ConfusionMatrix(3)
    square.update(truth, np.where(prediction == 255, 0, prediction))
    assert square.mean_iou() == mean_iou(square.matrix)
