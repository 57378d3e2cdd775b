"""Camera stand-ins: frames from a video file, a camera device or a rosbag2 (mcap or sqlite3).

Plain Python (no ROS runtime): bags are read with the `rosbags` library. Every source yields
`SourceFrame`s in RGB with the time offset (seconds from the first frame) at which they were
recorded, so a player can replay them at the recorded rate.

Failures: everything that keeps a source from being opened or read (a missing file, garbage
metadata.yaml, a truncated mcap, a stray .db3 without its bag, an unreadable video) raises
`SourceError` with a message naming the file; no rosbags or OpenCV exception leaks out. A bag
message that cannot be used (an unsupported encoding such as 16UC1, inconsistent sizes, bytes
that do not deserialize) is skipped and counted in the `SourceStats` the caller passed in;
only a topic without a single usable image is an error. A video file that ends before the
frame count its container declares (a truncated mp4) raises SourceError after the last
readable frame, with `SourceStats.truncated` set.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from stac_ros_common.image_pixels import ImageConversionError, image_to_rgb

BAG_SUFFIXES = (".mcap", ".db3")
COMPRESSED_IMAGE_MSGTYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_MSGTYPES = ("sensor_msgs/msg/Image", COMPRESSED_IMAGE_MSGTYPE)


class SourceError(RuntimeError):
    """The source cannot be opened or read."""


@dataclass
class SourceStats:
    """What reading a source met besides frames; pass one to read_frames and read it at the end.

    frames: frames yielded. skipped: bag messages left out, with the count per reason in
    skip_reasons (e.g. "unsupported image encoding '16UC1'"). truncated: the video ended before
    the frame count its container declares; message says how far it got.
    """

    frames: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    truncated: bool = False
    message: str = ""

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] += 1


@dataclass(frozen=True)
class SourceFrame:
    """An RGB HxWx3 uint8 frame, its index from 0, and its recorded time offset in seconds."""

    index: int
    image: np.ndarray
    offset_s: float


def _is_bag(path: Path) -> bool:
    return path.suffix in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").is_file())


def _camera_index(uri: str) -> int | None:
    match = re.fullmatch(r"(?:camera:|/dev/video)(\d+)", uri)
    return int(match.group(1)) if match else None


def read_frames(
    uri: str, bag_topic: str = "", max_frames: int = 0, stats: SourceStats | None = None
) -> Iterator[SourceFrame]:
    """Frames from `uri`: 'camera:N' or '/dev/videoN', a rosbag2 (directory, .mcap, .db3;
    `bag_topic` picks the sensor_msgs/Image or sensor_msgs/CompressedImage topic, default the
    first one), or a video file. `stats`, when given, counts skipped messages and notes a
    truncated video (see the module docstring)."""
    stats = stats if stats is not None else SourceStats()
    camera = _camera_index(uri)
    if camera is not None:
        frames = _capture_frames(cv2.VideoCapture(camera), uri, live=True, stats=stats)
    else:
        path = Path(uri).expanduser()
        if not path.exists():
            raise SourceError(f"video source not found: {path}")
        if _is_bag(path):
            frames = _bag_frames(path, bag_topic, stats)
        else:
            frames = _capture_frames(
                cv2.VideoCapture(str(path)), uri, live=False, stats=stats, path=path
            )
    for frame in frames:
        if max_frames and frame.index >= max_frames:
            return
        stats.frames += 1
        yield frame


def _capture_frames(
    capture: cv2.VideoCapture,
    uri: str,
    live: bool,
    stats: SourceStats,
    path: Path | None = None,
) -> Iterator[SourceFrame]:
    if not capture.isOpened():
        raise SourceError(f"cannot open video source {uri}")
    declared = 0 if live or path is None else _declared_frame_count(path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0.0 < fps < 1000.0 else 25.0
    start = cv2.getTickCount()
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            if live:
                offset_s = (cv2.getTickCount() - start) / cv2.getTickFrequency()
            else:
                offset_s = index / fps
            yield SourceFrame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), offset_s)
            index += 1
    finally:
        capture.release()
    # A frame or two fewer than declared happens with edit lists; a truncated file loses more.
    if declared and index + max(2, declared // 100) < declared:
        stats.truncated = True
        stats.message = (
            f"{uri} ended after {index} of the {declared} frames its container declares "
            "(truncated or damaged file)"
        )
        raise SourceError(stats.message)


def _declared_frame_count(path: Path) -> int:
    """The frame count the container states (mp4, avi, mkv with an index), 0 when unknown."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            return max(0, int(streams[0].frames)) if streams else 0
    except Exception:  # noqa: BLE001 - a file PyAV cannot probe just has no declared count
        return 0


def _bag_frames(path: Path, topic: str, stats: SourceStats) -> Iterator[SourceFrame]:
    """Frames of a bag; every failure of rosbags (and of the files under it) is a SourceError."""
    try:
        yield from _bag_images(path, topic, stats)
    except SourceError:
        raise
    except Exception as error:  # noqa: BLE001 - AnyReaderError, FileNotFoundError, sqlite, ...
        raise SourceError(
            f"cannot read the rosbag2 {path}: {type(error).__name__}: {error}"
        ) from error


def _bag_images(path: Path, topic: str, stats: SourceStats) -> Iterator[SourceFrame]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag_path = path.parent if path.is_file() and path.suffix == ".db3" else path
    if path.is_file() and path.suffix == ".db3" and not (bag_path / "metadata.yaml").is_file():
        raise SourceError(
            f"{path} is a .db3 without the metadata.yaml of its rosbag2 beside it; "
            "give the bag's directory"
        )
    with AnyReader([bag_path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        images = [c for c in reader.connections if c.msgtype in IMAGE_MSGTYPES]
        if topic:
            images = [c for c in images if c.topic == topic]
        if not images:
            wanted = f"topic {topic}" if topic else "any topic"
            raise SourceError(
                f"no sensor_msgs/msg/Image or CompressedImage messages on {wanted} in {path}"
            )
        first_ns = None
        index = 0
        for position, (connection, timestamp_ns, raw) in enumerate(
            reader.messages(connections=images[:1])
        ):
            rgb = _message_rgb(reader, connection, raw, f"{path} message {position}", stats)
            if rgb is None:
                continue
            first_ns = timestamp_ns if first_ns is None else first_ns
            yield SourceFrame(index, rgb, (timestamp_ns - first_ns) * 1e-9)
            index += 1
        if index == 0 and stats.skipped:
            reasons = "; ".join(f"{n} x {r}" for r, n in stats.skip_reasons.most_common())
            raise SourceError(f"no usable image on {images[0].topic} in {path}: {reasons}")


def _message_rgb(reader, connection, raw: bytes, what: str, stats: SourceStats):
    """RGB pixels of one bag message, or None (counted in stats) when it cannot be used."""
    try:
        msg = reader.deserialize(raw, connection.msgtype)
    except Exception as error:  # noqa: BLE001 - damaged CDR bytes raise all kinds of errors
        stats.skip(f"message does not deserialize ({type(error).__name__})")
        return None
    try:
        if connection.msgtype == COMPRESSED_IMAGE_MSGTYPE:
            return compressed_image_to_rgb(msg.data, what)
        return image_to_rgb(msg)
    except (ImageConversionError, SourceError) as error:
        stats.skip(str(error).removeprefix(f"{what}: ").split(";")[0])
        return None


def compressed_image_to_rgb(data: np.ndarray | bytes, what: str = "image") -> np.ndarray:
    """The RGB pixels of a sensor_msgs/CompressedImage's data (JPEG or PNG, as
    compressed_image_transport writes them); SourceError when they do not decode."""
    buffer = np.frombuffer(bytes(memoryview(data)), dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if bgr is None:
        raise SourceError(f"{what}: compressed image data does not decode (JPEG or PNG)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
