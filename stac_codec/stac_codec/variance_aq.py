"""x264's variance adaptive quantization (aq-mode 1), computed outside x264.

x264 fixes its AQ strength when the encoder opens; changing it means a new encoder and an IDR
picture. Computed here instead, the same per-macroblock offsets can take a different strength
on every frame and travel to x264 with the QP map's (x264 adds `quant_offsets` to its own AQ
offsets, which at the offsets-only strength 0.001 are negligible).

The formula is x264's (encoder/ratecontrol.c, `x264_adaptive_quant_frame`, aq-mode 1, 8 bit):
offset = 1.0397 * strength * (log2(max(energy, 1)) - 14.427), energy the macroblock's AC
energy: for each plane, the sum of squared pixels minus the squared sum over the block's pixel
count (integer division), luma 16x16 plus both 8x8 chroma blocks of 4:2:0. x264 takes log2
from a 7-bit table, a difference below 0.01 QP. Pictures are padded to whole macroblocks by
repeating the last row and column, as x264 pads them.
"""

from __future__ import annotations

import cv2
import numpy as np

from stac_codec.qp_map import MACROBLOCK_SIZE, macroblock_grid

STRENGTH_SCALE = 1.0397  # x264: "constants chosen to result in approximately the same
ENERGY_CENTRE_LOG2 = 14.427  # overall bitrate as without AQ"


def variance_aq_offsets(i420: np.ndarray, width: int, height: int, strength: float) -> np.ndarray:
    """float32 (rows, cols) QP offsets of x264's variance AQ at `strength` for a planar I420
    picture of width x height (even), as x264 would add them to the frame's QP."""
    if width % 2 or height % 2:
        raise ValueError(f"I420 needs an even size, got {width}x{height}")
    chroma_size = (width // 2) * (height // 2)
    if i420.dtype != np.uint8 or i420.size != width * height + 2 * chroma_size:
        raise ValueError(f"not a {width}x{height} uint8 I420 picture: {i420.dtype} {i420.size}")
    rows, cols = macroblock_grid(width, height)
    flat = i420.reshape(-1)
    luma = flat[: width * height].reshape(height, width)
    energy = _block_energy(luma, MACROBLOCK_SIZE, rows, cols)
    for plane in range(2):
        start = width * height + plane * chroma_size
        chroma = flat[start : start + chroma_size].reshape(height // 2, width // 2)
        energy += _block_energy(chroma, MACROBLOCK_SIZE // 2, rows, cols)
    log2_energy = np.log2(np.maximum(energy, 1).astype(np.float64))
    return (STRENGTH_SCALE * strength * (log2_energy - ENERGY_CENTRE_LOG2)).astype(np.float32)


def _block_energy(plane: np.ndarray, block: int, rows: int, cols: int) -> np.ndarray:
    """Per block of block x block pixels: sum(x^2) - sum(x)^2 // block^2 (int64), from the
    plane's integral images (exact: int32 sums, float64 sums of squares far below 2^53): a
    quarter of the time of summing the blocks in numpy (0.9 against 3.4 ms for a 960x540 luma
    plane), which the robot pays on every frame."""
    pad_rows, pad_cols = rows * block - plane.shape[0], cols * block - plane.shape[1]
    if pad_rows or pad_cols:
        plane = cv2.copyMakeBorder(plane, 0, pad_rows, 0, pad_cols, cv2.BORDER_REPLICATE)
    sums, squares = cv2.integral2(
        np.ascontiguousarray(plane), sdepth=cv2.CV_32S, sqdepth=cv2.CV_64F
    )
    corners = (slice(0, None, block), slice(0, None, block))
    block_sums = _block_totals(sums[corners].astype(np.int64))
    block_squares = _block_totals(squares[corners].astype(np.int64))
    return block_squares - (block_sums * block_sums) // (block * block)


def _block_totals(corners: np.ndarray) -> np.ndarray:
    """Each block's total from an integral image sampled at the blocks' corners."""
    return corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
