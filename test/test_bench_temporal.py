"""`stac-bench temporal` end to end on the first second of the dashcam clip: every part runs with
the shipped model and writes the keys users and the README read."""

import json
import math

import pytest

from stac_eval import bench

BASELINES = ("uniform", "x264_aq", "two_level")
ROBOT_STAGES = ("flow", "map_warp", "mask_warp", "keyframe_decision", "encode", "total")

# stac-bench temporal on 30 frames: minutes on 2 cores
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def temporal_result(data_dir, tmp_path_factory):
    clip = data_dir / "video" / "solidWhiteRight.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is not there")
    work = tmp_path_factory.mktemp("temporal")
    out = work / "temporal.json"
    argv = [
        "temporal", "--video", str(clip), "--max-frames", "30", "--crf", "22,28,34,40",
        "--delays", "0,5", "--map-period", "5", "--rc-seconds", "6", "--timing-frames", "12",
        "--stale-psnr-db", "28,99", "--edge-ms", "60/150", "--bootstrap", "20",
        "--work-dir", str(work / "points"), "--out", str(out),
        "--tried", "levers:robot.hold_offset_qp=5,robot.reference_qp_strength=0.5,"
        "computer.block_mb=0",
    ]  # fmt: skip
    assert bench.main(argv) == 0
    return json.loads(out.read_text()), out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_part_writes_its_keys(temporal_result):
    result, out = temporal_result
    assert result["frames"] == 30 and result["meta"]["command"].startswith("stac-bench temporal")
    assert set(result["bd_rate_pct"]) == set(BASELINES)
    for delay in ("0", "5"):
        entry = result["propagation"][delay]
        assert all(_finite(entry[key]) for key in ("warped_miou", "held_miou", "none_miou"))
    assert "uplink_ratio_at_equal_timely_miou" in result["keyframe_vs_stream"]
    control = result["rate_control"]
    first, second = control["target_kbps"]  # stepped down to half (--rc-step 0.5) at half time
    assert _finite(first) and first > 0 and second == pytest.approx(first / 2, abs=1)
    assert "worst_window_error_pct" in control and "step_settle_s" in control
    timing = result["robot_ms_per_frame"]
    assert timing["frame_size"] == [960, 540] and timing["threads"] == 1
    for stage in ROBOT_STAGES:  # the larger of the two modes, at the top level
        assert timing[stage] == max(timing["stream"][stage], timing["keyframe"][stage])
        assert timing[stage] >= 0
    assert timing["total"] > 0 and timing["keyframe_decision"] > 0  # keyframe mode decides
    for name in result["plots"].values():
        assert (out.parent / name).is_file()


def test_masks_on_time_are_exact_and_late_ones_gain_from_warping(temporal_result):
    """Delay 0: the edge's mask of the frame itself (pseudo truth = the model on the raw frame),
    exact when held and (flow of a frame onto itself) nearly so when warped. Five frames late on
    a car driving down a highway, warping along the flow beats holding the old mask."""
    propagation = temporal_result[0]["propagation"]
    assert propagation["0"]["held_miou"] == 1.0
    assert propagation["0"]["warped_miou"] >= 0.99
    assert propagation["5"]["warped_miou"] > propagation["5"]["held_miou"]
    assert propagation["5"]["none_miou"] == 0.0


def test_a_tried_variant_takes_robot_and_map_computer_settings(temporal_result):
    """--tried with robot.KEY (forced skips, reference-aware offsets) and computer.KEY (the
    map's cell): parsed, recorded and reported beside the default against the same baselines.
    (In these 30 frames no map comes back at the default map-worker nice; the settings'
    effect on a simulated run is test_replay_simulation's.)"""
    result, _ = temporal_result
    tried = result["tried"]["levers"]
    assert tried["settings"] == {
        "robot.hold_offset_qp": 5,
        "robot.reference_qp_strength": 0.5,
        "computer.block_mb": 0,
    }
    assert set(tried["bd_rate_pct"]) == set(BASELINES)
    assert [p["crf"] for p in tried["points"]] == [22, 28, 34, 40]
