"""CamVid (SegNet tutorial copy): class names, palette, and image/label pairs of a split.

A split lives in `<root>/<split>` (RGB PNGs) and `<root>/<split>annot` (class-id PNGs,
ids 0-10, 11 = void). Labels are read as they are stored; void stays `IGNORE_INDEX`.
The development data (CamVid, the dashcam clip) is found by `shared_data_dir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


def shared_data_dir() -> Path:
    """The development data: $STAC_DATA_DIR, else ../shared/data from the working directory."""
    root = os.environ.get("STAC_DATA_DIR")
    return Path(root) if root else Path("..") / "shared" / "data"


CLASS_NAMES: list[str] = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
# The SegNet tutorial's colours, one RGB row per class id.
PALETTE = np.array(
    [
        [128, 128, 128],
        [128, 0, 0],
        [192, 192, 128],
        [128, 64, 128],
        [60, 40, 222],
        [128, 128, 0],
        [192, 128, 128],
        [64, 64, 128],
        [64, 0, 128],
        [64, 64, 0],
        [0, 128, 192],
    ],
    dtype=np.uint8,
)
IGNORE_INDEX = 11
NUM_CLASSES = len(CLASS_NAMES)


@dataclass(frozen=True)
class CamVidSplit:
    """All frames of a split in memory: images NxHxWx3 uint8 RGB, labels NxHxW uint8."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def split_pairs(split_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) paths of a split directory, sorted by name; its `<name>annot` sibling
    must hold a label for every image."""
    split_dir = Path(split_dir)
    label_dir = split_dir.with_name(split_dir.name + "annot")
    if not split_dir.is_dir():
        raise FileNotFoundError(f"CamVid split directory not found: {split_dir}")
    if not label_dir.is_dir():
        raise FileNotFoundError(f"CamVid label directory not found: {label_dir}")
    images = sorted(split_dir.glob("*.png"))
    if not images:
        raise ValueError(f"no PNG images in {split_dir}")
    pairs = [(image, label_dir / image.name) for image in images]
    missing = [str(label) for _, label in pairs if not label.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label files missing, e.g. {missing[0]}")
    return pairs


def read_image_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """HxW uint8 class ids."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise ValueError(f"cannot read a single-channel label image from {path}")
    return label.astype(np.uint8)


def load_split(split_dir: str | Path, limit: int | None = None) -> CamVidSplit:
    """Read the first `limit` (default all) frames of a split into memory."""
    pairs = split_pairs(split_dir)[:limit]
    images = np.stack([read_image_rgb(image) for image, _ in pairs])
    labels = np.stack([read_label(label) for _, label in pairs])
    if labels.max() > IGNORE_INDEX:
        raise ValueError(f"labels in {split_dir} exceed the void id {IGNORE_INDEX}")
    return CamVidSplit(names=[image.name for image, _ in pairs], images=images, labels=labels)
