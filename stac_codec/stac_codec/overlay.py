"""Colour overlays of segmentation masks for rviz and videos: the edge's (the model's palette)
and the robot's (its own palette: it knows class ids, not the model's colours)."""

from __future__ import annotations

import cv2
import numpy as np


def mask_overlay(image: np.ndarray, class_ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5):
    """Blend the class colours over an HxWx3 uint8 RGB image (alpha = weight of the colours).

    np.take and cv2.addWeighted (rounding to nearest, ties to even): about 4 ms per 960x540
    frame, where fancy indexing and float32 numpy take about 21 (it runs for every frame the
    edge segments and every frame the robot masks)."""
    if image.shape[:2] != class_ids.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {class_ids.shape} sizes differ")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if class_ids.size and int(class_ids.max()) >= len(palette):
        raise ValueError(f"class id {int(class_ids.max())} has no colour in the palette")
    colours = np.take(np.asarray(palette, np.uint8), class_ids, axis=0)
    return cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
