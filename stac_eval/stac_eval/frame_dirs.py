"""Frames for offline work (calibration, benchmarks): PNG directories and video files.

A directory gives its PNGs (sorted by name) and, optionally, same-named class-id label PNGs.
A video file gives `count` frames spread evenly over the clip, without labels: the calibration
then scores against the model's own output on the raw frames (pseudo labels). Video frames are
centre-cropped to the working aspect ratio and resized to the working size (by default CamVid's
480x360, the size the shipped model was trained and is evaluated at), so a 16:9 dashcam clip and
a 4:3 street camera give frames of the geometry the benchmark reports on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_training.camvid import read_image_rgb, read_label

WORKING_SIZE = (480, 360)  # (width, height)


@dataclass(frozen=True)
class Frames:
    """names; images N x H x W x 3 uint8 RGB; labels N x H x W uint8 class ids, or None."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray | None


def read_frames(
    images_dir: Path, labels_dir: Path | None = None, limit: int | None = None, stride: int = 1
) -> Frames:
    """Every `stride`-th PNG of a directory (sorted by name), at most `limit`, with the
    same-named label PNGs of `labels_dir` when given."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    paths = sorted(Path(images_dir).glob("*.png"))[::stride][:limit]
    if not paths:
        raise FileNotFoundError(f"no PNG frames in {images_dir}")
    images = np.stack([read_image_rgb(path) for path in paths])
    labels = None
    if labels_dir is not None:
        missing = [p.name for p in paths if not (Path(labels_dir) / p.name).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} labels missing in {labels_dir}: {missing[0]}")
        labels = np.stack([read_label(Path(labels_dir) / path.name) for path in paths])
    return Frames([path.name for path in paths], images, labels)


def crop_resize(frame_rgb: np.ndarray, size: tuple[int, int] = WORKING_SIZE) -> np.ndarray:
    """Centre-crop an HxWx3 frame to the aspect ratio of size (width, height), then resize."""
    width, height = size
    rows, cols = frame_rgb.shape[:2]
    if cols * height > rows * width:  # too wide: crop columns
        keep = round(rows * width / height)
        start = (cols - keep) // 2
        frame_rgb = frame_rgb[:, start : start + keep]
    elif cols * height < rows * width:  # too tall: crop rows
        keep = round(cols * height / width)
        start = (rows - keep) // 2
        frame_rgb = frame_rgb[start : start + keep]
    if frame_rgb.shape[:2] != (height, width):
        frame_rgb = cv2.resize(frame_rgb, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame_rgb)


def video_frame_indices(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a `total`-frame clip (middles of equal parts)."""
    if total < 1 or count < 1:
        raise ValueError(f"need a non-empty clip and count >= 1, got {total} frames, {count}")
    count = min(count, total)
    return sorted({int((part + 0.5) * total / count) for part in range(count)})


def read_video_frames(
    path: Path, count: int, size: tuple[int, int] | None = WORKING_SIZE
) -> Frames:
    """`count` frames spread evenly over a video file, RGB, cropped and resized to `size`
    (None: as they are). No labels."""
    total = _count_frames(path)
    wanted = set(video_frame_indices(total, count))
    indices, images = [], []
    capture = cv2.VideoCapture(str(path))
    try:
        for index in range(total):
            if not capture.grab():
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise OSError(f"cannot decode frame {index} of {path}")
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                images.append(crop_resize(rgb, size) if size is not None else rgb)
                indices.append(index)
    finally:
        capture.release()
    names = [f"{Path(path).name}#{index}" for index in indices]
    return Frames(names, np.stack(images), None)


def _count_frames(path: Path) -> int:
    """Frames a video file really decodes to (the container's count can be off)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    total = 0
    try:
        while capture.grab():
            total += 1
    finally:
        capture.release()
    if total == 0:
        raise FileNotFoundError(f"no frames could be read from {path}")
    return total


def read_sources(
    sources: Sequence[Path],
    labels_dir: Path | None = None,
    limit: int | None = None,
    stride: int = 1,
    video_frames: int = 24,
    size: tuple[int, int] | None = WORKING_SIZE,
) -> Frames:
    """Frames from several sources, in order: PNG directories (with `labels_dir` when there is
    exactly one source) and video files (`video_frames` each). All frames must share one size."""
    if not sources:
        raise ValueError("no frame sources given")
    if labels_dir is not None and len(sources) != 1:
        raise ValueError("labels can be given for a single directory source only")
    parts = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            parts.append(read_frames(source, labels_dir, limit, stride))
        elif source.is_file():
            parts.append(read_video_frames(source, video_frames, size))
        else:
            raise FileNotFoundError(f"frame source not found: {source}")
    shapes = {part.images.shape[1:] for part in parts}
    if len(shapes) != 1:
        raise ValueError(f"frame sources differ in size: {sorted(shapes)}")
    if len(parts) == 1:
        return parts[0]
    return Frames(
        [name for part in parts for name in part.names],
        np.concatenate([part.images for part in parts]),
        None,
    )
