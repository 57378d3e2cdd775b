"""Decoding the robot's EncodedFrame stream on the edge, across picture-size changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stac_codec.h264_decoder import DecodeResult, H264Decoder


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded RGB frame with the camera header and robot frame number it came with."""

    header: object  # std_msgs/Header, kept opaque: this module has no ROS imports
    frame_seq: int
    image: np.ndarray


class EncodedStreamDecoder:
    """One H264Decoder per picture size; a new size (a new encoder on the robot) starts a
    fresh decoder, which waits for that encoder's first keyframe."""

    def __init__(self) -> None:
        self._decoder: H264Decoder | None = None

    def decode(
        self, data: np.ndarray | bytes, frame_seq: int, width: int, height: int
    ) -> DecodeResult:
        """Decode one access unit into RGB cropped to width x height; see DecodeResult."""
        decoder = self._decoder
        if decoder is None or (decoder.width, decoder.height) != (width, height):
            decoder = self._decoder = H264Decoder(width, height, "rgb24")
        return decoder.decode(bytes(memoryview(data)), frame_seq)
