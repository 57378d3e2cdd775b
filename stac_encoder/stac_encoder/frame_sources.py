"""Camera stand-ins: frames from a video file, a camera device or a rosbag2 (mcap or sqlite3).

Plain Python (no ROS runtime): bags are read with the `rosbags` library. Every source yields
`SourceFrame`s in RGB with the time offset (seconds from the first frame) at which they were
recorded, so a player can replay them at the recorded rate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_ros_common.image_pixels import image_to_rgb

BAG_SUFFIXES = (".mcap", ".db3")


class SourceError(RuntimeError):
    """The source cannot be opened or read."""


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


def read_frames(uri: str, bag_topic: str = "", max_frames: int = 0) -> Iterator[SourceFrame]:
    """Frames from `uri`: 'camera:N' or '/dev/videoN', a rosbag2 (directory, .mcap, .db3;
    `bag_topic` picks the sensor_msgs/Image topic, default the first one), or a video file."""
    camera = _camera_index(uri)
    if camera is not None:
        frames = _capture_frames(cv2.VideoCapture(camera), uri, live=True)
    else:
        path = Path(uri).expanduser()
        if not path.exists():
            raise SourceError(f"video source not found: {path}")
        if _is_bag(path):
            frames = _bag_frames(path, bag_topic)
        else:
            frames = _capture_frames(cv2.VideoCapture(str(path)), uri, live=False)
    for frame in frames:
        if max_frames and frame.index >= max_frames:
            return
        yield frame


def _capture_frames(capture: cv2.VideoCapture, uri: str, live: bool) -> Iterator[SourceFrame]:
    if not capture.isOpened():
        raise SourceError(f"cannot open video source {uri}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0.0 < fps < 1000.0 else 25.0
    start = cv2.getTickCount()
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            if live:
                offset_s = (cv2.getTickCount() - start) / cv2.getTickFrequency()
            else:
                offset_s = index / fps
            yield SourceFrame(index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), offset_s)
            index += 1
    finally:
        capture.release()


def _bag_frames(path: Path, topic: str) -> Iterator[SourceFrame]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag_path = path.parent if path.is_file() and path.suffix == ".db3" else path
    with AnyReader([bag_path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        images = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
        if topic:
            images = [c for c in images if c.topic == topic]
        if not images:
            wanted = f"topic {topic}" if topic else "any topic"
            raise SourceError(f"no sensor_msgs/msg/Image messages on {wanted} in {path}")
        first_ns = None
        for index, (connection, timestamp_ns, raw) in enumerate(
            reader.messages(connections=images[:1])
        ):
            msg = reader.deserialize(raw, connection.msgtype)
            first_ns = timestamp_ns if first_ns is None else first_ns
            yield SourceFrame(index, image_to_rgb(msg), (timestamp_ns - first_ns) * 1e-9)
