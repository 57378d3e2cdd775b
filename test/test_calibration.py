"""The offline part of STAC: calibration file, level bank fitting, class weights, the search,
and the protocol (never on the model's training frames nor on the reported set)."""

import math

import cv2
import numpy as np
import pytest

from stac_edge_segmenter.loading import DEFAULT_CONFIG, load_model
from stac_edge_segmenter.model import DEFAULT_WEIGHTS
from stac_eval.calibrate import BANK_TOLERANCE_PCT, START, calibrate, lloyd_levels
from stac_eval.calibrate import main as calibrate_main
from stac_eval.frame_dirs import crop_resize, read_frames, read_sources, video_frame_indices
from stac_eval.training_overlap import TrainingOverlapError, check_frames, model_split_dirs
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


@pytest.mark.slow
def test_calibration_search_writes_a_usable_file(data_dir, tmp_path):
    """On frames the model never saw (two of the dashcam clip, pseudo labels only)."""
    frames = read_sources([data_dir / "video" / "solidWhiteRight.mp4"], video_frames=2)
    assert frames.labels is None and frames.images.shape == (2, 360, 480, 3)
    model = load_model(DEFAULT_CONFIG, "cpu")  # the shipped model: an untrained one is flat
    grid = {"alpha": (0.3, 0.6), "rate_weight": (0.0, 1.0), "class_weight_exponent": (0.0, 0.5)}
    calibration = calibrate(model, frames.images, None, [30, 42], (4,), grid=grid, passes=1)
    assert all(abs(level) <= calibration.max_offset_qp for level in calibration.levels_qp)
    searched = calibration.provenance["search"]

    # the bank: the fitted 4-level bank unless every integer level is better by more than the
    # tolerance, both scored with the map's wire bytes added
    banks = {
        tuple(e["levels_qp"]): math.inf if e["bd_rate_pct"] is None else e["bd_rate_pct"]
        for e in searched
        if e["with_feedback"]
    }
    fitted = next(bank for bank in banks if bank)
    assert 1 <= len(fitted) <= 4 and set(banks) == {fitted, ()}  # Lloyd may merge levels
    if banks[fitted] <= banks[()] + BANK_TOLERANCE_PCT:
        assert calibration.levels_qp == fitted
    else:
        assert len(calibration.levels_qp) == 2 * calibration.max_offset_qp + 1
    assert {entry["alpha"] for entry in searched} == {0.3, 0.6}

    # coordinate descent, one pass: alpha is the better of the two with the other parameters
    # at their starting values (calibrate.START); the class-weight exponent, searched last,
    # the better given the chosen others (an undefined BD-rate counts as the worst)
    def bd_rate(entry):
        return math.inf if entry["bd_rate_pct"] is None else entry["bd_rate_pct"]

    plain = [e for e in searched if not e["with_feedback"] and not e["levels_qp"]]
    start = (START["rate_weight"], START["class_weight_exponent"])
    first = [e for e in plain if (e["rate_weight"], e["class_weight_exponent"]) == start]
    assert sorted(e["alpha"] for e in first) == [0.3, 0.6]
    assert calibration.alpha == min(first, key=bd_rate)["alpha"]
    rate_weight = calibration.provenance["rate_weight"]
    last = [e for e in plain if (e["alpha"], e["rate_weight"]) == (calibration.alpha, rate_weight)]
    assert sorted(e["class_weight_exponent"] for e in last) == [0.0, 0.5]
    assert calibration.class_weight_exponent == min(last, key=bd_rate)["class_weight_exponent"]
    assert {entry["rate_weight"] for entry in searched} == {0.0, 1.0}
    assert any(entry["with_feedback"] and len(entry["levels_qp"]) for entry in searched)
    rate_model = calibration.provenance["rate_model"]
    assert rate_model["rate_exponent"] > 0 and rate_model["points"]
    if calibration.provenance["rate_weight"] == 0.0:
        assert calibration.rate_exponent == 0.0
    else:
        assert calibration.rate_exponent == pytest.approx(rate_model["rate_exponent"], abs=1e-3)
    assert calibration.provenance["labels"] == ["pseudo"]
    assert calibration.class_weights is None  # no class balance of these frames is carried
    assert calibration.class_weight_exponent in (0.0, 0.5)
    assert load_calibration(save_calibration(calibration, tmp_path / "c.json")) == calibration


# --- the protocol: never on the model's training frames nor on the reported set -----------


def _shipped_weights_report_its_splits(data_dir):
    splits = model_split_dirs(DEFAULT_WEIGHTS)
    if set(splits) != {"train", "val"}:
        pytest.skip(f"the shipped model's training report does not lead to {data_dir}/camvid")
    return splits


@pytest.mark.slow
def test_calibration_refuses_frames_of_the_models_training_and_reported_sets(data_dir):
    splits = _shipped_weights_report_its_splits(data_dir)
    train = read_frames(splits["train"], limit=2)
    with pytest.raises(TrainingOverlapError, match="training set"):
        check_frames(train.names, train.images, DEFAULT_WEIGHTS)
    val = read_frames(splits["val"], limit=1)
    with pytest.raises(TrainingOverlapError, match="reported on"):
        check_frames(val.names, val.images, DEFAULT_WEIGHTS)
    # A re-encoded, resized copy of a training frame is the same frame.
    _, jpeg = cv2.imencode(".jpg", train.images[1][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 70])
    copy = cv2.resize(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1], (960, 720))
    with pytest.raises(TrainingOverlapError):
        check_frames(["copy"], crop_resize(copy)[None], DEFAULT_WEIGHTS)
    report = check_frames(train.names, train.images, DEFAULT_WEIGHTS, allow=True)
    assert report.overlapping["train"] == train.names


@pytest.mark.slow
def test_calibration_accepts_video_frames_the_model_never_saw(data_dir):
    _shipped_weights_report_its_splits(data_dir)
    video = read_sources([data_dir / "video" / "solidWhiteRight.mp4"], video_frames=3)
    report = check_frames(video.names, video.images, DEFAULT_WEIGHTS)
    assert report.overlapping == {} and set(report.checked_against) == {"train", "val"}


def test_without_a_training_report_the_check_says_it_cannot_tell(tmp_path):
    frames = np.zeros((1, 36, 48, 3), dtype=np.uint8)
    report = check_frames(["f"], frames, tmp_path / "unknown.pt")
    assert report.checked_against == {} and "cannot tell" in report.note


@pytest.mark.slow
def test_stac_calibrate_stops_before_any_work_on_training_frames(data_dir, capsys):
    splits = _shipped_weights_report_its_splits(data_dir)
    with pytest.raises(TrainingOverlapError):
        calibrate_main(["--images", str(splits["train"]), "--limit", "2", "--threads", "1"])
    assert "calibrating" not in capsys.readouterr().out


def test_video_frames_are_spread_cropped_and_resized(data_dir):
    assert video_frame_indices(222, 3) == [37, 111, 185]
    assert video_frame_indices(2, 5) == [0, 1]
    wide = np.zeros((540, 960, 3), dtype=np.uint8)
    wide[:, :120] = 255  # cropped away: 960x540 keeps its middle 720x540
    assert crop_resize(wide).shape == (360, 480, 3) and crop_resize(wide).max() == 0
    frames = read_sources([data_dir / "video" / "solidWhiteRight.mp4"], video_frames=2)
    indices = [int(name.split("#")[1]) for name in frames.names]  # the middles of two halves
    assert frames.names[0].startswith("solidWhiteRight.mp4#") and 50 <= indices[0] <= 56
    assert 160 <= indices[1] <= 170
