"""Run the whole STAC graph on a clip: robot and edge nodes as separate processes over DDS.

The nodes are the installed executables, started with the --ros-args the launch files give
them (`stac_eval.launch_args`), so what runs here is what `ros2 launch` runs. An in-process
recorder node watches every topic, writes a rosbag2 (mcap) that Foxglove opens, an mp4 of the
mask overlay, and keeps what the report needs (sizes, stamps, masks, statistics).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix, get_package_share_directory
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import Image
from tqdm import tqdm

from stac_eval.launch_args import ros_args
from stac_msgs.msg import EncodedFrame, QPMap, Statistics
from stac_ros_common.image_pixels import image_to_numpy
from stac_ros_common.qos import ENCODED_QOS, OUTPUT_QOS, QP_MAP_QOS, STATISTICS_TOPIC

EDGE_NODES = {"segmenter_node": "stac_edge_segmenter", "sensitivity_node": "stac_sensitivity"}
ROBOT_NODES = {"encoder_node": "stac_encoder"}
NODE_NAMES = {"segmenter_node": "stac_segmenter", "sensitivity_node": "stac_sensitivity",
              "encoder_node": "stac_encoder"}  # fmt: skip
# topic -> (message class, ROS type name, QoS); what the bag keeps.
BAG_TOPICS = {
    "/stac/encoded": (EncodedFrame, "stac_msgs/msg/EncodedFrame", ENCODED_QOS),
    "/stac/qp_map": (QPMap, "stac_msgs/msg/QPMap", QP_MAP_QOS),
    "/stac/mask": (Image, "sensor_msgs/msg/Image", OUTPUT_QOS),
    STATISTICS_TOPIC: (Statistics, "stac_msgs/msg/Statistics", OUTPUT_QOS),
}


@dataclass(frozen=True)
class GraphRunConfig:
    """What to play and how; crf / budget_shift_qp / period_frames are the launch arguments."""

    video_uri: str
    out_dir: Path
    launch_dir: Path
    pace: str = "recorded"
    rate_hz: float = 10.0
    max_frames: int = 0
    crf: float = 28.0
    budget_shift_qp: int = 0
    period_frames: int = 5
    torch_threads: int = 1
    # Robot and edge are separate machines in a deployment; on one machine the edge's model
    # passes would starve the robot side, so the edge nodes run at this niceness.
    edge_niceness: int = 10
    record_bag: bool = True
    overlay_video: bool = True
    startup_timeout_s: float = 180.0
    drain_timeout_s: float = 120.0


@dataclass(frozen=True)
class EncodedRecord:
    frame_seq: int
    stamp_ns: int
    size_bytes: int
    keyframe: bool
    qp_map_seq: int


@dataclass
class GraphRunResult:
    """Everything observed during one run (see `summarise` in stac_eval.demo)."""

    frames_published: int | None = None
    encoded: list[EncodedRecord] = field(default_factory=list)
    masks_by_stamp: dict[int, np.ndarray] = field(default_factory=dict)
    mask_latency_ms: list[float] = field(default_factory=list)
    qp_map_bytes: list[int] = field(default_factory=list)
    statistics: dict[str, Statistics] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_at_play_s: dict[str, float] = field(default_factory=dict)
    play_s: float = 0.0
    logs: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0

    def frame_seq_by_stamp(self) -> dict[int, int]:
        return {record.stamp_ns: record.frame_seq for record in self.encoded}


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def stac_typestore():
    """rosbags' Jazzy types plus stac_msgs, read from the installed .msg files."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = Path(get_package_share_directory("stac_msgs")) / "msg"
    for path in sorted(msg_dir.glob("*.msg")):
        typestore.register(get_types_from_msg(path.read_text(), f"stac_msgs/msg/{path.stem}"))
    return typestore


class OverlayVideo:
    """Writes overlay images to an H.264 mp4 with their capture times as timestamps."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path), mode="w")
        self._stream = None
        self._first_ns: int | None = None

    def add(self, rgb: np.ndarray, stamp_ns: int) -> None:
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=30)
            self._stream.width, self._stream.height = rgb.shape[1], rgb.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.time_base = Fraction(1, 1000)
            self._stream.options = {"crf": "23", "preset": "veryfast"}
            self._first_ns = stamp_ns
        if (rgb.shape[1], rgb.shape[0]) != (self._stream.width, self._stream.height):
            return  # a size change mid-run; the video keeps the first size
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = (stamp_ns - self._first_ns) // 1_000_000
        frame.time_base = Fraction(1, 1000)
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()


class GraphRecorder:
    """An in-process node that records the graph's topics into a result, a bag and a video."""

    def __init__(self, result: GraphRunResult, out_dir: Path, config: GraphRunConfig) -> None:
        self.result = result
        self.node = rclpy.create_node("stac_demo_recorder")
        self._bag = None
        self._connections = {}
        if config.record_bag:
            self._bag = Writer(out_dir / "bag", version=9, storage_plugin=StoragePlugin.MCAP)
            self._bag.open()
            typestore = stac_typestore()
            for topic, (_, type_name, _) in BAG_TOPICS.items():
                self._connections[topic] = self._bag.add_connection(
                    topic, type_name, typestore=typestore
                )
        self._video = OverlayVideo(out_dir / "overlay.mp4") if config.overlay_video else None
        for topic, (msg_type, _, qos) in BAG_TOPICS.items():
            self.node.create_subscription(
                msg_type, topic, lambda raw, t=topic: self._on_raw(t, raw), qos, raw=True
            )
        self.node.create_subscription(Image, "/stac/overlay", self._on_overlay, OUTPUT_QOS)

    def _on_raw(self, topic: str, raw: bytes) -> None:
        now_ns = self.node.get_clock().now().nanoseconds
        if self._bag is not None:
            self._bag.write(self._connections[topic], now_ns, raw)
        msg = deserialize_message(raw, BAG_TOPICS[topic][0])
        if topic == "/stac/encoded":
            self.result.encoded.append(
                EncodedRecord(
                    msg.frame_seq,
                    _stamp_ns(msg.header.stamp),
                    len(msg.data),
                    msg.keyframe,
                    msg.qp_map_seq,
                )
            )
        elif topic == "/stac/mask":
            stamp_ns = _stamp_ns(msg.header.stamp)
            self.result.masks_by_stamp[stamp_ns] = image_to_numpy(msg)
            self.result.mask_latency_ms.append((now_ns - stamp_ns) * 1e-6)
        elif topic == "/stac/qp_map":
            self.result.qp_map_bytes.append(len(msg.qp_offsets))
        else:
            self.result.statistics[msg.node_name] = msg

    def _on_overlay(self, msg: Image) -> None:
        if self._video is not None:
            self._video.add(image_to_numpy(msg), _stamp_ns(msg.header.stamp))

    def spin_until(self, condition, timeout_s: float, tick=None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if tick is not None:
                tick()
            if condition():
                return True
        return False

    def close(self) -> None:
        if self._bag is not None:
            self._bag.close()
        if self._video is not None:
            self._video.close()
        self.node.destroy_node()


def _process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _executable(package: str, name: str) -> str:
    return str(Path(get_package_prefix(package)) / "lib" / package / name)


class GraphRun:
    """Starts the nodes, plays the clip, waits until every frame is accounted for, stops."""

    def __init__(self, config: GraphRunConfig) -> None:
        self.config = config
        self.result = GraphRunResult()
        self._processes: dict[str, subprocess.Popen] = {}
        config.out_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = config.out_dir / "logs"
        self._log_dir.mkdir(exist_ok=True)

    def _start(
        self, package: str, executable: str, args: list[str], niceness: int = 0
    ) -> subprocess.Popen:
        log_path = self._log_dir / f"{executable}.log"
        self.result.logs[executable] = log_path
        prefix = ["nice", "-n", str(niceness)] if niceness else []
        process = subprocess.Popen(
            [*prefix, _executable(package, executable), *args],
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        self._processes[executable] = process
        return process

    def _node_args(self, launch_file: str, executable: str, **overrides) -> list[str]:
        args = ros_args(self.config.launch_dir / launch_file, executable, **overrides)
        if executable in EDGE_NODES:
            args += ["-p", f"torch_threads:={self.config.torch_threads}"]
        return args

    def run(self) -> GraphRunResult:
        config = self.config
        rclpy.init()
        recorder = GraphRecorder(self.result, config.out_dir, config)
        started = time.monotonic()
        try:
            self._start_nodes()
            expected = set(NODE_NAMES.values())
            if not recorder.spin_until(
                lambda: expected <= set(self.result.statistics), config.startup_timeout_s
            ):
                missing = expected - set(self.result.statistics)
                raise RuntimeError(f"nodes did not come up: {sorted(missing)}; see {self._log_dir}")
            self.result.cpu_at_play_s = self._cpu_of_live_processes()
            play_started = time.monotonic()
            source = self._start_source()
            self._play(recorder, source)
            self.result.play_s = time.monotonic() - play_started
            self._drain(recorder)
        finally:
            self._stop_all()
            self.result.wall_s = time.monotonic() - started
            recorder.close()
            rclpy.try_shutdown()
        return self.result

    def _start_nodes(self) -> None:
        config = self.config
        for executable, package in EDGE_NODES.items():
            self._start(
                package,
                executable,
                self._node_args(
                    "edge.launch.py",
                    executable,
                    budget_shift_qp=str(config.budget_shift_qp),
                    period_frames=str(config.period_frames),
                ),
                niceness=config.edge_niceness,
            )
        self._start(
            "stac_encoder",
            "encoder_node",
            self._node_args(
                "robot.launch.py", "encoder_node", crf=str(config.crf), camera_qos="reliable"
            ),
        )

    def _start_source(self) -> subprocess.Popen:
        config = self.config
        args = self._node_args("local.launch.py", "video_source_node", video_uri=config.video_uri)
        args += ["-p", f"pace:={config.pace}", "-p", f"rate_hz:={config.rate_hz}"]
        args += ["-p", f"max_frames:={config.max_frames}"]
        return self._start("stac_encoder", "video_source_node", args)

    def _play(self, recorder: GraphRecorder, source: subprocess.Popen) -> None:
        with tqdm(desc="frames encoded", unit="frame", mininterval=1.0) as bar:

            def tick() -> None:
                bar.update(len(self.result.encoded) - bar.n)
                seg = self.result.statistics.get("stac_segmenter")
                if seg is not None:
                    bar.set_postfix(
                        segmented=seg.frames_segmented,
                        skipped=seg.frames_skipped,
                        maps=len(self.result.qp_map_bytes),
                    )

            recorder.spin_until(lambda: source.poll() is not None, 24 * 3600, tick)
        log = self.result.logs["video_source_node"]
        if source.returncode != 0:
            raise RuntimeError(f"the video source failed (exit {source.returncode}); see {log}")
        published = re.search(r"published (\d+) frames", log.read_text())
        self.result.frames_published = int(published.group(1)) if published else None

    def _drain(self, recorder: GraphRecorder) -> None:
        """Wait until the edge has dealt with every encoded frame and the counters are still:
        the report then tells whether that is every frame the source published."""
        quiet_since = [time.monotonic(), None]

        def settled() -> bool:
            seg = self.result.statistics.get("stac_segmenter")
            enc = self.result.statistics.get("stac_encoder")
            if seg is None or enc is None:
                return False
            counters = (enc.frames_in, enc.frames_encoded, seg.frames_in, seg.frames_pending)
            if counters != quiet_since[1]:
                quiet_since[:] = [time.monotonic(), counters]
            everything = enc.frames_in == self.result.frames_published
            quiet_s = time.monotonic() - quiet_since[0]
            return (
                seg.frames_in == enc.frames_encoded
                and seg.frames_pending == 0
                and len(self.result.masks_by_stamp) >= seg.frames_segmented
                and (everything or quiet_s > 3.0)
            )

        recorder.spin_until(settled, self.config.drain_timeout_s)
        # one more statistics period, so the final counters are the ones recorded
        recorder.spin_until(lambda: False, 1.2)

    def _cpu_of_live_processes(self) -> dict[str, float]:
        cpu = {}
        for name, process in self._processes.items():
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    cpu[name] = _process_cpu_s(process.pid)
        return cpu

    def _stop_all(self) -> None:
        self.result.cpu_s = self._cpu_of_live_processes()
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self._processes.items():
            try:
                self.result.exit_codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                self.result.exit_codes[name] = process.wait()
