"""Aggregation of per-pixel input gradients into one sensitivity per 16x16 H.264 macroblock.

Why the L1 norm: a quantization error e changes the DNN's loss by about sum(g * e) (first
order). H.264 applies one quantizer step q to a whole macroblock and |e| <= q / 2, so the
worst-case loss increase the macroblock can cause is (q / 2) * sum(|g|) over its pixels and
colour channels. That sum, the L1 norm of the gradient inside the macroblock, is exactly the
factor the allocation rule (allocation.py) needs; the feasibility experiment found L2 no better.

Why zero padding: frames whose size is not a multiple of 16 (CamVid's 360 rows) leave a row of
partial macroblocks. The encoder pads them internally and crops the padding on decode, so the
padded pixels never reach the DNN: their gradient is exactly zero. A partial macroblock thus
counts only its real pixels, which is what its share of the loss bound is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional

from stac_codec.qp_map import MACROBLOCK_SIZE, macroblock_grid


def macroblock_l1(gradient: torch.Tensor) -> torch.Tensor:
    """Sum of |gradient| over channels and each 16x16 macroblock: (N, C, H, W) -> (N, rows, cols).

    Partial macroblocks at the right and bottom edges are zero-padded (see the module docstring).
    """
    if gradient.ndim != 4:
        raise ValueError(f"gradient must be (N, C, H, W), got shape {tuple(gradient.shape)}")
    batch, _, height, width = gradient.shape
    rows, cols = macroblock_grid(width, height)
    per_pixel = gradient.abs().sum(dim=1)
    padded = functional.pad(
        per_pixel, (0, cols * MACROBLOCK_SIZE - width, 0, rows * MACROBLOCK_SIZE - height)
    )
    blocks = padded.reshape(batch, rows, MACROBLOCK_SIZE, cols, MACROBLOCK_SIZE)
    return blocks.sum(dim=(2, 4))
