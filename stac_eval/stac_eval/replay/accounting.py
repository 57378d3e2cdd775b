"""Every camera frame's ledger: what it cost on the link both ways, what became of it.

Bytes are serialized messages (`wire`), charged to the camera frame they belong to:

- uplink: the frame's EncodedFrame (or CompressedImage) when it took the link (a message
  dropped at a full queue never did: 0; a lost one did);
- maps: QPMap messages the edge computed from this frame;
- masks: SegmentationMask messages of this frame sent back;
- requests: keyframe requests the edge sent when this frame showed a loss.

Downlink = maps + masks + requests; every message is counted when it is sent, lost or not.
`PointResult` holds the per-frame arrays of one run and saves / loads them (npz + json).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Per-frame status codes.
DECODED, LOST, DROPPED, UNDECODABLE, KEPT = 0, 1, 2, 3, 4
STATUS_NAMES = {
    DECODED: "decoded",
    LOST: "lost",
    DROPPED: "dropped",
    UNDECODABLE: "undecodable",
    KEPT: "kept_on_robot",  # keyframe mode: not sent, its mask carried from the last keyframe
}
DOWNLINK_PARTS = ("map_bytes", "mask_bytes", "request_bytes")


class FrameLedger:
    """Columns of per-frame values, one row per camera frame, appended as frames arrive."""

    COLUMNS = {
        "capture_s": np.float64,
        "encoded_s": np.float64,  # when the robot had encoded it and sent it (nan: not sent)
        "uplink_bytes": np.int64,
        "map_bytes": np.int64,
        "mask_bytes": np.int64,
        "request_bytes": np.int64,
        "status": np.int8,
        "queueing_s": np.float64,
        "segmented": bool,
        "mask_arrival_s": np.float64,  # when this frame's mask reached the robot (nan: never)
        "held_frame": np.int32,  # the frame whose mask the robot held as it came (-1: none)
        "mask_age": np.int32,  # age in frames of the robot's warped mask (-1: none)
        "crf": np.float64,
        "idr": bool,
    }

    def __init__(self) -> None:
        self._rows: dict[str, list] = {name: [] for name in self.COLUMNS}

    def __len__(self) -> int:
        return len(self._rows["capture_s"])

    def append(self, **values) -> int:
        """A new camera frame; columns not given take their empty value. Returns its index."""
        for name in self.COLUMNS:
            self._rows[name].append(values.pop(name, _EMPTY[name]))
        if values:
            raise KeyError(f"unknown ledger columns {sorted(values)}")
        return len(self) - 1

    def set(self, index: int, name: str, value) -> None:
        self._rows[name][index] = value

    def add(self, index: int, name: str, value) -> None:
        self._rows[name][index] += value

    def get(self, index: int, name: str):
        return self._rows[name][index]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: np.asarray(self._rows[name], dtype=kind) for name, kind in self.COLUMNS.items()
        }


_EMPTY = {
    "capture_s": math.nan,
    "encoded_s": math.nan,
    "uplink_bytes": 0,
    "map_bytes": 0,
    "mask_bytes": 0,
    "request_bytes": 0,
    "status": KEPT,
    "queueing_s": math.nan,
    "segmented": False,
    "mask_arrival_s": math.nan,
    "held_frame": -1,
    "mask_age": -1,
    "crf": math.nan,
    "idr": False,
}


@dataclass
class PointResult:
    """Per-frame arrays of one run (N camera frames: FrameLedger.COLUMNS), the confusions by
    kind (accuracy.Scorer), the counters, and the settings that set the point apart from the
    other points of its method (budget; for keyframe mode the staleness threshold too)."""

    method: str
    budget: float
    arrays: dict[str, np.ndarray]
    confusion: dict[str, np.ndarray]
    counters: dict
    point: dict

    def __getattr__(self, name: str):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def frames(self) -> int:
        return len(self.arrays["capture_s"])

    @property
    def sent(self) -> np.ndarray:
        """Frames the robot sent (whether or not the uplink's queue took them)."""
        return self.arrays["status"] != KEPT

    @property
    def downlink_bytes(self) -> np.ndarray:
        return sum(self.arrays[name] for name in DOWNLINK_PARTS)

    def bytes_per_frame(self, parts: tuple[str, ...]) -> np.ndarray:
        """Per-frame sum of the named byte columns."""
        return sum(self.arrays[name] for name in parts).astype(np.float64)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = dict(self.arrays)
        arrays.update({f"confusion_{k}": v for k, v in self.confusion.items()})
        np.savez_compressed(tmp, **arrays)
        meta = {
            "method": self.method,
            "budget": self.budget,
            "point": self.point,
            "counters": self.counters,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PointResult:
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as data:
            arrays = {name: data[name] for name in FrameLedger.COLUMNS}
            confusion = {
                k.removeprefix("confusion_"): data[k] for k in data if k.startswith("confusion_")
            }
        return cls(
            meta["method"], meta["budget"], arrays, confusion, meta["counters"], meta["point"]
        )
