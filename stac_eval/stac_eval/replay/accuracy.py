"""What the replay scores: the model on decoded frames, and the robot's mask of every frame.

Two accuracies, both as per-frame K x (K+1) confusion matrices (stac_edge_segmenter.metrics:
the last column counts pixels without a mask) against the pseudo ground truth (the model on
the raw frame) and, where the source has them, human labels:

- decoded: the model on each decoded frame (compression alone), every `decoded_stride`-th
  frame the edge decoded, whether or not its worker segmented it;
- timely: the mask the robot holds at the frame's capture time, warped (this suite's robot,
  `RobotLoop`'s mask propagation) and held (the newest mask as it came, what a user of
  today's transports has). Before the first mask every pixel counts as missed.

`DecodedMasks` runs the model on decoded pictures in batches, each picture at most once per
run, and keeps what it computed in an on-disk cache keyed by the model and the picture's bytes:
runs that decode the same pictures (the same stream under another edge profile, a rerun after
a robot-side change) take the masks from there. Same model, same bytes, same class ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stac_edge_segmenter.loading import SegmentationModel
from stac_edge_segmenter.metrics import mask_confusion
from stac_eval.replay.truth import decode_mask, encode_mask, write_atomically

KINDS = ("decoded", "timely", "timely_held")


class Scorer:
    """Per-frame confusions of one run, by kind ('decoded_pseudo', 'timely_human', ...), for
    camera frames numbered by their position in the run; `truth_index[position]` names the
    source frame whose truth and label apply (the same frame, unless a run replays frames)."""

    def __init__(self, truth, labels: dict | None, num_classes: int) -> None:
        self.truth = truth
        self.labels = labels or {}
        self.num_classes = num_classes
        self.sources = ["pseudo"] + (["human"] if self.labels else [])
        self._rows: dict[str, dict[int, np.ndarray]] = {
            f"{kind}_{source}": {} for kind in KINDS for source in self.sources
        }
        self._truth_cache: tuple[int, np.ndarray] | None = None
        self.truth_index: list[int] = []

    def _truth(self, index: int) -> np.ndarray:
        if self._truth_cache is None or self._truth_cache[0] != index:
            self._truth_cache = (index, self.truth.mask(index))
        return self._truth_cache[1]

    def score(self, kind: str, position: int, prediction: np.ndarray | None) -> None:
        """Score `prediction` (HxW class ids, None: no mask) for camera frame `position`."""
        classes = self.num_classes
        source = self.truth_index[position]
        self._rows[f"{kind}_pseudo"][position] = mask_confusion(
            self._truth(source), prediction, classes
        )
        if source in self.labels:
            self._rows[f"{kind}_human"][position] = mask_confusion(
                self.labels[source], prediction, classes
            )

    def is_scored(self, kind: str, position: int) -> bool:
        return position in self._rows[f"{kind}_pseudo"]

    def arrays(self, frames: int) -> dict[str, np.ndarray]:
        """(frames, K, K+1) per kind, zeros where a frame was not scored."""
        classes = self.num_classes
        result = {}
        for name, rows in self._rows.items():
            array = np.zeros((frames, classes, classes + 1), dtype=np.int32)
            for index, matrix in rows.items():
                array[index] = matrix
            result[name] = array
        return result


class DecodedMasks:
    """The model's class ids of decoded pictures, batched, cached on disk by content.

    `add` queues a picture; a full batch (or `get` of a queued one) runs the model; every mask
    is handed to `on_mask` once, as it is computed, and kept until `release`."""

    def __init__(
        self,
        model: SegmentationModel,
        batch_size: int = 1,
        cache_dir: Path | None = None,
        on_mask: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self.model = model
        self.batch_size = max(1, batch_size)
        self.cache_dir = cache_dir
        self.on_mask = on_mask
        self._queued: list[tuple[int, np.ndarray]] = []
        self._masks: dict[int, np.ndarray] = {}
        self.computed = 0
        self.from_cache = 0

    def add(self, index: int, image: np.ndarray) -> None:
        if index in self._masks or any(i == index for i, _ in self._queued):
            return
        cached = self._load(image)
        if cached is not None:
            self.from_cache += 1
            self._adopt(index, cached)
            return
        self._queued.append((index, image))
        if len(self._queued) >= self.batch_size:
            self.flush()

    def get(self, index: int) -> np.ndarray:
        if index not in self._masks:
            self.flush()
        return self._masks[index]

    def release(self, keep: Callable[[int], bool]) -> None:
        """Forget the masks whose frame `keep` says will not be needed again."""
        for index in [i for i in self._masks if not keep(i)]:
            del self._masks[index]

    def flush(self) -> None:
        if not self._queued:
            return
        batch, self._queued = self._queued, []
        images = np.stack([image for _, image in batch])
        masks = self.model.predict(
            images, batch_size=self.batch_size, with_probabilities=False
        ).class_ids
        for (index, image), mask in zip(batch, masks, strict=True):
            self.computed += 1
            self._store(image, mask)
            self._adopt(index, mask)

    def _adopt(self, index: int, mask: np.ndarray) -> None:
        self._masks[index] = mask
        if self.on_mask is not None:
            self.on_mask(index, mask)

    def _path(self, image: np.ndarray) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(np.ascontiguousarray(image).data)
        digest.update(repr(image.shape).encode())
        name = digest.hexdigest()
        return self.cache_dir / name[:2] / f"{name}.png"

    def _load(self, image: np.ndarray) -> np.ndarray | None:
        path = self._path(image)
        if path is None or not path.is_file():
            return None
        try:
            return decode_mask(path.read_bytes())
        except (OSError, RuntimeError):
            return None

    def _store(self, image: np.ndarray, mask: np.ndarray) -> None:
        path = self._path(image)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, encode_mask(mask))
