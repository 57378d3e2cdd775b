"""QP maps: one quantizer offset per 16x16 H.264 macroblock, and the level-bank form they travel in.

A map has ceil(H/16) x ceil(W/16) int8 offsets (partial macroblocks at the right and bottom
count), each an absolute QP delta added to the frame QP that rate control picks. H.264's 8-bit
QP range is 0..51, so no offset beyond +-51 can mean anything. The edge picks each macroblock's
offset from a small bank of levels prepared offline, so a map is sent as level indices plus the
bank and a uniform budget shift (`QPLevelMap`; bytes on the wire: `stac_codec.qp_map_wire`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MACROBLOCK_SIZE = 16
MAX_ABS_QP_OFFSET = 51  # H.264 8-bit QP range is 0..51
MAX_LEVELS = 256


def macroblock_grid(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of 16x16 macroblocks covering a width x height picture (partial ones count)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"picture size must be positive, got {width}x{height}")
    return math.ceil(height / MACROBLOCK_SIZE), math.ceil(width / MACROBLOCK_SIZE)


def validate_qp_map(qp_map: object, grid: tuple[int, int]) -> np.ndarray:
    """Check a QP offset map from the network: int8, shape (rows, cols), |offset| <= 51."""
    if not isinstance(qp_map, np.ndarray):
        raise ValueError(f"QP map must be a numpy array, got {type(qp_map).__name__}")
    if qp_map.dtype != np.int8:
        raise ValueError(f"QP map must have dtype int8, got {qp_map.dtype}")
    if qp_map.shape != grid:
        raise ValueError(f"QP map shape {qp_map.shape} does not match the macroblock grid {grid}")
    if qp_map.size and int(np.abs(qp_map.astype(np.int16)).max()) > MAX_ABS_QP_OFFSET:
        raise ValueError(f"QP map offsets must lie in [-{MAX_ABS_QP_OFFSET}, {MAX_ABS_QP_OFFSET}]")
    return qp_map


def check_level_bank(levels_qp: tuple[int, ...]) -> None:
    """A bank is 2..256 strictly increasing integer offsets within +-51; ValueError otherwise."""
    if not 2 <= len(levels_qp) <= MAX_LEVELS:
        raise ValueError(f"the level bank needs 2..{MAX_LEVELS} levels, got {len(levels_qp)}")
    if any(int(v) != v or abs(v) > MAX_ABS_QP_OFFSET for v in levels_qp):
        raise ValueError(f"levels must be integers in [-51, 51], got {levels_qp}")
    if any(b <= a for a, b in zip(levels_qp, levels_qp[1:], strict=False)):
        raise ValueError(f"levels must be strictly increasing, got {levels_qp}")


@dataclass(frozen=True)
class QPLevelMap:
    """A QP map in the form the edge sends: level indices into a bank, plus a uniform shift.

    level_indices: uint8 (rows, cols); levels_qp: the bank; budget_shift_qp: added to all.
    """

    level_indices: np.ndarray
    levels_qp: tuple[int, ...]
    budget_shift_qp: int = 0

    def __post_init__(self) -> None:
        check_level_bank(self.levels_qp)
        if self.level_indices.ndim != 2 or self.level_indices.dtype != np.uint8:
            raise ValueError("level_indices must be a 2-D uint8 array (rows, cols)")
        if self.level_indices.size and int(self.level_indices.max()) >= len(self.levels_qp):
            raise ValueError("a level index points past the end of the level bank")
        if abs(self.budget_shift_qp) > MAX_ABS_QP_OFFSET:
            raise ValueError(f"|budget_shift_qp| must be <= {MAX_ABS_QP_OFFSET}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.level_indices.shape

    @property
    def offsets_qp(self) -> np.ndarray:
        """The per-macroblock QP offsets, int8 (rows, cols), shift included."""
        bank = np.asarray(self.levels_qp, dtype=np.int16) + self.budget_shift_qp
        clipped = np.clip(bank[self.level_indices], -MAX_ABS_QP_OFFSET, MAX_ABS_QP_OFFSET)
        return clipped.astype(np.int8)
