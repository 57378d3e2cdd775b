"""`stac-record` as users run it: an executable that ends on SIGTERM or --duration-s with a
complete MCAP bag (a bag left unclosed has no summary and Foxglove refuses it)."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from rosbags.highlevel import AnyReader

from stac_eval.foxglove_video import COMPRESSED_VIDEO_TYPE, VIDEO_TOPIC
from stac_eval.ros.recorder_node import BAG_TOPICS, stac_typestore

pytestmark = pytest.mark.dds


def _bag_topics(out_dir) -> dict[str, str]:
    with AnyReader([out_dir / "bag"], default_typestore=stac_typestore()) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def test_stac_record_stops_after_its_duration_with_a_complete_bag(tmp_path):
    out_dir = tmp_path / "rec"
    completed = subprocess.run(
        ["stac-record", "--out", str(out_dir), "--duration-s", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "stac-record:" in completed.stdout
    topics = _bag_topics(out_dir)
    assert topics[VIDEO_TOPIC] == COMPRESSED_VIDEO_TYPE
    assert {topic: type_name for topic, (_, type_name, _) in BAG_TOPICS.items()}.items() <= (
        topics.items()
    )


def test_stac_record_ends_on_sigterm_with_a_complete_bag(tmp_path):
    out_dir = tmp_path / "rec"
    process = subprocess.Popen(
        ["stac-record", "--out", str(out_dir)], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (out_dir / "bag").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "stac-record:" in stdout
    assert VIDEO_TOPIC in _bag_topics(out_dir)


def test_stac_record_refuses_an_existing_directory(tmp_path):
    completed = subprocess.run(
        ["stac-record", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2 and "exists" in completed.stderr
