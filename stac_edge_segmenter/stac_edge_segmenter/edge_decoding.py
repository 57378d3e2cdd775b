"""Decoding the robot's EncodedFrame stream on the edge, across picture-size changes.

Everything in an EncodedFrame comes from the network: the bytes and the picture size it
declares. `EncodedStreamDecoder.decode` never raises for any of it: a size out of range, or a
stream whose pictures are not the declared size, is CORRUPT (see stac_codec.h264_decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stac_codec.h264_decoder import DecodeResult, DecodeStatus, H264Decoder
from stac_codec.h264_syntax import DEFAULT_MAX_MACROBLOCKS, MAX_SIDE_PIXELS
from stac_codec.qp_map import macroblock_grid


@dataclass(frozen=True)
class DecodedFrame:
    """A decoded RGB frame with the camera header and robot frame number it came with."""

    header: object  # std_msgs/Header, kept opaque: this module has no ROS imports
    frame_seq: int
    image: np.ndarray
    # the stream's picture decoded before this one, about what its P-frame was predicted from
    # (EncodedStreamDecoder.reference_image); None for a stream's first picture
    reference_image: np.ndarray | None = None


class EncodedStreamDecoder:
    """One H264Decoder per picture size. The stream being decoded keeps its decoder while
    units of another size arrive: those go to a candidate decoder for their size, which takes
    over only once it has decoded a picture (a robot that restarted at a new size sends an IDR
    first). So messages of a foreign size on the topic (garbage, a rogue publisher) cannot
    throw the real stream back to waiting for a keyframe.

    max_macroblocks: the largest picture accepted (default 36,864 = 4096x2304); each side at
    most 8192 pixels."""

    def __init__(self, max_macroblocks: int = DEFAULT_MAX_MACROBLOCKS) -> None:
        self._decoder: H264Decoder | None = None
        self._candidate: H264Decoder | None = None
        self.max_macroblocks = max_macroblocks
        self._last_image: np.ndarray | None = None
        self._reference_image: np.ndarray | None = None

    @property
    def reference_image(self) -> np.ndarray | None:
        """The picture decoded before the last one, of the same size: about what the last
        frame's P-frame was predicted from (a map that steers P-frames takes its rate term
        from the residual against it). None before a stream's second picture."""
        return self._reference_image

    def decode(
        self,
        data: np.ndarray | bytes,
        frame_seq: int,
        width: int,
        height: int,
        expected_crc32: int | None = None,
    ) -> DecodeResult:
        """Decode one access unit into RGB cropped to width x height; see DecodeResult.

        expected_crc32: zlib.crc32 of data, for a transport that carries one."""
        problem = self._size_problem(width, height)
        if problem:
            return DecodeResult(DecodeStatus.CORRUPT, None, frame_seq, False, problem, True)
        current = self._decoder
        if current is None:
            current = self._decoder = self._new_decoder(width, height)
        if (current.width, current.height) == (width, height):
            return self._remember(
                current.decode(bytes(memoryview(data)), frame_seq, expected_crc32)
            )
        candidate = self._candidate
        if candidate is None or (candidate.width, candidate.height) != (width, height):
            candidate = self._candidate = self._new_decoder(width, height)
        result = candidate.decode(bytes(memoryview(data)), frame_seq, expected_crc32)
        if result.ok:  # the new size decodes: it is the stream now
            self._decoder, self._candidate = candidate, None
        return self._remember(result)

    def _remember(self, result: DecodeResult) -> DecodeResult:
        if result.ok:
            last = self._last_image
            same_size = last is not None and last.shape == result.image.shape
            self._reference_image = last if same_size else None
            self._last_image = result.image
        return result

    def _new_decoder(self, width: int, height: int) -> H264Decoder:
        return H264Decoder(width, height, "rgb24", max_macroblocks=self.max_macroblocks)

    def _size_problem(self, width, height) -> str:
        if not isinstance(width, int) or not isinstance(height, int):
            return f"declared picture size {width!r}x{height!r} is not a pair of integers"
        if not (1 <= width <= MAX_SIDE_PIXELS and 1 <= height <= MAX_SIDE_PIXELS):
            return f"declared picture size {width}x{height} is out of range 1..{MAX_SIDE_PIXELS}"
        rows, cols = macroblock_grid(width, height)
        macroblocks = rows * cols
        if macroblocks > self.max_macroblocks:
            return (
                f"declared picture size {width}x{height} ({macroblocks} macroblocks) is larger "
                f"than the {self.max_macroblocks} this decoder accepts"
            )
        return ""
