"""The ROS graph end to end: the installed node executables, started with the --ros-args the
launch files pass, as separate processes over Fast DDS (loopback only).

30 frames go source -> encoder -> segmenter + sensitivity -> QP maps back to the encoder;
every frame is accounted for, maps are applied, masks carry the camera stamps, and every
process exits 0 on SIGTERM without a traceback.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest
import rclpy
from sensor_msgs.msg import Image

from conftest import REPO_ROOT
from stac_encoder.ros_common import ENCODED_QOS, OUTPUT_QOS, QP_MAP_QOS, STATISTICS_TOPIC
from stac_eval.launch_args import ros_args
from stac_msgs.msg import EncodedFrame, QPMap, Statistics

FRAMES = 30
LAUNCH = REPO_ROOT / "launch"
INSTALL = REPO_ROOT / "install"
EXTRA = {"torch_threads": "1"}  # two CI cores shared by four processes


def executable(package: str, name: str) -> str:
    return str(INSTALL / package / "lib" / package / name)


@pytest.fixture(scope="module")
def clip(data_dir, tmp_path_factory) -> Path:
    """30 frames of the dashcam clip at 480x270 (MJPEG), small enough for CI."""
    capture = cv2.VideoCapture(str(data_dir / "video" / "solidWhiteRight.mp4"))
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (480, 270))
    for _ in range(FRAMES):
        ok, frame = capture.read()
        assert ok
        writer.write(cv2.resize(frame, (480, 270), interpolation=cv2.INTER_AREA))
    writer.release()
    capture.release()
    return path


class Observer:
    """An in-test node recording what crosses the graph."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("e2e_observer")
        self.encoded: list[EncodedFrame] = []
        self.masks: list[Image] = []
        self.maps: list[QPMap] = []
        self.statistics: dict[str, Statistics] = {}
        self.node.create_subscription(
            EncodedFrame, "/stac/encoded", self.encoded.append, ENCODED_QOS
        )
        self.node.create_subscription(Image, "/stac/mask", self.masks.append, OUTPUT_QOS)
        self.node.create_subscription(QPMap, "/stac/qp_map", self.maps.append, QP_MAP_QOS)
        self.node.create_subscription(Statistics, STATISTICS_TOPIC, self._on_statistics, OUTPUT_QOS)

    def _on_statistics(self, msg: Statistics) -> None:
        self.statistics[msg.node_name] = msg

    def spin_until(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.1)
            if condition():
                return True
        return False


def start(package: str, name: str, args: list[str], log_dir: Path) -> subprocess.Popen:
    log = (log_dir / f"{name}.log").open("w")
    return subprocess.Popen(
        [executable(package, name), *args], stdout=log, stderr=subprocess.STDOUT, text=True
    )


def extra_params(**params: str) -> list[str]:
    return [arg for key, value in params.items() for arg in ("-p", f"{key}:={value}")]


@pytest.mark.dds
@pytest.mark.slow
def test_thirty_frames_through_the_graph(clip, tmp_path):
    rclpy.init()
    observer = Observer()
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["segmenter_node"] = start(
            "stac_edge_segmenter",
            "segmenter_node",
            ros_args(LAUNCH / "edge.launch.py", "segmenter_node") + extra_params(**EXTRA),
            tmp_path,
        )
        processes["sensitivity_node"] = start(
            "stac_sensitivity",
            "sensitivity_node",
            ros_args(LAUNCH / "edge.launch.py", "sensitivity_node") + extra_params(**EXTRA),
            tmp_path,
        )
        processes["encoder_node"] = start(
            "stac_encoder",
            "encoder_node",
            ros_args(LAUNCH / "robot.launch.py", "encoder_node", camera_qos="reliable"),
            tmp_path,
        )
        nodes = {"stac_segmenter", "stac_sensitivity", "stac_encoder"}
        assert observer.spin_until(lambda: nodes <= set(observer.statistics), 120), (
            f"nodes up: {sorted(observer.statistics)}; logs in {tmp_path}"
        )
        source = start(
            "stac_encoder",
            "video_source_node",
            ros_args(LAUNCH / "local.launch.py", "video_source_node", video_uri=str(clip))
            + extra_params(pace="fixed", rate_hz="6.0"),
            tmp_path,
        )
        # keep taking messages while the clip plays: the observer's queues are shallow
        assert observer.spin_until(lambda: source.poll() is not None, 120), "source hung"
        assert source.returncode == 0, (tmp_path / "video_source_node.log").read_text()

        def all_accounted() -> bool:
            seg = observer.statistics.get("stac_segmenter")
            return (
                seg is not None
                and seg.frames_in == FRAMES
                and seg.frames_pending == 0
                and len(observer.masks) == seg.frames_segmented
            )

        assert observer.spin_until(all_accounted, 120), (
            f"masks seen {len(observer.masks)}, "
            f"segmenter: {observer.statistics.get('stac_segmenter')}"
        )
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        exit_codes = {name: p.wait(timeout=30) for name, p in processes.items()}
        observer.node.destroy_node()
        rclpy.try_shutdown()

    logs = {name: (tmp_path / f"{name}.log").read_text() for name in processes}
    for name, text in logs.items():
        assert exit_codes[name] == 0, f"{name} exited {exit_codes[name]}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"{name} logged a traceback:\n{text[-3000:]}"

    encoder = observer.statistics["stac_encoder"]
    assert (encoder.frames_in, encoder.frames_encoded, encoder.frames_failed) == (FRAMES, FRAMES, 0)
    assert [m.frame_seq for m in observer.encoded] == list(range(1, FRAMES + 1))
    assert observer.encoded[0].keyframe
    assert any(m.qp_map_seq > 0 for m in observer.encoded[FRAMES // 2 :]), "no QP map applied"
    assert observer.maps and observer.maps[0].map_seq >= 1

    segmenter = observer.statistics["stac_segmenter"]
    assert segmenter.frames_failed == 0
    assert segmenter.frames_segmented + segmenter.frames_skipped == FRAMES
    assert segmenter.frames_segmented >= 1
    camera_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in observer.encoded}
    for mask in observer.masks:
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) in camera_stamps
        assert (mask.encoding, mask.width, mask.height) == ("mono8", 480, 270)
