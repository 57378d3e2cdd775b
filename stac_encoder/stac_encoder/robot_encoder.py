"""The robot's encoding loop: newest QP map from the edge, aged and flow-warped, into x264.

Plain Python (no ROS): `encoder_node` feeds it camera frames and QP maps; tests and the replay
evaluation drive it directly. It numbers frames (the `frame_seq` the edge refers to when it
sends a map back), re-creates the encoder when the picture size or channel order changes,
drops maps that are older than `max_map_age_s` (measured on the camera clock, from the map's
source frame to the frame being encoded) and forces keyframes on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stac_codec.h264_encoder import EncodedPacket, EncoderConfig, QPMapEncoder
from stac_codec.qp_map import macroblock_grid, validate_qp_map
from stac_encoder.qp_map_warp import QPMapWarper, WarpConfig


@dataclass(frozen=True)
class QPMapUpdate:
    """A map from the edge: offsets (rows, cols) int8, computed on frame `source_frame_seq`
    captured at `source_stamp_s` (camera clock)."""

    map_seq: int
    source_frame_seq: int
    source_stamp_s: float
    offsets: np.ndarray


@dataclass(frozen=True)
class RobotEncoderConfig:
    """max_map_age_s: a map whose source frame is older than this falls back to a zero map;
    warp_qp_map: carry the map to each new frame with DIS optical flow."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    max_map_age_s: float = 5.0
    warp_qp_map: bool = True
    warp: WarpConfig = field(default_factory=WarpConfig)

    def __post_init__(self) -> None:
        if self.max_map_age_s <= 0:
            raise ValueError(f"max_map_age_s must be > 0, got {self.max_map_age_s}")


@dataclass(frozen=True)
class EncodedFrameResult:
    """What the encoder produced for one camera frame; qp_map_seq 0 = no map applied."""

    frame_seq: int
    packet: EncodedPacket
    qp_map_seq: int
    width: int
    height: int


class RobotEncoder:
    """Encodes camera frames with the newest usable QP map. Not thread-safe: one caller."""

    def __init__(self, config: RobotEncoderConfig | None = None) -> None:
        self.config = config or RobotEncoderConfig()
        self._encoder: QPMapEncoder | None = None
        self._warper: QPMapWarper | None = None
        self._frame_seq = 0
        self._pending_map: QPMapUpdate | None = None
        self._active_map: QPMapUpdate | None = None
        self._keyframe_requested = False

    @property
    def frames_encoded(self) -> int:
        return self._frame_seq

    def submit_qp_map(self, update: QPMapUpdate) -> bool:
        """Queue a map for the next frame; False when it is older than the one queued/applied.

        Raises ValueError for a malformed map (wrong dtype, out-of-range offsets, or a shape
        that does not fit the current picture size).
        """
        offsets = update.offsets
        grid = self._encoder.grid if self._encoder is not None else None
        if grid is None:
            if getattr(offsets, "ndim", 0) != 2:
                raise ValueError(f"QP map must be 2-D (rows, cols), got {type(offsets).__name__}")
            grid = offsets.shape
        validate_qp_map(offsets, grid)
        newest = max(
            (u.map_seq for u in (self._pending_map, self._active_map) if u is not None),
            default=0,
        )
        if update.map_seq <= newest:
            return False
        self._pending_map = update
        return True

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    def encode(
        self, frame: np.ndarray, capture_stamp_s: float, pixel_format: str = "rgb24"
    ) -> EncodedFrameResult:
        """Encode one HxWx3 uint8 frame (rgb24 or bgr24) captured at `capture_stamp_s`."""
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            raise ValueError(f"frame must be an HxWx3 uint8 array, got shape {shape}")
        height, width = frame.shape[:2]
        self._ensure_encoder(width, height, pixel_format)
        self._frame_seq += 1
        if self._warper is not None:
            rgb = frame if pixel_format == "rgb24" else frame[..., ::-1]
            self._warper.add_frame(self._frame_seq, rgb)
        self._adopt_pending_map()
        qp_map, qp_map_seq = self._map_for(capture_stamp_s)
        packet = self._encoder.encode(frame, qp_map, force_keyframe=self._keyframe_requested)
        self._keyframe_requested = False
        return EncodedFrameResult(self._frame_seq, packet, qp_map_seq, width, height)

    def _ensure_encoder(self, width: int, height: int, pixel_format: str) -> None:
        current = self._encoder
        if current is not None and (current.width, current.height, current.pixel_format) == (
            width,
            height,
            pixel_format,
        ):
            return
        if current is not None:
            current.close()
            if macroblock_grid(current.width, current.height) != macroblock_grid(width, height):
                self._pending_map = self._active_map = None
        self._encoder = QPMapEncoder(self.config.encoder, width, height, pixel_format)
        self._warper = (
            QPMapWarper(width, height, self.config.warp) if self.config.warp_qp_map else None
        )
        if self._active_map is not None and self._pending_map is None:
            self._pending_map, self._active_map = self._active_map, None

    def _adopt_pending_map(self) -> None:
        update, self._pending_map = self._pending_map, None
        if update is None:
            return
        if update.offsets.shape != self._encoder.grid:
            return  # computed for a picture size this stream no longer has
        self._active_map = update
        if self._warper is not None:
            self._warper.set_map(update.offsets, update.source_frame_seq)

    def _map_for(self, capture_stamp_s: float) -> tuple[np.ndarray | None, int]:
        active = self._active_map
        if active is None:
            return None, 0
        if capture_stamp_s - active.source_stamp_s > self.config.max_map_age_s:
            return None, 0
        if self._warper is not None:
            return self._warper.current_map(), active.map_seq
        return active.offsets, active.map_seq

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
