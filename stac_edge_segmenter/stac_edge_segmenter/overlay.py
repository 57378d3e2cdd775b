"""Colour overlays of segmentation masks for rviz and videos."""

from __future__ import annotations

import numpy as np


def mask_overlay(image: np.ndarray, class_ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """Blend the class colours over an HxWx3 uint8 RGB image (alpha = weight of the colours)."""
    if image.shape[:2] != class_ids.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {class_ids.shape} sizes differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if class_ids.size and int(class_ids.max()) >= len(palette):
        raise ValueError(f"class id {int(class_ids.max())} has no colour in the palette")
    colours = palette[class_ids].astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
