"""The offline part of STAC: calibration file, level bank fitting, class weights, the search."""

import numpy as np
import pytest
import torch

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_edge_segmenter.model import build_lite0_fpn
from stac_eval.calibrate import calibrate, class_weights_for, lloyd_levels
from stac_eval.frame_dirs import read_frames
from stac_sensitivity.calibration import (
    Calibration,
    CalibrationError,
    default_calibration_path,
    find_calibration,
    load_calibration,
    save_calibration,
)


def test_save_load_round_trip_and_default_location(tmp_path):
    weights = tmp_path / "model.pt"
    calibration = Calibration(
        alpha=0.6,
        max_offset_qp=8,
        levels_qp=(-8, -3, 0, 4, 8),
        smoothing_sigma_mb=0.7,
        class_weights=(0.5, 2.0),
        aq_strength=0.3,
        provenance={"frames": 3},
    )
    path = save_calibration(calibration, default_calibration_path(weights))
    assert path == tmp_path / "model.stac_calibration.json"
    loaded, found_at = find_calibration(weights)
    assert found_at == path
    assert loaded == calibration and loaded.provenance == {"frames": 3}
    assert loaded.allocation_config(budget_shift_qp=2).budget_shift_qp == 2


def test_without_a_file_the_defaults_apply(tmp_path):
    calibration, path = find_calibration(tmp_path / "model.pt")
    assert path is None
    assert (calibration.alpha, calibration.max_offset_qp) == (0.5, 10)
    assert calibration.levels_qp == tuple(range(-10, 11))


@pytest.mark.parametrize(
    "text", ["not json", '{"format": "other"}', '{"format": "stac-calibration-v1", "alpha": -1}']
)
def test_bad_files_raise_calibration_error(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(CalibrationError):
        load_calibration(path)


GOOD = (
    '"format": "stac-calibration-v1", "alpha": 0.5, "max_offset_qp": 10, "levels_qp": [], '
    '"smoothing_sigma_mb": 0.0, "class_weights": null, "aq_strength": 0.001, "provenance": {}'
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", "NaN"),
        ("alpha", "true"),
        ("alpha", '"0.5"'),
        ("smoothing_sigma_mb", "NaN"),
        ("smoothing_sigma_mb", "Infinity"),
        ("aq_strength", "null"),
        ("max_offset_qp", "10.5"),
        ("max_offset_qp", "1e400"),
        ("levels_qp", '"-2,0,2"'),
        ("levels_qp", "[0, [1]]"),
        ("levels_qp", "[true, false]"),
        ("class_weights", "[NaN, 1]"),
        ("class_weights", '{"sky": 1}'),
        ("provenance", "[1, 2]"),
        ("unexpected", "1"),
    ],
)
def test_malformed_calibration_fields_raise_calibration_error_only(tmp_path, field, value):
    """NaN smoothing, a boolean alpha and a non-mapping provenance used to load; bytes that
    are not UTF-8 raised UnicodeDecodeError."""
    path = tmp_path / "c.json"
    path.write_text("{" + GOOD + f', "{field}": {value}' + "}")
    with pytest.raises(CalibrationError, match=field):
        load_calibration(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CalibrationError):
        load_calibration(path)
    path.write_text("[" * 100_000)
    with pytest.raises(CalibrationError):
        load_calibration(path)
    path.write_text("{" + GOOD + "}")
    assert load_calibration(path) == Calibration()


def test_lloyd_levels_find_the_clusters():
    rng = np.random.default_rng(0)
    offsets = np.concatenate(
        [rng.normal(-6, 0.3, 500), rng.normal(0, 0.3, 500), rng.normal(5, 0.3, 500)]
    )
    assert lloyd_levels(offsets, 3, 10) == (-6, 0, 5)
    assert lloyd_levels(np.array([-20.0, 20.0]), 2, 4) == (-4, 4)


def test_class_weights_favour_rare_classes_with_pixel_mean_one():
    truth = np.array([0] * 90 + [1] * 9 + [2] * 1 + [11] * 50)  # 11 = void, ignored
    weights = np.array(class_weights_for(truth, 3, 0.5))
    frequency = np.array([0.9, 0.09, 0.01])
    assert weights[0] < weights[1] < weights[2]
    assert (weights * frequency).sum() == pytest.approx(1.0)
    assert class_weights_for(truth, 3, 0.0) is None


def test_calibration_search_writes_a_usable_file(data_dir, tmp_path):
    frames = read_frames(data_dir / "camvid" / "train", data_dir / "camvid" / "trainannot", 2)
    network = build_lite0_fpn(num_classes=11)
    model = SegmentationModel(network, read_spec(DEFAULT_CONFIG), torch.device("cpu"))
    grid = {"alpha": (0.3, 0.6)}
    calibration = calibrate(model, frames.images, frames.labels, [30, 42], (4,), grid=grid)
    assert calibration.alpha in (0.3, 0.6)
    assert 2 <= len(calibration.levels_qp) <= 4
    assert all(abs(level) <= calibration.max_offset_qp for level in calibration.levels_qp)
    searched = calibration.provenance["search"]
    assert {entry["alpha"] for entry in searched} == {0.3, 0.6}
    assert any(entry["with_feedback"] and len(entry["levels_qp"]) for entry in searched)
    assert load_calibration(save_calibration(calibration, tmp_path / "c.json")) == calibration
