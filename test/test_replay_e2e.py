"""stac-replay run end to end on a 20-frame clip: every method (stream, keyframe, JPEG), BD-rates
with intervals, the report's keys, bits both ways, a playable bag, resuming from the cache, and
determinism (two runs from empty caches give the same numbers and the same bytes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from test_replay_sources import small_model, write_clip, write_label_folder  # noqa: F401

from stac_codec.h264_decoder import H264Decoder
from stac_eval.foxglove_video import VIDEO_TOPIC, register_compressed_video
from stac_eval.replay.accounting import FrameLedger, PointResult
from stac_eval.replay.cli import main as replay_main

FRAMES = 20
CRFS = "18,30,42"
METHODS = ("uniform", "x264_aq", "two_level", "stac", "stac_keyframe", "uniform_keyframe", "jpeg")
KEYFRAME_METHODS = ("stac_keyframe", "uniform_keyframe")

pytestmark = pytest.mark.slow  # runs stac-replay end to end: the full suite's, not --fast's


def _argv(clip: Path, out: Path, cache: Path, labels: Path, model: Path) -> list[str]:
    return [
        "run", str(clip), "--out", str(out), "--cache-dir", str(cache),
        "--methods", ",".join(METHODS), "--crf", CRFS, "--labels", str(labels),
        "--stale-psnr-db", "25,99", "--jpeg-quality", "30,80",
        "--model", str(model), "--edge-ms", "40/120", "--robot-encode-ms", "6/18",
        "--period-frames", "3",
        "--min-map-interval-s", "0.3", "--link", "rate=600kbit,delay=20ms,loss=3%,seed=7",
        "--bootstrap", "40", "--max-frames", str(FRAMES),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_model):  # noqa: F811
    root = tmp_path_factory.mktemp("replay")
    clip = write_clip(root / "clip.avi", FRAMES + 4)  # --max-frames cuts it to FRAMES
    labels = write_label_folder(root / "labels", range(0, FRAMES, 2))
    return root, clip, labels, small_model


@pytest.fixture(scope="module")
def first_run(inputs):
    root, clip, labels, model = inputs
    argv = _argv(clip, root / "out_a", root / "cache_a", labels, model)
    assert replay_main(argv) == 0
    return root / "out_a", argv


def _numbers(report: dict) -> dict:
    """The report without what legitimately differs between runs (paths, times)."""
    return {
        key: value
        for key, value in report.items()
        if key not in ("command", "wall_s", "bags", "edge_timing", "versions")
    }


def test_report_carries_the_keys_and_stac_against_its_baseline(first_run):
    out, _ = first_run
    report = json.loads((out / "report.json").read_text())
    for key in ("methods", "timely_ceiling", "edge_profile", "link", "source", "command"):
        assert key in report
    for bits in ("total", "uplink"):
        for suffix in ("", "_ci95"):
            assert set(report[f"bd_rate_pct_timely_{bits}{suffix}"]) == {
                "stac", "stac_keyframe", "uniform_keyframe"
            }  # fmt: skip
    for test in ("stac", "stac_keyframe", "uniform_keyframe"):
        assert set(report["bd_rate_pct_timely_total"][test]) == set(METHODS) - {test}
    assert report["edge_profile"] == {
        "profile": "fixed", "segment_ms": 40.0, "map_ms": 120.0, "source": "fixed"
    }  # fmt: skip
    assert set(report["methods"]) == set(METHODS)
    assert report["robot"] == "warp"
    for name, points in report["methods"].items():
        assert report["timely_ceiling"][name] == max(p["timely_miou"] for p in points)
        for point in points:
            for key in ("uplink_kbps", "downlink_kbps", "timely_miou", "decoded_miou"):
                assert isinstance(point[key], float), key
            assert point["timely_miou"] == point["timely_miou_warp"]
            assert point["total_kbps"] == pytest.approx(
                point["uplink_kbps"] + point["downlink_kbps"], abs=0.01
            )
            assert point["downlink_kbps"] == pytest.approx(
                point["map_kbps"] + point["mask_kbps"] + point["request_kbps"], abs=0.01
            )
            assert point["mask_kbps"] > 0  # every method's masks come back, and cost bits
            assert point["latency_ms_p50"] >= 20 + 40  # downlink delay + the edge's forward
            assert point["frames"]["camera"] == FRAMES
            assert "decoded_miou_human" in point and "timely_miou_human" in point
    for name in ("uniform", "x264_aq", "two_level", "stac", "jpeg"):
        for point in report["methods"][name]:
            # Seed 7 loses frame 7 (index 6) on the uplink, for every method alike; the edge
            # asks for a keyframe and decodes again within a round trip, not after the GOP.
            assert point["frames"]["lost"] == 1
            assert point["frames"]["decoded"] >= FRAMES - 3
    for name in ("uniform", "x264_aq", "two_level", "stac"):
        points = report["methods"][name]
        assert [p["budget"] for p in points] == [float(v) for v in CRFS.split(",")]
        assert all(p["edge"]["keyframe_requests"] >= 1 for p in points)
        rates = [p["uplink_kbps"] for p in points]
        assert rates == sorted(rates, reverse=True)  # a higher CRF sends fewer bits
    for name in KEYFRAME_METHODS:
        keyframe = report["methods"][name]
        assert [(p["stale_psnr_db"], p["budget"]) for p in keyframe] == [
            (stale, float(crf)) for stale in (25.0, 99.0) for crf in CRFS.split(",")
        ]
        for point in keyframe:
            assert point["frames"]["sent"] + point["frames"]["kept_on_robot"] == FRAMES
            if point["stale_psnr_db"] == 25.0:  # only stale frames travel (at 99 dB: all of
                assert point["frames"]["kept_on_robot"] > 0  # them the edge can take)
    # Every method sends back masks (and keyframe requests after a loss), the map methods maps
    for name in ("uniform", "x264_aq", "uniform_keyframe", "jpeg"):
        assert all(p["map_kbps"] == 0 for p in report["methods"][name])
    for name in ("two_level", "stac"):
        assert all(p["map_kbps"] > 1 for p in report["methods"][name])
    assert any(p["map_kbps"] > 0 for p in report["methods"]["stac_keyframe"])
    assert report["link"]["uplink_rate_kbps"] == 600 and report["link"]["loss_pct"] == 3
    for suffix in ("", "_human"):
        value = report[f"bd_rate_pct{suffix}"]["uniform"]
        assert value is None or math.isfinite(value)
    assert math.isfinite(report["bd_rate_pct"]["uniform"])
    interval = report["bd_rate_ci95_pct"]["uniform"]
    assert interval is None or interval[0] <= interval[1]
    assert report["bootstrap"]["block_frames"] == 10  # one second of a 10 fps clip
    markdown = (out / "report.md").read_text()
    assert "BD-rate" in markdown and "| stac | crf 18 |" in markdown
    assert "| stac_keyframe | crf 18, stale < 25 dB |" in markdown
    for name in ("curves.png", "bitrate_over_time.png", "timely_miou_over_time.png"):
        assert (out / name).stat().st_size > 1000


def test_held_robot_reports_the_held_masks_from_the_same_points(inputs, first_run):
    root, clip, labels, model = inputs
    out, argv = first_run
    held_out = root / "out_held"
    argv = [a if a != str(out) else str(held_out) for a in argv] + ["--robot", "held"]
    points = root / "out_held" / "points"
    points.parent.mkdir(parents=True, exist_ok=True)
    if not points.exists():
        points.symlink_to(out / "points")  # the same simulations: only the scoring differs
    assert replay_main(argv + ["--no-bag", "--bootstrap", "0"]) == 0
    warp = json.loads((out / "report.json").read_text())
    held = json.loads((held_out / "report.json").read_text())
    assert held["robot"] == "held"
    for name, points_held in held["methods"].items():
        for point_held, point_warp in zip(points_held, warp["methods"][name], strict=True):
            assert point_held["timely_miou"] == point_warp["timely_miou_held"]
            assert point_held["total_kbps"] == point_warp["total_kbps"]


def test_the_chosen_point_bag_plays(first_run):
    out, _ = first_run
    bag = out / "bags" / "stac_crf30"
    typestore = get_typestore(Stores.ROS2_JAZZY)
    register_compressed_video(typestore)
    with AnyReader([bag], default_typestore=typestore) as reader:
        topics = {c.topic: c for c in reader.connections}
        assert {VIDEO_TOPIC, "/stac/mask/compressed", "/stac/overlay/compressed"} <= set(topics)
        assert "/stac/qp_heatmap/compressed" in topics
        decoder = H264Decoder()
        decoded = 0
        for connection, _, raw in reader.messages(connections=[topics[VIDEO_TOPIC]]):
            msg = reader.deserialize(raw, connection.msgtype)
            decoded += decoder.decode(bytes(msg.data)).ok
        assert decoded > 0
    point = PointResult.load(out / "points" / "stac_crf30.npz")
    assert decoded <= int(np.sum(point.status != 2))
    assert (out / "bags" / "stac_keyframe_crf30_stale99" / "metadata.yaml").is_file()


def test_a_rerun_resumes_from_the_cache(first_run):
    """Nothing is simulated again (no point file rewritten) and the report is the same."""
    out, argv = first_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.npz")}
    report = json.loads((out / "report.json").read_text())
    assert replay_main(argv) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.npz")}
    assert _numbers(json.loads((out / "report.json").read_text())) == _numbers(report)


def test_two_runs_from_empty_caches_give_the_same_numbers_and_bytes(inputs, first_run):
    root, clip, labels, model = inputs
    out_a, _ = first_run
    out_b = root / "out_b"
    assert replay_main(_argv(clip, out_b, root / "cache_b", labels, model)) == 0
    report_a = json.loads((out_a / "report.json").read_text())
    report_b = json.loads((out_b / "report.json").read_text())
    assert _numbers(report_a) == _numbers(report_b)
    for path_a in sorted((out_a / "points").glob("*.npz")):
        a, b = PointResult.load(path_a), PointResult.load(out_b / "points" / path_a.name)
        for name in FrameLedger.COLUMNS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        for kind in a.confusion:
            np.testing.assert_array_equal(a.confusion[kind], b.confusion[kind])
    for bag_a in (out_a / "bags").glob("*/*.mcap"):
        bag_b = out_b / "bags" / bag_a.parent.name / bag_a.name
        assert bag_a.read_bytes() == bag_b.read_bytes(), bag_a.name
