"""What the replay reads: a video file or a rosbag2 (mcap or sqlite3), and optional labels.

Frames come from `stac_encoder.frame_sources.read_frames`, the reader the demo's video source
node uses (sensor_msgs/Image or CompressedImage in bags), with their recorded time offsets:
the replay's clock. Human labels come from a folder of class-id PNGs (the trailing number of a
file's name is the frame index, counted from 0: `000012.png`, `frame_12.png`) or from a mono8
sensor_msgs/Image topic of the same bag (each label goes to the frame recorded nearest to it,
within half a frame interval). Pixels whose id is not a class of the model are not scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_encoder.frame_sources import (
    BAG_SUFFIXES,
    IMAGE_MSGTYPES,
    SourceError,
    SourceFrame,
    read_frames,
)
from stac_ros_common.image_pixels import image_to_numpy

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReplaySource:
    """An opened source: where it is, what kind, which topic, and a digest of its bytes."""

    uri: str
    kind: str  # "video" or "bag"
    topic: str  # the image topic of a bag ("" for a video)
    digest: str  # sha256 of the file(s), the cache key of everything computed from frames

    def frames(self, max_frames: int = 0) -> Iterator[SourceFrame]:
        return read_frames(self.uri, bag_topic=self.topic, max_frames=max_frames)

    def as_json(self) -> dict:
        return {"uri": self.uri, "kind": self.kind, "topic": self.topic or None}


def open_source(uri: str, topic: str = "") -> ReplaySource:
    """Check that `uri` is a readable video file or bag; pick the bag's image topic."""
    path = Path(uri).expanduser()
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if not is_bag(path):
        if topic:
            raise SourceError(f"--topic {topic} given, but {path} is a video file, not a bag")
        capture = cv2.VideoCapture(str(path))
        opened = capture.isOpened()
        capture.release()
        if not opened:
            raise SourceError(f"cannot open {path} as a video file or a rosbag2")
        return ReplaySource(str(path), "video", "", _digest(path))
    topics = bag_image_topics(path)
    if topic and topic not in topics:
        raise SourceError(f"no image topic {topic} in {path}; image topics: {topics or 'none'}")
    if not topics:
        raise SourceError(f"no sensor_msgs/Image or CompressedImage topic in {path}")
    return ReplaySource(str(path), "bag", topic or topics[0], _digest(path))


def is_bag(path: Path) -> bool:
    """A rosbag2: an .mcap or .db3 file, or a folder with metadata.yaml."""
    return path.suffix in BAG_SUFFIXES or (path.is_dir() and (path / "metadata.yaml").is_file())


def _bag_path(path: Path) -> Path:
    return path.parent if path.is_file() and path.suffix == ".db3" else path


def bag_image_topics(path: Path) -> list[str]:
    """The bag's Image and CompressedImage topics, in the order the frame reader takes them."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([_bag_path(path)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as bag:
        return [c.topic for c in bag.connections if c.msgtype in IMAGE_MSGTYPES]


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as stream:
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def label_folder(folder: str | Path) -> dict[int, Path]:
    """Frame index -> label PNG for every PNG of `folder` whose name ends in a number."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SourceError(f"label folder not found: {folder}")
    labels = {}
    for path in sorted(folder.glob("*.png")):
        match = re.search(r"(\d+)$", path.stem)
        if match:
            labels[int(match.group(1))] = path
    if not labels:
        raise SourceError(f"no label PNGs named by frame number in {folder}")
    return labels


def read_label_png(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise SourceError(f"cannot read a single-channel label image from {path}")
    return label.astype(np.uint8)


def bag_labels(source: ReplaySource, label_topic: str, offsets_s: list[float]) -> dict:
    """Frame index -> HxW uint8 class ids from a mono8 topic of the source bag, each label
    given to the frame recorded nearest to it (within half a frame interval)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if source.kind != "bag":
        raise SourceError("--label-topic needs a bag source")
    path = _bag_path(Path(source.uri))
    offsets = np.asarray(offsets_s)
    half_interval = 0.5 * float(np.median(np.diff(offsets))) if len(offsets) > 1 else 0.5
    labels: dict[int, np.ndarray] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as bag:
        frames = [c for c in bag.connections if c.topic == source.topic]
        wanted = [c for c in bag.connections if c.topic == label_topic]
        if not wanted or wanted[0].msgtype != "sensor_msgs/msg/Image":
            raise SourceError(f"no sensor_msgs/Image label topic {label_topic} in {path}")
        first_ns = next(iter(bag.messages(connections=frames[:1])))[1]
        for connection, timestamp_ns, raw in bag.messages(connections=wanted[:1]):
            msg = bag.deserialize(raw, connection.msgtype)
            if msg.encoding not in ("mono8", "8UC1"):
                raise SourceError(f"label topic {label_topic}: encoding {msg.encoding}, not mono8")
            offset = (timestamp_ns - first_ns) * 1e-9
            index = int(np.argmin(np.abs(offsets - offset)))
            if abs(offsets[index] - offset) <= half_interval + 1e-9:
                msg.encoding = "mono8"
                labels[index] = image_to_numpy(msg)
    if not labels:
        raise SourceError(f"no label on {label_topic} lines up with a frame of {source.topic}")
    return labels
