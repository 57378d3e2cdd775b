"""The graph's recorder, `stac-record`: a ROS node that watches the graph's topics and writes
an MCAP rosbag2 that Foxglove and Lichtblick play (the robot's video, masks, overlays, QP maps
and heatmaps, the robot's masks, statistics), each mask as a PNG, and optionally an mp4 of the
mask overlay. The demo and the live benchmarks run the same recorder in their own process and
also keep what their reports need (sizes, stamps, statistics) in a GraphRunResult.

    stac-record --out DIR [--duration-s S] [--overlay-video]

The video channel (VIDEO_TOPIC, foxglove_msgs/msg/CompressedVideo) is the edge's live `video`
topic, recorded as it is, where foxglove_msgs is installed here (the edge publishes it then);
elsewhere the recorder writes each EncodedFrame's access unit as CompressedVideo itself
(stac_eval.foxglove_video). Either way every message is checked to play in those viewers, and
one that would not is left out and counted.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import rclpy
from ament_index_python.packages import get_package_share_directory
from rclpy.executors import ExternalShutdownException
from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.serialization import deserialize_message
from rclpy.signals import SignalHandlerOptions
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import Image

from stac_eval.foxglove_video import (
    COMPRESSED_VIDEO_TYPE,
    VIDEO_TOPIC,
    VideoFrameError,
    check_access_unit,
    compressed_video_cdr,
    register_compressed_video,
)
from stac_msgs.msg import EncodedFrame, MaskAge, QPMap, SegmentationMask, Statistics
from stac_ros_common.image_pixels import image_to_numpy
from stac_ros_common.qos import (
    ENCODED_QOS,
    MASK_FEEDBACK_QOS,
    OUTPUT_QOS,
    QP_MAP_QOS,
    RELIABLE_CAMERA_QOS,
    ROBOT_MASK_QOS,
    STATISTICS_TOPIC,
)

try:  # the edge's live video; without it the recorder converts /stac/encoded itself
    from foxglove_msgs.msg import CompressedVideo
except ImportError:
    CompressedVideo = None

# The statistics of the robot and edge in the root namespace (nodes report on the relative
# STATISTICS_TOPIC, in their namespace).
ROOT_STATISTICS_TOPIC = f"/{STATISTICS_TOPIC}"
# topic -> (message class, ROS type name, QoS); what the bag keeps (the robot in the root
# namespace). The bag also carries the robot's stream as foxglove_msgs/msg/CompressedVideo on
# VIDEO_TOPIC (module docstring), the only form in which Foxglove and Lichtblick play H.264.
BAG_TOPICS = {
    "/stac/encoded": (EncodedFrame, "stac_msgs/msg/EncodedFrame", ENCODED_QOS),
    "/stac/qp_map": (QPMap, "stac_msgs/msg/QPMap", QP_MAP_QOS),
    "/stac/mask": (Image, "sensor_msgs/msg/Image", OUTPUT_QOS),
    "/stac/overlay": (Image, "sensor_msgs/msg/Image", OUTPUT_QOS),  # rgb8: colours in viewers
    "/stac/qp_heatmap": (Image, "sensor_msgs/msg/Image", OUTPUT_QOS),  # rgb8, one per map
    # the edge's masks on their way back, and the robot's mask of every camera frame
    "/stac/mask_feedback": (
        SegmentationMask,
        "stac_msgs/msg/SegmentationMask",
        MASK_FEEDBACK_QOS,
    ),
    "/stac/robot_mask": (Image, "sensor_msgs/msg/Image", ROBOT_MASK_QOS),
    "/stac/robot_mask_age": (MaskAge, "stac_msgs/msg/MaskAge", ROBOT_MASK_QOS),
    ROOT_STATISTICS_TOPIC: (Statistics, "stac_msgs/msg/Statistics", OUTPUT_QOS),
}


# The recorder is one more subscriber, and on a loaded machine it can fall behind: its reader
# queues hold this many messages a topic (the publishers' QoS otherwise), so that what was sent
# to it is not dropped before it takes it (at 25 fps, 4 s of camera frames or robot masks).
RECORDER_QUEUE_DEPTH = 100


def recorder_qos(qos: QoSProfile) -> QoSProfile:
    """A topic's QoS (reliability, durability) with the recorder's deeper reader queue."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(qos.depth, RECORDER_QUEUE_DEPTH),
        reliability=qos.reliability,
        durability=qos.durability,
    )


@dataclass(frozen=True)
class EncodedRecord:
    """One EncodedFrame as seen on the wire; size_bytes is its serialized (CDR) size."""

    frame_seq: int
    stamp_ns: int
    size_bytes: int
    keyframe: bool
    qp_map_seq: int


@dataclass
class GraphRunResult:
    """Everything observed during one run (see `summarise` in stac_eval.ros.demo)."""

    frames_published: int | None = None
    encoded: list[EncodedRecord] = field(default_factory=list)
    # Masks go to PNG files as they arrive (memory stays flat however long the run): the
    # camera stamp (ns) of each mask -> its file; `mask` reads one back.
    mask_files: dict[int, Path] = field(default_factory=dict)
    mask_size: tuple[int, int] | None = None  # (width, height) of the masks
    mask_latency_ms: list[float] = field(default_factory=list)
    qp_map_bytes: list[int] = field(default_factory=list)  # serialized QPMap sizes
    mask_feedback_bytes: list[int] = field(default_factory=list)  # serialized SegmentationMasks
    # the robot's mask of each camera frame: camera stamp (ns) -> (width, height), its PNG
    # file (as the edge's masks) and its age (camera stamp -> age in frames, -1 before the
    # edge's first mask)
    robot_mask_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    robot_mask_files: dict[int, Path] = field(default_factory=dict)
    robot_mask_ages: dict[int, int] = field(default_factory=dict)
    # camera stamp -> capture stamp of the frame whose edge mask the robot's mask comes from
    # (only once the robot has one)
    robot_mask_sources: dict[int, int] = field(default_factory=dict)
    # The stamps of the source's frames as they went out on the camera topic, in arrival
    # order (the recorder's own subscription: what the source published, counted from the
    # topic, not from any node's counter); the source's own count is frames_published.
    source_stamps: list[int] = field(default_factory=list)
    # Robot outages of a fault run: (killed, started again), system time in ns (the clock of
    # the stamps)
    robot_outages_ns: list[tuple[int, int]] = field(default_factory=list)
    statistics: dict[str, Statistics] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    # seconds from the runner's SIGTERM to each process's exit (SHUTDOWN_GRACE_S and more: it
    # did not end by itself and was killed)
    exit_after_sigterm_s: dict[str, float] = field(default_factory=dict)
    # the processes asked for their threads' stacks before the kill (written to their logs)
    stacks_requested: list[str] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_at_play_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    link: dict | None = None  # the kernel link as applied (stac_eval.kernel_link), if any
    # Fault injection: last statistics of killed processes' nodes, exit codes of the killed,
    # when each event happened (s after playback start), what the rogue publisher sent, and
    # resident memory samples (MiB, one a second) per process.
    retired_statistics: list[Statistics] = field(default_factory=list)
    killed: dict[str, int] = field(default_factory=dict)
    events_done: dict = field(default_factory=dict)
    rogue_sent: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    play_started_s: float = 0.0  # time.monotonic() when playback started
    mask_arrival_s: list[float] = field(default_factory=list)  # time.monotonic() per mask
    logs: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0
    # Frames left out of the bag's VIDEO_TOPIC, and why (empty when the video is complete);
    # how many went in, and whether they came from the edge's live topic
    video_errors: list[str] = field(default_factory=list)
    video_frames: int = 0
    video_live: bool = False
    # Overlays left out of overlay.mp4: another size than the first, or not later than the
    # last one written (see OverlayVideo)
    overlay_frames_skipped: int = 0

    def mask(self, stamp_ns: int) -> np.ndarray:
        """The class-id mask (HxW uint8) the edge published for the frame of `stamp_ns`."""
        return _read_mask(self.mask_files[stamp_ns])

    def robot_mask(self, stamp_ns: int) -> np.ndarray:
        """The robot's class-id mask (HxW uint8, 255 = no class yet) of the camera frame of
        `stamp_ns`."""
        return _read_mask(self.robot_mask_files[stamp_ns])

    def camera_stamps(self) -> list[int]:
        """Every camera frame's stamp the graph showed (robot masks, their ages, encoded
        frames), in order."""
        stamps = set(self.robot_mask_sizes) | set(self.robot_mask_ages)
        return sorted(stamps | {record.stamp_ns for record in self.encoded})

    def frame_seq_by_stamp(self) -> dict[int, int]:
        return {record.stamp_ns: record.frame_seq for record in self.encoded}


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def stac_typestore():
    """rosbags' Jazzy types plus stac_msgs, read from the installed .msg files, and
    foxglove_msgs/msg/CompressedVideo (no wheel ships it)."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    register_compressed_video(typestore)
    msg_dir = Path(get_package_share_directory("stac_msgs")) / "msg"
    for path in sorted(msg_dir.glob("*.msg")):
        typestore.register(get_types_from_msg(path.read_text(), f"stac_msgs/msg/{path.stem}"))
    return typestore


_MILLISECOND = Fraction(1, 1000)


class OverlayVideo:
    """Writes overlay images to an H.264 mp4 with their capture times as timestamps.

    Timestamps are kept in milliseconds in the encoder too (not the nominal 30 fps): a source
    that falls behind publishes frames a few ms apart, and at 1/30 s they would share a pts,
    which x264 and the mp4 muxer refuse (EINVAL)."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path), mode="w")
        self._stream = None
        self._first_ns: int | None = None
        self._last_pts_ms: int | None = None
        self.frames_skipped = 0

    def add(self, rgb: np.ndarray, stamp_ns: int) -> None:
        """Append a frame; a frame of another size, or not later (to the ms) than the last
        one written, is counted in `frames_skipped` instead: an mp4 track is one size and its
        timestamps only grow."""
        if self._stream is None:
            self._open_stream(rgb, stamp_ns)
        pts_ms = (stamp_ns - self._first_ns) // 1_000_000
        sized = (rgb.shape[1], rgb.shape[0]) == (self._stream.width, self._stream.height)
        if not sized or (self._last_pts_ms is not None and pts_ms <= self._last_pts_ms):
            self.frames_skipped += 1
            return
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts_ms, _MILLISECOND
        self._container.mux(self._stream.encode(frame))
        self._last_pts_ms = pts_ms

    def _open_stream(self, rgb: np.ndarray, stamp_ns: int) -> None:
        self._stream = self._container.add_stream("libx264", rate=30)
        self._stream.width, self._stream.height = rgb.shape[1], rgb.shape[0]
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = _MILLISECOND
        self._stream.codec_context.time_base = _MILLISECOND
        self._stream.options = {"crf": "23", "preset": "veryfast"}
        self._first_ns = stamp_ns

    def close(self) -> None:
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()


def _read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f"mask file {path} is unreadable")
    return mask


class GraphRecorder:
    """An in-process node that records the graph's topics into a result, a bag and a video.

    With `camera_topic` it also keeps the stamp of every Image on it whose frame_id is
    `camera_frame_id` (the source's frames; anything else publishing there is not the camera)
    in result.source_stamps, reading only the header of each message."""

    def __init__(
        self,
        result: GraphRunResult,
        out_dir: Path,
        record_bag: bool,
        overlay_video: bool,
        camera_topic: str | None = None,
        camera_frame_id: str = "camera",
    ) -> None:
        self.result = result
        self.node = rclpy.create_node("stac_demo_recorder")
        self._mask_dir = out_dir / "masks"
        self._mask_dir.mkdir(parents=True, exist_ok=True)
        self._robot_mask_dir = out_dir / "robot_masks"
        self._robot_mask_dir.mkdir(parents=True, exist_ok=True)
        self._bag = None
        self._connections = {}
        self._typestore = stac_typestore()
        if record_bag:
            self._bag = Writer(out_dir / "bag", version=9, storage_plugin=StoragePlugin.MCAP)
            self._bag.open()
            for topic, (_, type_name, _) in BAG_TOPICS.items():
                self._connections[topic] = self._bag.add_connection(
                    topic, type_name, typestore=self._typestore
                )
            self._connections[VIDEO_TOPIC] = self._bag.add_connection(
                VIDEO_TOPIC, COMPRESSED_VIDEO_TYPE, typestore=self._typestore
            )
        self._video = OverlayVideo(out_dir / "overlay.mp4") if overlay_video else None
        for topic, (msg_type, _, qos) in BAG_TOPICS.items():
            self.node.create_subscription(
                msg_type,
                topic,
                lambda raw, t=topic: self._on_raw(t, raw),
                recorder_qos(qos),
                raw=True,
            )
        self._camera_frame_id = camera_frame_id
        if camera_topic is not None:
            self.node.create_subscription(
                Image, camera_topic, self._on_camera, recorder_qos(RELIABLE_CAMERA_QOS), raw=True
            )
        self.result.video_live = CompressedVideo is not None
        if CompressedVideo is not None:
            self.node.create_subscription(
                CompressedVideo,
                VIDEO_TOPIC,
                self._on_live_video,
                recorder_qos(ENCODED_QOS),
                raw=True,
            )

    def _on_raw(self, topic: str, raw: bytes) -> None:
        now_ns = self.node.get_clock().now().nanoseconds
        if self._bag is not None:
            self._bag.write(self._connections[topic], now_ns, raw)
        msg = deserialize_message(raw, BAG_TOPICS[topic][0])
        if topic == "/stac/encoded":
            self._write_video(msg, now_ns)
            self.result.encoded.append(
                EncodedRecord(
                    msg.frame_seq,
                    _stamp_ns(msg.header.stamp),
                    len(raw),
                    msg.keyframe,
                    msg.qp_map_seq,
                )
            )
        elif topic == "/stac/mask":
            stamp_ns = _stamp_ns(msg.header.stamp)
            path = self._mask_dir / f"{stamp_ns}.png"
            self.result.mask_size = (msg.width, msg.height)
            if not cv2.imwrite(str(path), image_to_numpy(msg)):
                raise OSError(f"cannot write {path}")
            self.result.mask_files[stamp_ns] = path
            self.result.mask_arrival_s.append(time.monotonic())
            self.result.mask_latency_ms.append((now_ns - stamp_ns) * 1e-6)
        elif topic == "/stac/qp_map":
            self.result.qp_map_bytes.append(len(raw))
        elif topic == "/stac/mask_feedback":
            self.result.mask_feedback_bytes.append(len(raw))
        elif topic == "/stac/robot_mask":
            stamp_ns = _stamp_ns(msg.header.stamp)
            self.result.robot_mask_sizes[stamp_ns] = (msg.width, msg.height)
            path = self._robot_mask_dir / f"{stamp_ns}.png"
            if not cv2.imwrite(str(path), image_to_numpy(msg), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise OSError(f"cannot write {path}")
            self.result.robot_mask_files[stamp_ns] = path
        elif topic == "/stac/robot_mask_age":
            age = msg.age_frames if msg.has_source else -1
            self.result.robot_mask_ages[_stamp_ns(msg.header.stamp)] = age
            if msg.has_source:
                source_ns = _stamp_ns(msg.source_stamp)
                self.result.robot_mask_sources[_stamp_ns(msg.header.stamp)] = source_ns
        elif topic == "/stac/overlay":
            self._on_overlay(msg)
        elif topic == ROOT_STATISTICS_TOPIC:
            self.result.statistics[msg.node_name] = msg

    def _on_camera(self, raw: bytes) -> None:
        """A camera Image: only its header is read (rosbags maps the pixels without a copy)."""
        header = self._typestore.deserialize_cdr(raw, "sensor_msgs/msg/Image").header
        if header.frame_id == self._camera_frame_id:
            self.result.source_stamps.append(_stamp_ns(header.stamp))

    def _on_live_video(self, raw: bytes) -> None:
        """The edge's CompressedVideo as it is, once checked to play as one frame."""
        now_ns = self.node.get_clock().now().nanoseconds
        msg = deserialize_message(raw, CompressedVideo)
        try:
            check_access_unit(bytes(msg.data))
        except VideoFrameError as error:
            stamp = f"{msg.timestamp.sec}.{msg.timestamp.nanosec:09d}"
            self._video_error(f"the live frame of {stamp}", error)
            return
        self.result.video_frames += 1
        if self._bag is not None:
            self._bag.write(self._connections[VIDEO_TOPIC], now_ns, raw)

    def _video_error(self, what: str, error: Exception) -> None:
        problem = f"{what} not written to {VIDEO_TOPIC}: {error}"
        self.result.video_errors.append(problem)
        self.node.get_logger().error(problem)

    def _write_video(self, msg: EncodedFrame, now_ns: int) -> None:
        """Without the edge's live video: the access unit once more as
        foxglove_msgs/msg/CompressedVideo, stamped with the capture time, so Foxglove and
        Lichtblick can play the robot's stream. A frame they could not play is left out,
        logged and counted in result.video_errors."""
        if self._bag is None or self.result.video_live:
            return
        try:
            cdr = compressed_video_cdr(
                self._typestore,
                sec=msg.header.stamp.sec,
                nanosec=msg.header.stamp.nanosec,
                frame_id=msg.header.frame_id,
                data=bytes(msg.data),
                keyframe=msg.keyframe,
                codec=msg.codec,
            )
        except VideoFrameError as error:
            self._video_error(f"frame_seq {msg.frame_seq}", error)
            return
        self.result.video_frames += 1
        self._bag.write(self._connections[VIDEO_TOPIC], now_ns, cdr)

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
            self.result.overlay_frames_skipped = self._video.frames_skipped
        self.node.destroy_node()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stac-record",
        description="Record the STAC graph (/stac/... topics) into an MCAP rosbag2 that "
        "Foxglove plays: the robot's video, masks, overlays, QP maps and heatmaps, the "
        "robot's masks, statistics. Stops on Ctrl-C, SIGTERM or --duration-s. Arguments it "
        "does not know (--ros-args ...) go to ROS.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--duration-s", type=float, default=0.0, help="0 = until stopped")
    parser.add_argument(
        "--overlay-video", action="store_true", help="also write overlay.mp4 (mask colours)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """stac-record: record the graph until Ctrl-C, SIGTERM or --duration-s."""
    parser = build_parser()
    args, ros_arguments = parser.parse_known_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new directory")
    args.out.mkdir(parents=True)
    # SIGINT and SIGTERM end the recording here, between two spins: with rclpy's own handlers
    # a signal shut the context down under the executor, which then failed to build its next
    # wait set (RCLError) before the bag was closed
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    rclpy.init(args=ros_arguments, signal_handler_options=SignalHandlerOptions.NO)
    result = GraphRunResult()
    recorder = GraphRecorder(result, args.out, record_bag=True, overlay_video=args.overlay_video)
    started = time.monotonic()
    try:
        limit = args.duration_s or float("inf")
        recorder.spin_until(lambda: stopping.is_set() or time.monotonic() - started >= limit, limit)
    except ExternalShutdownException:
        pass
    finally:
        recorder.close()
        rclpy.try_shutdown()
    print(
        f"stac-record: {time.monotonic() - started:.1f} s into {args.out / 'bag'}: "
        f"{len(result.encoded)} encoded frames, {result.video_frames} video frames "
        f"({'the edge' if result.video_live else 'converted'}; {len(result.video_errors)} left "
        f"out), {len(result.mask_files)} masks, {len(result.robot_mask_ages)} robot masks"
    )
