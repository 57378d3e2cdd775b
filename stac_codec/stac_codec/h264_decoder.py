"""H.264 access units back to frames (PyAV / FFmpeg), never passing on a damaged frame as good.

Contract of `H264Decoder.decode(data, frame_seq=None, expected_crc32=None)`: it returns a
`DecodeResult` for every access unit and never raises for anything that comes from the network
(the bytes, a lying picture size, forged parameter sets); only caller errors raise
`DecodeError`: data that is not bytes, a frame_seq or expected_crc32 that is not an int,
constructor arguments out of range.

* DECODED: `image` is an HxWx3 uint8 frame (rgb24 or bgr24), cropped to the size given.
* CORRUPT: the access unit failed a check (below), FFmpeg reported an error, flagged the picture
  corrupt or produced no picture, or the bytes are not an Annex B access unit. No image; `detail`
  says why. The decoder then waits for a keyframe.
* WAITING_FOR_KEYFRAME: a packet was lost, an earlier one was corrupt, or decoding has not
  started yet; non-IDR access units are dropped unseen until the next IDR, which resyncs.

A CORRUPT result with `refused` set was turned away before anything of it was used (not Annex B,
a checksum that does not match, a header that fails the syntax checks): the decoder's state,
sequence numbers included, is exactly as before. If the unit was really part of the stream, the
next unit's frame_seq or frame_num shows the gap and the decoder waits for a keyframe then; if
it came from someone else on the topic (a rogue publisher, garbage), the stream goes on
undisturbed. Units refused this way need no keyframe request of their own.

Why the decoder keeps its own state: FFmpeg conceals errors. A lost P-frame is not reported at all
(the next frames come out about 8 dB worse, unflagged), and after a corrupt frame only that frame
carries AV_FRAME_FLAG_CORRUPT while the P-frames predicted from it come out unflagged. So loss is
detected from the caller's sequence numbers (EncodedFrame.frame_seq) and from the slice headers'
frame_num, and every error drops the stream back to the next IDR.

What is checked before FFmpeg sees an access unit (`stac_codec.h264_syntax`): every SPS, PPS and
slice header parsed completely with each field's standard range and the RBSP trailing bits; one
picture per access unit, the first slice at macroblock 0, parameter set ids in range (SPS 0..31,
PPS 0..255: memory stays bounded) and known; the picture size from the SPS against the size the
sender declared (a stream larger or smaller than the EncodedFrame says is CORRUPT, never
cropped) and against `max_macroblocks` (default 36,864 = 4096x2304), before anything is decoded.
After FFmpeg: exactly one picture, not flagged corrupt, of the size the SPS gave.

What no syntax check can see: a flipped bit inside CABAC slice data usually still parses, and
FFmpeg does not check that a slice's arithmetic code ends where its bytes end, so about one P-slice
flip in ten comes out as a plausible, wrong picture (13-45 dB) whose damage lasts until the next
IDR; so does a flipped quantiser field of a PPS. FFmpeg says nothing about them either: its
log (av.logging, captured at VERBOSE) is silent for those flips, and PyAV 18 does not expose
AVFrame.decode_error_flags. Only a checksum catches them:

* in-band: `stac_codec.h264_encoder` (EncoderConfig.checksum_sei, on by default) puts an SEI
  user_data_unregistered message with the CRC32 of the access unit's other NAL units before the
  first slice (`h264_syntax.CHECKSUM_UUID`; 28 bytes per frame; standard decoders ignore it).
  With `checksums="auto"` (default) a stream that carried one must carry it in every access
  unit; an access unit without one is CORRUPT, except that two IDRs in a row without one mean
  the sender stopped sending them (an encoder restarted without checksums), and the requirement
  is dropped. "required" never drops it; "ignored" skips the check.
* out-of-band: `expected_crc32`, the zlib CRC32 of `data` as the sender computed it, for a
  transport that carries one (EncodedFrame has no such field today).

A CRC guards against accidental damage only; a sender that forges bytes can forge the CRC too.
"""

from __future__ import annotations

import contextlib
import enum
import zlib
from dataclasses import dataclass

import av
import numpy as np

from stac_codec import annexb
from stac_codec.h264_syntax import (
    DEFAULT_MAX_MACROBLOCKS,
    AccessUnitChecker,
    MissingChecksumError,
    SyntaxCheckError,
)

OUTPUT_FORMATS = ("rgb24", "bgr24")
CHECKSUM_POLICIES = ("auto", "required", "ignored")


class DecodeError(ValueError):
    """The caller handed the decoder something it cannot work with (not a damaged stream)."""


class DecodeStatus(enum.Enum):
    DECODED = "decoded"
    CORRUPT = "corrupt"
    WAITING_FOR_KEYFRAME = "waiting_for_keyframe"


@dataclass(frozen=True)
class DecodeResult:
    """Outcome of one access unit; `image` is set only when status is DECODED."""

    status: DecodeStatus
    image: np.ndarray | None
    frame_seq: int | None
    keyframe: bool
    detail: str = ""
    refused: bool = False  # CORRUPT before use: the decoder's state did not change

    @property
    def ok(self) -> bool:
        return self.status is DecodeStatus.DECODED


@dataclass
class DecoderCounters:
    """Running totals, for node statistics."""

    decoded: int = 0
    corrupt: int = 0
    skipped_waiting_for_keyframe: int = 0
    gaps: int = 0


class H264Decoder:
    """Stateful decoder for one H.264 stream, one access unit per decode() call.

    width/height: the size the sender declared (EncodedFrame.width/height): pictures are cropped
    to it, and a stream whose SPS gives another size is CORRUPT; None accepts any size up to
    max_macroblocks. threads: FFmpeg slice threads (frame threads would add a frame of delay per
    thread). checksums: "auto", "required" or "ignored" (see the module docstring).
    """

    def __init__(
        self,
        width: int | None = None,
        height: int | None = None,
        output_format: str = "rgb24",
        threads: int = 1,
        max_macroblocks: int = DEFAULT_MAX_MACROBLOCKS,
        checksums: str = "auto",
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise DecodeError(f"output_format must be one of {OUTPUT_FORMATS}")
        if (width is None) != (height is None) or (width is not None and min(width, height) < 1):
            raise DecodeError("give both width and height (>= 1) or neither")
        if threads < 1:
            raise DecodeError("threads must be >= 1")
        if max_macroblocks < 1:
            raise DecodeError("max_macroblocks must be >= 1")
        if checksums not in CHECKSUM_POLICIES:
            raise DecodeError(f"checksums must be one of {CHECKSUM_POLICIES}")
        self.width = width
        self.height = height
        self.output_format = output_format
        self.max_macroblocks = max_macroblocks
        self.checksums = checksums
        self.counters = DecoderCounters()
        self._threads = threads
        self._codec = self._new_codec()
        self._synced = False
        self._last_frame_seq: int | None = None
        expected = None if width is None else (width, height)
        self._checker = AccessUnitChecker(expected, max_macroblocks)
        self._stream_has_checksums = checksums == "required"
        self._keyframes_without_checksum = 0

    def _new_codec(self) -> av.CodecContext:
        codec = av.CodecContext.create("h264", "r")
        codec.thread_type = "SLICE"
        codec.thread_count = self._threads
        return codec

    @property
    def parameter_set_counts(self) -> tuple[int, int]:
        """(SPS, PPS) the decoder holds: bounded by the standard's id ranges (32, 256)."""
        return self._checker.parameter_set_counts

    def decode(
        self, data: bytes, frame_seq: int | None = None, expected_crc32: int | None = None
    ) -> DecodeResult:
        """Decode one access unit; frame_seq (+1 per frame, as sent) enables loss detection;
        expected_crc32 (zlib.crc32 of data), when the transport carries one, is checked first."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"data must be bytes, got {type(data).__name__}")
        if frame_seq is not None and not isinstance(frame_seq, int):
            raise DecodeError(f"frame_seq must be an int or None, got {type(frame_seq).__name__}")
        if expected_crc32 is not None and (
            not isinstance(expected_crc32, int) or not 0 <= expected_crc32 < 1 << 32
        ):
            raise DecodeError("expected_crc32 must be an int in 0..2**32-1 or None")
        data = bytes(data)
        if expected_crc32 is not None and zlib.crc32(data) != expected_crc32:
            return self._refused(frame_seq, False, "checksum: CRC32 differs from the expected")
        try:
            units = annexb.split_nal_units(data)
        except ValueError as error:
            return self._refused(frame_seq, False, f"not an access unit: {error}")
        keyframe = any(unit.nal_type == annexb.NAL_TYPE_SLICE_IDR for unit in units)
        if not self._synced and not keyframe:
            sequence_gap = self._sequence_gap(frame_seq)
            self._digest_while_waiting(units)
            self.counters.skipped_waiting_for_keyframe += 1
            if sequence_gap:
                self.counters.gaps += 1
            reason = sequence_gap or "waiting for the next keyframe"
            return DecodeResult(DecodeStatus.WAITING_FOR_KEYFRAME, None, frame_seq, False, reason)
        try:
            info = self._checker.check(
                units,
                require_checksum=self._checksum_required(keyframe),
                use_checksum=self.checksums != "ignored",
            )
        except MissingChecksumError as error:
            self._keyframes_without_checksum += keyframe
            return self._refused(frame_seq, keyframe, f"bad access unit: {error}")
        except SyntaxCheckError as error:
            return self._refused(frame_seq, keyframe, f"bad access unit: {error}")
        self._note_checksum(info.checksum, keyframe)
        gap = self._sequence_gap(frame_seq) or info.frame_num_gap
        if gap:
            self.counters.gaps += 1
            self._synced = False
        if not self._synced and not keyframe:
            self.counters.skipped_waiting_for_keyframe += 1
            return DecodeResult(DecodeStatus.WAITING_FOR_KEYFRAME, None, frame_seq, False, gap)
        return self._decode_units(data, frame_seq, keyframe, (info.width, info.height))

    def _sequence_gap(self, frame_seq: int | None) -> str:
        if frame_seq is None:
            return ""
        previous, self._last_frame_seq = self._last_frame_seq, frame_seq
        if previous is not None and frame_seq != previous + 1:
            return f"frame_seq jumped from {previous} to {frame_seq}"
        return ""

    def _digest_while_waiting(self, units: list[annexb.NalUnit]) -> None:
        """Keep the parameter sets and frame_num of units that are not decoded (best effort)."""
        with contextlib.suppress(SyntaxCheckError):
            self._checker.check(units)

    def _checksum_required(self, keyframe: bool) -> bool:
        if self.checksums == "required":
            return True
        if self.checksums == "ignored" or not self._stream_has_checksums:
            return False
        # auto: the second IDR in a row without one means the sender stopped sending them
        return not (keyframe and self._keyframes_without_checksum >= 1)

    def _note_checksum(self, checksum: bool | None, keyframe: bool) -> None:
        if checksum:
            self._stream_has_checksums = True
            self._keyframes_without_checksum = 0
        elif keyframe and self.checksums == "auto":
            self._stream_has_checksums = False
            self._keyframes_without_checksum = 0

    def _decode_units(
        self, data: bytes, frame_seq: int | None, keyframe: bool, size: tuple[int, int]
    ) -> DecodeResult:
        try:
            frames = self._codec.decode(av.Packet(data))
        except Exception as error:  # noqa: BLE001 - whatever FFmpeg raises is about the bytes
            return self._corrupt(frame_seq, keyframe, f"FFmpeg: {type(error).__name__}: {error}")
        if not frames:
            return self._corrupt(frame_seq, keyframe, "no picture came out of this access unit")
        if len(frames) > 1:
            return self._corrupt(frame_seq, keyframe, f"{len(frames)} pictures from one unit")
        frame = frames[0]
        if frame.is_corrupt:
            return self._corrupt(frame_seq, keyframe, "FFmpeg flagged the picture corrupt")
        if (frame.width, frame.height) != size:
            return self._corrupt(
                frame_seq,
                keyframe,
                f"FFmpeg decoded {frame.width}x{frame.height}, the SPS says {size[0]}x{size[1]}",
            )
        try:
            image = self._crop(frame.to_ndarray(format=self.output_format))
        except Exception as error:  # noqa: BLE001 - e.g. colour parameters swscale refuses
            return self._corrupt(
                frame_seq, keyframe, f"conversion: {type(error).__name__}: {error}"
            )
        self._synced = True
        self.counters.decoded += 1
        return DecodeResult(DecodeStatus.DECODED, image, frame_seq, keyframe)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        if self.width is None:
            return image
        return np.ascontiguousarray(image[: self.height, : self.width])

    def _refused(self, frame_seq: int | None, keyframe: bool, detail: str) -> DecodeResult:
        """CORRUPT without touching the decoder's state (see the module docstring)."""
        self.counters.corrupt += 1
        return DecodeResult(DecodeStatus.CORRUPT, None, frame_seq, keyframe, detail, True)

    def _corrupt(self, frame_seq: int | None, keyframe: bool, detail: str) -> DecodeResult:
        self._synced = False
        self.counters.corrupt += 1
        return DecodeResult(DecodeStatus.CORRUPT, None, frame_seq, keyframe, detail)
