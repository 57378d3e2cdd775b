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

import cv2
import numpy as np
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


def macroblock_ac_energy(frame_rgb: np.ndarray) -> np.ndarray:
    """x264's AC energy per 16x16 macroblock of an HxWx3 uint8 RGB frame: float64 (rows, cols).

    The same measure x264's variance AQ uses (ac_energy_mb): for the luma 16x16 block and the
    two 8x8 chroma blocks of the I420 picture, sum(x^2) - sum(x)^2 / n, added up. Edge pixels
    of partial macroblocks are replicated, as the encoder pads them.
    """
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame_rgb.shape}")
    height, width = frame_rgb.shape[:2]
    even_height, even_width = height + height % 2, width + width % 2
    if (even_height, even_width) != (height, width):
        frame_rgb = cv2.copyMakeBorder(
            frame_rgb, 0, even_height - height, 0, even_width - width, cv2.BORDER_REPLICATE
        )
    planes = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2YUV_I420)
    luma = planes[:even_height]
    chroma = planes[even_height:].reshape(2, even_height // 2, even_width // 2)
    rows, cols = macroblock_grid(width, height)
    energy = _block_ac_energy(luma, rows, cols, MACROBLOCK_SIZE)
    for plane in chroma:
        energy += _block_ac_energy(plane, rows, cols, MACROBLOCK_SIZE // 2)
    return energy


def macroblock_residual_energy(frame_rgb: np.ndarray, reference_rgb: np.ndarray) -> np.ndarray:
    """AC energy per macroblock of what a P-frame pays: the frame minus the reference picture
    moved along the optical flow from the frame to it (float64 (rows, cols), x264's units).

    An I-frame's macroblock costs about its own AC energy; a P-frame's costs its residual
    after motion compensation, which is small wherever the previous picture, moved, already
    explains the content (a textured wall the camera glides past) and large where it does not
    (new content, non-rigid motion, occlusions). The rate term of the allocation measures the
    wrong thing when a map that steers P-frames takes it from the frame alone: on the dashcam
    clip in stream mode that cost 8 BD-rate points. DIS flow at its ultrafast preset, per pixel
    on the luma, stands in for x264's block motion search (a few ms at 960x540); the residual
    is offset to mid-grey and clipped to 8 bits, which only touches differences beyond +-127.
    """
    if frame_rgb.shape != reference_rgb.shape or reference_rgb.dtype != np.uint8:
        raise ValueError(
            f"reference {reference_rgb.shape} {reference_rgb.dtype} does not match the frame "
            f"{frame_rgb.shape}"
        )
    luma = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    reference_luma = cv2.cvtColor(reference_rgb, cv2.COLOR_RGB2GRAY)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(
        luma, reference_luma, None
    )
    height, width = luma.shape
    columns, rows = np.meshgrid(
        np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    )
    moved = cv2.remap(
        reference_rgb,
        columns + flow[..., 0],
        rows + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    residual = frame_rgb.astype(np.int16) - moved.astype(np.int16) + 128
    return macroblock_ac_energy(np.clip(residual, 0, 255).astype(np.uint8))


def _block_ac_energy(plane: np.ndarray, rows: int, cols: int, block: int) -> np.ndarray:
    padded = np.pad(
        plane.astype(np.float64),
        ((0, rows * block - plane.shape[0]), (0, cols * block - plane.shape[1])),
        mode="edge",
    )
    tiles = padded.reshape(rows, block, cols, block)
    total = tiles.sum(axis=(1, 3))
    return (tiles * tiles).sum(axis=(1, 3)) - total * total / (block * block)
