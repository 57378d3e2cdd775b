"""Intra-only coding of single frames for rate-accuracy experiments (calibration, benchmark).

Each frame gets a fresh encoder: x264's CRF drifts when one encoder codes a run of forced
keyframes (its rate-control state carries over from picture to picture), so only a fresh
encoder gives every method the same starting point. Only slice bytes count (no SPS, PPS or
x264's version SEI), and threads=1 keeps the bitstreams deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stac_codec.h264_decoder import H264Decoder
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH

# x264's default adaptive quantization (variance AQ, mode 1, strength 1).
X264_DEFAULT_AQ_STRENGTH = 1.0


class IntraCodingError(RuntimeError):
    """The encoder's own output did not decode: a broken codec set-up, never a data problem."""


@dataclass(frozen=True)
class CodedFrame:
    """A frame after the round trip through H.264: decoded pixels and slice bytes."""

    decoded_rgb: np.ndarray
    slice_bytes: int


def code_intra(
    frame_rgb: np.ndarray,
    crf: float,
    qp_offsets: np.ndarray | None = None,
    aq_strength: float = MAP_ONLY_AQ_STRENGTH,
    preset: str = "veryfast",
) -> CodedFrame:
    """Code one HxWx3 uint8 RGB frame as an IDR picture with a fresh encoder, then decode it."""
    config = EncoderConfig(
        crf=float(crf),
        aq_strength=aq_strength,
        preset=preset,
        threads=1,
        emit_version_sei=False,
    )
    height, width = frame_rgb.shape[:2]
    with QPMapEncoder(config, width, height) as encoder:
        packet = encoder.encode(frame_rgb, qp_offsets, force_keyframe=True)
    result = H264Decoder(width, height).decode(packet.data)
    if not result.ok:
        raise IntraCodingError(f"the decoder rejected a freshly coded frame: {result.detail}")
    return CodedFrame(decoded_rgb=result.image, slice_bytes=packet.slice_bytes)
