"""Baselines STAC is measured against that are not plain encoder settings.

- JPEG per frame: what ROS 2's compressed_image_transport sends (OpenCV's libjpeg encoder).
- AccMPEG-style two-level map: the top fraction of macroblocks by sensitivity at a fine QP
  offset, the rest at a coarse one (AccMPEG marks "quality-sensitive" macroblocks and codes
  them at high quality, everything else at low quality).
"""

from __future__ import annotations

import cv2
import numpy as np

from stac_codec.qp_map import QPLevelMap


class JpegError(RuntimeError):
    """OpenCV failed to encode or decode a JPEG."""


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """Code an HxWx3 uint8 RGB frame as JPEG at quality 1..100; returns (decoded RGB, bytes)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {rgb.shape} {rgb.dtype}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise JpegError(f"cv2.imencode failed at quality {quality}")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if decoded is None:
        raise JpegError("cv2.imdecode could not read back its own JPEG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), int(encoded.size)


def two_level_allocation(
    sensitivity: np.ndarray,
    top_fraction: float,
    fine_offset_qp: int = -6,
    coarse_offset_qp: int = 6,
) -> QPLevelMap:
    """The most sensitive top_fraction of macroblocks at fine_offset_qp, the rest coarse.

    Returned as a two-level QPLevelMap (level 0 fine, level 1 coarse), so its feedback cost is
    measured with the same wire form as STAC's map.
    """
    if sensitivity.ndim != 2 or sensitivity.size == 0:
        raise ValueError(f"sensitivity must be a non-empty (rows, cols) array, {sensitivity.shape}")
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    if fine_offset_qp >= coarse_offset_qp:
        raise ValueError(f"fine offset {fine_offset_qp} must be below coarse {coarse_offset_qp}")
    count = round(top_fraction * sensitivity.size)
    order = np.argsort(-sensitivity.reshape(-1), kind="stable")
    indices = np.ones(sensitivity.size, dtype=np.uint8)
    indices[order[:count]] = 0
    return QPLevelMap(
        level_indices=indices.reshape(sensitivity.shape),
        levels_qp=(fine_offset_qp, coarse_offset_qp),
    )
