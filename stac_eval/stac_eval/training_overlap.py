"""Refuse calibration frames that the model was trained on or that results are reported on.

The offline settings must be chosen on frames that are neither in the model's training set
(the model has fitted them: its gradients there are not what it shows on new frames, and a
search on them picked settings that did not transfer) nor in a set the benchmark reports on.
A model trained by `stac-train` leaves `<weights>.metrics.json` beside its weights, naming its
data directory: `train/` there is the training set, `val/` the set its accuracy (and the
spatial benchmark) is reported on. Each frame is compared by a thumbnail (32x24 grey, area
averaged), so a re-encoded or resized copy of a frame is caught as well as an exact one.
Without that file the check cannot tell, and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_training.camvid import read_image_rgb, shared_data_dir

THUMBNAIL_SIZE = (32, 24)
# Mean absolute difference (0..255 grey levels) under which two thumbnails are the same frame.
# Measured: consecutive CamVid train frames differ by a median 20 (a few, from a standing car,
# by under 2), every val frame by at least 18 from every train frame, and a JPEG-75 + resize
# round trip of one frame by 0.2.
SAME_FRAME_MAD = 2.0
SPLITS = {"train": "the model's training set", "val": "the set results are reported on"}


class TrainingOverlapError(ValueError):
    """Calibration frames that are in the model's training set or in the reported set."""


@dataclass(frozen=True)
class OverlapReport:
    """What the check knew and found (stored in the calibration's provenance)."""

    checked_against: dict[str, str]  # split -> directory
    overlapping: dict[str, list[str]]  # split -> names of calibration frames found in it
    note: str

    def as_json(self) -> dict:
        return {
            "checked_against": self.checked_against,
            "overlapping": self.overlapping,
            "note": self.note,
        }


def thumbnail(frame_rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)


def model_split_dirs(weights: Path) -> dict[str, Path]:
    """The model's training and reporting frame directories named by its training report, as
    far as they exist here ({} when there is no report or no directory can be found)."""
    metrics = Path(weights).with_suffix(".metrics.json")
    if not metrics.is_file():
        return {}
    try:
        data_dir = json.loads(metrics.read_text())["args"]["data_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    found = {}
    for split in SPLITS:
        for root in _candidate_roots(Path(data_dir), Path(weights)):
            if (root / split).is_dir():
                found[split] = (root / split).resolve()
                break
    return found


def _candidate_roots(data_dir: Path, weights: Path) -> list[Path]:
    if data_dir.is_absolute():
        return [data_dir]
    # Relative to wherever stac-train ran: here, or an ancestor of the weights (the repository).
    roots = [Path.cwd() / data_dir, *(parent / data_dir for parent in weights.resolve().parents)]
    return [*roots, shared_data_dir() / data_dir.name]


def check_frames(
    names: list[str], images: np.ndarray, weights: Path, allow: bool = False
) -> OverlapReport:
    """Raise TrainingOverlapError if any frame is in the model's training or reported set
    (unless `allow`, which only records the overlap)."""
    split_dirs = model_split_dirs(weights)
    if not split_dirs:
        return OverlapReport({}, {}, f"no training report beside {weights}: cannot tell")
    ours = np.stack([thumbnail(image) for image in images])
    overlapping = {}
    for split, directory in split_dirs.items():
        theirs = np.stack([thumbnail(read_image_rgb(p)) for p in sorted(directory.glob("*.png"))])
        distance = np.abs(ours[:, None] - theirs[None]).mean(axis=(2, 3))
        hits = [
            name for name, row in zip(names, distance, strict=True) if row.min() < SAME_FRAME_MAD
        ]
        if hits:
            overlapping[split] = hits
    report = OverlapReport(
        {split: str(path) for split, path in split_dirs.items()},
        overlapping,
        "overlap allowed by the caller" if overlapping and allow else "ok",
    )
    if overlapping and not allow:
        details = "; ".join(
            f"{len(hits)} in {SPLITS[split]} ({split_dirs[split]}), e.g. {hits[0]}"
            for split, hits in overlapping.items()
        )
        raise TrainingOverlapError(
            f"calibration frames overlap: {details}. Choose the settings on frames the model "
            "never saw and nothing is reported on (e.g. video clips with pseudo labels)."
        )
    return report
