"""Frames for offline work (calibration, benchmarks): a directory of PNGs and optional labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stac_edge_segmenter.camvid import read_image_rgb, read_label


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
