"""The pseudo ground truth (the model on every raw frame), computed once and cached.

It is expensive and must be the same in every run over the same input (the replay is
deterministic), so it is kept on disk: one class-id PNG per frame under
`<cache>/truth/<model>-<source>/`, plus an index (frame count, recorded offsets, frame size)
rewritten after every batch, so an interrupted computation resumes where it stopped. Keyed by
the model (weights digest and configuration) and the source's bytes (and bag topic). The edge's
compute times are `edge_profile`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from stac_edge_segmenter.loading import SegmentationModel
from stac_eval.replay.source import ReplaySource

TRUTH_FORMAT = "stac-replay-truth-v1"
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stac-replay"


def model_digest(model: SegmentationModel) -> str:
    """sha256 of the network as loaded (every tensor of its state, so a change in how the
    weights file is turned into a network, such as folded BatchNorm, counts) and of the
    configuration that shapes the output."""
    digest = hashlib.sha256()
    for name, tensor in model.network.state_dict().items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    spec = model.spec
    config = [spec.kind, spec.classes, spec.mean, spec.std, spec.input_size, spec.architecture]
    digest.update(json.dumps([config, spec.options], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def encode_mask(mask: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", mask, PNG_FAST)
    if not ok:
        raise RuntimeError("cv2.imencode failed on a mask")
    return data.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise RuntimeError("a cached mask does not decode")
    return mask


@dataclass(frozen=True)
class TruthIndex:
    """What the cache holds: frames 0..count-1, their offsets, whether the source ended."""

    format: str
    count: int
    offsets_s: list[float]
    width: int
    height: int
    complete: bool


class PseudoTruth:
    """The model's class ids on every raw frame of a source, computed once and cached."""

    def __init__(
        self,
        cache_dir: Path,
        model: SegmentationModel,
        model_key: str,
        source: ReplaySource,
        batch_size: int = 4,
    ) -> None:
        topic = hashlib.sha256(source.topic.encode()).hexdigest()[:8]
        self.directory = cache_dir / "truth" / f"{model_key[:16]}-{source.digest[:16]}-{topic}"
        self.model = model
        self.source = source
        self.batch_size = batch_size
        self.index = self._read_index()

    def _read_index(self) -> TruthIndex | None:
        path = self.directory / "index.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("format") != TRUTH_FORMAT:
            return None
        return TruthIndex(**data)

    def _write_index(self, index: TruthIndex) -> None:
        write_atomically(self.directory / "index.json", json.dumps(asdict(index)).encode())
        self.index = index

    def ensure(self, max_frames: int, progress=None) -> TruthIndex:
        """Compute what is missing for the first `max_frames` frames (0 = all)."""
        index = self.index
        have = index.count if index else 0
        if index and (index.complete or (max_frames and have >= max_frames)):
            return index
        self.directory.mkdir(parents=True, exist_ok=True)
        offsets = list(index.offsets_s) if index else []
        size = (index.width, index.height) if index else (0, 0)
        batch: list[tuple[int, np.ndarray]] = []
        complete = True
        for frame in self.source.frames(max_frames):
            if frame.index < have:
                continue
            size = (frame.image.shape[1], frame.image.shape[0])
            offsets.append(float(frame.offset_s))
            batch.append((frame.index, frame.image))
            if len(batch) == self.batch_size:
                self._flush(batch, offsets, size, progress)
                batch = []
        else:
            complete = not max_frames or len(offsets) < max_frames
        self._flush(batch, offsets, size, progress, complete)
        if not self.index or self.index.count == 0:
            raise RuntimeError(f"no frames could be read from {self.source.uri}")
        return self.index

    def _flush(self, batch, offsets, size, progress, complete: bool = False) -> None:
        if batch:
            images = np.stack([image for _, image in batch])
            masks = self.model.predict(
                images, batch_size=self.batch_size, with_probabilities=False
            ).class_ids
            for (index, _), mask in zip(batch, masks, strict=True):
                write_atomically(self.directory / f"{index:06d}.png", encode_mask(mask))
            if progress is not None:
                progress.update(len(batch))
        count = batch[-1][0] + 1 if batch else (self.index.count if self.index else 0)
        self._write_index(
            TruthIndex(TRUTH_FORMAT, count, offsets[:count], size[0], size[1], complete)
        )

    def mask(self, index: int) -> np.ndarray:
        return decode_mask((self.directory / f"{index:06d}.png").read_bytes())


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all, also when other runs sharing the cache write the
    same file at the same time (each through its own temporary file, then a rename)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
