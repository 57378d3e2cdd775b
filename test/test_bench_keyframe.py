"""`stac-bench keyframe` end to end on the first half second of the dashcam clip: both parts
run with the shipped model and write the keys docs/keyframe_mode.md reads."""

import json
import math

import pytest

from stac_eval import bench
from stac_eval.bench_keyframe import LATENESS_METHODS, PROPAGATION_METHODS, SYSTEM_METHODS

# the model on every frame (soft masks) and 14 replay points: a minute or two on 2 cores
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyframe_result(data_dir, tmp_path_factory):
    clip = data_dir / "video" / "solidWhiteRight.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is not there")
    work = tmp_path_factory.mktemp("keyframe")
    out = work / "keyframe.json"
    argv = [
        "keyframe", "--video", str(clip), "--max-frames", "14", "--schedules", "1:1,2:3",
        "--edge-ms", "7.3/30.47", "--work-dir", str(work), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_every_way_of_carrying_masks_is_scored(keyframe_result):
    scores = keyframe_result["propagation"]["miou"]
    assert set(scores) == {"1:1", "2:3"}
    for row in scores.values():
        assert set(row) == set(PROPAGATION_METHODS)
        assert all(math.isfinite(value) and 0.0 < value <= 1.0 for value in row.values())
    # the model's own mask of the frame before, carried by flow, agrees with this frame's
    # better than one three frames older
    assert scores["1:1"]["ids"] > scores["2:3"]["ids"]


def test_each_lever_is_switched_off_alone(keyframe_result):
    points = keyframe_result["system"]["points"]
    assert set(points) == {
        "defaults", "send_ahead_off", "pipeline_off", "map_worker_nice_0", "masks_across_cuts",
        "flow_480",
    }  # fmt: skip
    assert set(points["defaults"]) == set(SYSTEM_METHODS)
    assert "uniform" not in points["send_ahead_off"]  # streaming has no keyframe pacing
    assert "uniform" not in points["pipeline_off"]
    assert set(points["map_worker_nice_0"]) == {"stac_keyframe"}  # the one method with maps
    # a fast edge answers in about two camera frames: waiting for each answer sends about
    # every second frame, sending ahead nearly every frame
    ahead = points["defaults"]["stac_keyframe"]["frames_sent"]
    waiting = points["send_ahead_off"]["stac_keyframe"]["frames_sent"]
    assert ahead > 1.3 * waiting


def test_lateness_splits_capture_to_held_by_stage_on_each_link(data_dir, tmp_path):
    clip = data_dir / "video" / "solidWhiteRight.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is not there")
    out = tmp_path / "lateness.json"
    links = "rate=10mbit,delay=20ms,loss=0%;rate=10mbit,delay=5ms,loss=0%"
    argv = [
        "keyframe", "--video", str(clip), "--max-frames", "14", "--parts", "lateness",
        "--edge-ms", "7.3/30.47", "--links", links, "--robot-encode-ms", "12.32/68.3",
        "--work-dir", str(tmp_path), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    lateness = json.loads(out.read_text())["lateness"]
    assert lateness["robot_encode_ms"] == {"near": 12.32, "far": 68.3}
    rows = lateness["links"]
    assert len(rows) == 2
    slow, fast = rows.values()
    for row in (slow, fast):
        assert set(row) == set(LATENESS_METHODS)
        for value in row.values():
            assert 0.0 < value["timely_miou"] <= value["decoded_miou"] <= 1.0
            assert value["stages_ms"]["forward"]["mean"] == 7.3
            # every frame sent waits at least x264's given time for a near frame on the robot
            assert value["stages_ms"]["robot_encode"]["mean"] >= 12.32
    # 40 ms of round trip alone is one frame at 25 fps: the mask is at least two frames old
    # when first held; with 10 ms of round trip it can be one
    assert min(int(age) for age in slow["uniform"]["held_age_frames"]) >= 2
    assert min(int(age) for age in fast["uniform"]["held_age_frames"]) == 1
    held_ms = [row["uniform"]["capture_to_held_ms"]["mean"] for row in (fast, slow)]
    assert held_ms[0] < held_ms[1]


def test_presets_score_each_preset_at_each_spacing(data_dir, tmp_path):
    clip = data_dir / "video" / "solidWhiteRight.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is not there")
    out = tmp_path / "presets.json"
    argv = [
        "keyframe", "--video", str(clip), "--max-frames", "12", "--parts", "presets",
        "--presets", "veryfast,medium", "--preset-periods", "1,3", "--preset-crfs", "24,32",
        "--edge-ms", "7.3/30.47", "--work-dir", str(tmp_path), "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    periods = json.loads(out.read_text())["presets"]["periods"]
    assert set(periods) == {"1", "3"}
    for rows in periods.values():
        assert set(rows) == {"veryfast", "medium"}
        assert rows["veryfast"]["bd_rate_pct_vs_first"] == 0.0
        for row in rows.values():
            kbytes = [point["kbytes"] for point in row["points"]]
            assert kbytes[0] > kbytes[1] > 0  # CRF 24 costs more than CRF 32
            assert all(0.0 < point["decoded_miou"] <= 1.0 for point in row["points"])
            assert all(point["encode_ms"] > 0 for point in row["points"])
