"""Checked ONNX graphs kept on disk, so that an edge that restarts skips the export and checks.

Building an ONNX Runtime engine at start (export, cut, torch's check frames, and for int8 the
quantization and its check) took 11 s (fp32) and 16 s (int8) on a 2-core VM under load: for a
restarted edge that is most of its outage. A cache entry holds the graph that passed its checks
and the masks it gave on `check_batches`; it is found again only by a key over everything the
graph depends on (the weights' and int8 ranges' bytes, the model configuration, the torch, onnx
and onnxruntime versions, the device type and this package's engine code), and it is used only
if a new session of it still gives those masks. Anything else (no entry, an unreadable or
foreign file, a session that fails, other masks) is a miss: the engine is built as without a
cache and the entry written again. The cache never stops an engine from being built: a
directory that cannot be written is only a cache that does not keep anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from stac_edge_segmenter import engines, loading
from stac_edge_segmenter.loading import SegmentationModel

DEFAULT_ENGINE_CACHE_DIR = "~/.cache/stac/engines"  # the nodes' engine_cache_dir
CACHE_FORMAT = 1  # bump when an entry's layout changes
KEPT_ENTRIES = 8  # the most recently used entries kept per directory; older ones are removed
ENTRY_SUFFIX = ".stac_engine.npz"
# A cached graph's masks on the check batches must match those stored with it this closely
# (the same graph on the same library versions; thread counts may flip a float near-tie).
MIN_CACHED_AGREEMENT = 0.999
_NOT_KEYED = ("weights", "palette")  # ModelSpec fields that do not change a graph


@dataclass(frozen=True)
class CachedGraph:
    """A graph that passed its checks when it was built, and what it gave on them."""

    graph: bytes
    cut_at_low_res: bool  # the graph ends at the low-resolution logits (else at class ids)
    full_graph_reason: str | None
    check_masks: list[np.ndarray]  # its masks on engines.check_batches(model), in order


def cache_key(model: SegmentationModel, engine_name: str) -> str:
    """A hex digest over everything an engine's graph depends on."""
    digest = hashlib.sha256()

    def add(label: str, value: bytes) -> None:
        digest.update(f"{label}:{len(value)}:".encode())
        digest.update(value)

    add("format", str(CACHE_FORMAT).encode())
    add("engine", engine_name.encode())
    add("device", model.device.type.encode())
    add("spec", _spec_text(model.spec).encode())
    add("weights", _file_bytes(model.spec.weights))
    if engine_name == "onnxruntime_int8":
        add("ranges", _file_bytes(engines.int8_ranges_path(model)))
    for package in ("torch", "onnx", "onnxruntime"):
        add(package, _version(package).encode())
    for module in (engines, loading):  # the code that builds the model and its graph
        add(module.__name__, _file_bytes(Path(module.__file__)))
    return digest.hexdigest()


def _spec_text(spec: loading.ModelSpec) -> str:
    """The configuration that shapes the graph (the weights count by content, not by path)."""
    fields = {name: value for name, value in vars(spec).items() if name not in _NOT_KEYED}
    return json.dumps(fields, sort_keys=True, default=str)


def _file_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b"<missing>"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "<none>"


class EngineCache:
    """Checked graphs in `directory`, one file per key (`<key>.stac_engine.npz`)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def engine(
        self, model: SegmentationModel, name: str, threads: int = 0
    ) -> engines.OnnxRuntimeEngine | None:
        """A session of the checked graph cached for (`model`, engine `name`), if there is one
        and it still gives its stored masks; else None (the caller builds the engine)."""
        cached = self.load(cache_key(model, name))
        if cached is None:
            return None
        try:
            session = engines.create_session(cached.graph, model.device, threads)
        except engines.EngineError:
            return None
        chain_for = model.logit_chain if cached.cut_at_low_res else None
        engine = engines.OnnxRuntimeEngine(
            name, session, chain_for, cached.full_graph_reason, from_cache=True
        )
        if not masks_match(engine, engines.check_batches(model), cached.check_masks):
            return None
        return engine

    def keep(
        self, model: SegmentationModel, graph: bytes, engine: engines.OnnxRuntimeEngine
    ) -> bool:
        """Store `engine` (built from `graph`, checked) with its masks on the check batches;
        False where it could not be written."""
        masks = [engine.segment_batch(batch) for batch in engines.check_batches(model)]
        cut = engine.chain_for is not None
        cached = CachedGraph(graph, cut, engine.full_graph_reason, masks)
        return self.store(cache_key(model, engine.name), cached)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{ENTRY_SUFFIX}"

    def load(self, key: str) -> CachedGraph | None:
        """The entry under `key`, or None where there is none or it cannot be read."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as entry:
                meta = json.loads(bytes(entry["meta"]).decode())
                if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                    return None
                masks = [entry[f"mask_{index}"] for index in range(int(meta["masks"]))]
                cached = CachedGraph(
                    bytes(entry["graph"]),
                    bool(meta["cut_at_low_res"]),
                    meta["full_graph_reason"],
                    masks,
                )
            os.utime(path)  # recently used: kept by the pruning
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
            return None
        return cached

    def store(self, key: str, cached: CachedGraph) -> bool:
        """Write the entry (atomically: a reader sees the old file or the new one); False
        where the directory cannot be written."""
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "cut_at_low_res": cached.cut_at_low_res,
            "full_graph_reason": cached.full_graph_reason,
            "masks": len(cached.check_masks),
        }
        arrays = {f"mask_{index}": mask for index, mask in enumerate(cached.check_masks)}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                dir=self.directory, suffix=".tmp", delete=False
            ) as handle:
                np.savez(
                    handle,
                    graph=np.frombuffer(cached.graph, np.uint8),
                    meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                    **arrays,
                )
            os.replace(handle.name, self._path(key))
        except OSError:
            return False
        self._prune(self._path(key))
        return True

    def _prune(self, newest: Path) -> None:
        """Remove all but the KEPT_ENTRIES most recently used entries (never `newest`)."""
        others = [path for path in self.directory.glob(f"*{ENTRY_SUFFIX}") if path != newest]
        others.sort(key=_used_s, reverse=True)
        for stale in others[KEPT_ENTRIES - 1 :]:
            stale.unlink(missing_ok=True)


def _used_s(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process's pruning
        return 0.0


def masks_match(engine: engines.Engine, batches: Sequence[np.ndarray], masks: list) -> bool:
    """Whether `engine` still gives `masks` on `batches` (MIN_CACHED_AGREEMENT of the pixels)."""
    if len(masks) != len(batches):
        return False
    same = total = 0
    for batch, expected in zip(batches, masks, strict=True):
        try:
            got = engine.segment_batch(batch)
        except Exception:  # ORT's own exception types: the graph is not usable here
            return False
        if got.shape != expected.shape:
            return False
        same += int(np.count_nonzero(got == expected))
        total += got.size
    return total > 0 and same / total >= MIN_CACHED_AGREEMENT
