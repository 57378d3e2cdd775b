"""H.264 access units back to frames (PyAV / FFmpeg), never passing on a damaged frame as good.

Contract of `H264Decoder.decode(data, frame_seq=None)`: it returns a `DecodeResult` for every
access unit and never raises for damaged or missing data; only caller errors (data that is not
bytes, a stream whose picture is smaller than the size asked for) raise `DecodeError`.

* DECODED: `image` is an HxWx3 uint8 frame (rgb24 or bgr24), cropped to the size given.
* CORRUPT: FFmpeg reported an error, flagged the picture corrupt or produced no picture, or the
  bytes are not an Annex B access unit. No image. The decoder then waits for a keyframe.
* WAITING_FOR_KEYFRAME: a packet was lost, an earlier one was corrupt, or decoding has not
  started yet; non-IDR access units are dropped unseen until the next IDR, which resyncs.

Why the decoder keeps its own state: FFmpeg conceals errors. A lost P-frame is not reported at all
(the next frames come out about 8 dB worse, unflagged), and after a corrupt frame only that frame
carries AV_FRAME_FLAG_CORRUPT while the P-frames predicted from it come out unflagged. So loss is
detected from the caller's sequence numbers (EncodedFrame.frame_seq) and from the slice headers'
frame_num (`stac_codec.annexb`), and every error drops the stream back to the next IDR.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import av
import numpy as np

from stac_codec import annexb

OUTPUT_FORMATS = ("rgb24", "bgr24")


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

    width/height: size to crop decoded pictures to (the encoder's input size, e.g.
    EncodedFrame.width/height); None keeps the size the stream signals. threads: FFmpeg slice
    threads (frame threads would add a frame of delay per thread).
    """

    def __init__(
        self,
        width: int | None = None,
        height: int | None = None,
        output_format: str = "rgb24",
        threads: int = 1,
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise DecodeError(f"output_format must be one of {OUTPUT_FORMATS}")
        if (width is None) != (height is None) or (width is not None and min(width, height) < 1):
            raise DecodeError("give both width and height (>= 1) or neither")
        if threads < 1:
            raise DecodeError("threads must be >= 1")
        self.width = width
        self.height = height
        self.output_format = output_format
        self.counters = DecoderCounters()
        self._threads = threads
        self._codec = self._new_codec()
        self._synced = False
        self._last_frame_seq: int | None = None
        self._frame_num_tracker = annexb.FrameNumTracker()

    def _new_codec(self) -> av.CodecContext:
        codec = av.CodecContext.create("h264", "r")
        codec.thread_type = "SLICE"
        codec.thread_count = self._threads
        return codec

    @property
    def waiting_for_keyframe(self) -> bool:
        return not self._synced

    def decode(self, data: bytes, frame_seq: int | None = None) -> DecodeResult:
        """Decode one access unit; frame_seq (+1 per frame, as sent) enables loss detection."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"data must be bytes, got {type(data).__name__}")
        try:
            units = annexb.split_nal_units(bytes(data))
        except ValueError as error:
            return self._corrupt(frame_seq, False, f"not an access unit: {error}")
        keyframe = any(unit.nal_type == annexb.NAL_TYPE_SLICE_IDR for unit in units)
        gap = self._sequence_gap(frame_seq) or self._frame_num_gap(units)
        if gap:
            self.counters.gaps += 1
            self._synced = False
        if not self._synced and not keyframe:
            self.counters.skipped_waiting_for_keyframe += 1
            reason = gap or "waiting for the next keyframe"
            return DecodeResult(DecodeStatus.WAITING_FOR_KEYFRAME, None, frame_seq, False, reason)
        return self._decode_units(bytes(data), frame_seq, keyframe)

    def _sequence_gap(self, frame_seq: int | None) -> str:
        if frame_seq is None:
            return ""
        previous, self._last_frame_seq = self._last_frame_seq, frame_seq
        if previous is not None and frame_seq != previous + 1:
            return f"frame_seq jumped from {previous} to {frame_seq}"
        return ""

    def _frame_num_gap(self, units: list[annexb.NalUnit]) -> str:
        try:
            return self._frame_num_tracker.update(units)
        except ValueError as error:
            return f"unreadable slice header: {error}"

    def _decode_units(self, data: bytes, frame_seq: int | None, keyframe: bool) -> DecodeResult:
        try:
            frames = self._codec.decode(av.Packet(data))
        except av.FFmpegError as error:
            return self._corrupt(frame_seq, keyframe, f"FFmpeg: {error}")
        if not frames:
            return self._corrupt(frame_seq, keyframe, "no picture came out of this access unit")
        frame = frames[-1]
        if frame.is_corrupt:
            return self._corrupt(frame_seq, keyframe, "FFmpeg flagged the picture corrupt")
        image = self._crop(frame.to_ndarray(format=self.output_format))
        self._synced = True
        self.counters.decoded += 1
        return DecodeResult(DecodeStatus.DECODED, image, frame_seq, keyframe)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        if self.width is None:
            return image
        if image.shape[0] < self.height or image.shape[1] < self.width:
            raise DecodeError(
                f"stream pictures are {image.shape[1]}x{image.shape[0]}, smaller than the "
                f"requested {self.width}x{self.height}"
            )
        return np.ascontiguousarray(image[: self.height, : self.width])

    def _corrupt(self, frame_seq: int | None, keyframe: bool, detail: str) -> DecodeResult:
        self._synced = False
        self.counters.corrupt += 1
        return DecodeResult(DecodeStatus.CORRUPT, None, frame_seq, keyframe, detail)
