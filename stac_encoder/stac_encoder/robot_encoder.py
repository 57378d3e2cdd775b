"""The robot's encoding loop: newest QP map from the edge, aged and flow-warped, into x264.

Plain Python (no ROS): `encoder_node` feeds it camera frames and QP maps; tests and the replay
evaluation drive it directly. It numbers frames (the `frame_seq` the edge refers to when it
sends a map back), re-creates the encoder when the picture size or channel order changes (or
when the edge's calibration asks for another x264 AQ strength, which x264 cannot change on a
running encoder), drops maps whose source frame is more than `max_map_age_s` away from the
frame being encoded (camera clock), and forces keyframes on request.

Flow: the map is carried with the per-frame optical flow of `frame_flow.FrameFlow`. The encoder
owns one when it runs alone (every camera frame is encoded: the flow's frames are the encoded
frames); `RobotLoop` shares its own with the mask warper instead, adding every camera frame to
it (in keyframe mode most camera frames are not encoded) and telling `encode` which flow frame
is being encoded, so a map computed on an encoded frame is warped from the right flow frame.

A frame that cannot be encoded raises ValueError (or EncoderError) and changes nothing: it
gets no frame_seq (so the edge sees no false gap) and the running encoder stays open.
"""

from __future__ import annotations

import enum
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from stac_codec.h264_decoder import H264Decoder
from stac_codec.h264_encoder import (
    OFFSETS_ONLY_AQ_STRENGTH,
    EncodedPacket,
    EncoderConfig,
    QPMapEncoder,
)
from stac_codec.qp_map import (
    MACROBLOCK_SIZE,
    MAX_ABS_QP_OFFSET,
    macroblock_grid,
    validate_qp_map,
)
from stac_encoder.frame_flow import FrameFlow
from stac_encoder.qp_map_warp import QPMapWarper, WarpConfig

MAX_PICTURE_SIDE_PX = 16384  # H.264 levels allow no larger side
# A map whose source stamp lies this far after the newest camera frame is from a broken clock.
FUTURE_TOLERANCE_S = 1.0
# Reference-aware offsets: a macroblock's persistence is capped here (r / (1 - r) <= 9, as if
# the next 9 frames copied it), and its texture (grey-level std) floored at this many levels.
REFERENCE_MAX_PERSISTENCE = 0.9
REFERENCE_TEXTURE_FLOOR = 2.0
HOLD_SOURCES = ("input", "decoded")
# This many stale maps in a row from one session: the sequence was reset (or one bogus
# map_seq raised the mark); adopt the incoming numbering again.
STALE_MAPS_BEFORE_RESYNC = 3


@dataclass(frozen=True)
class QPMapUpdate:
    """A map from the edge: offsets (rows, cols) int8, computed on frame `source_frame_seq`
    captured at `source_stamp_s` (camera clock), numbered `map_seq` within the edge session
    `session_id`; aq_strength > 0 asks for that x264 AQ strength (0 = keep the robot's)."""

    map_seq: int
    source_frame_seq: int
    source_stamp_s: float
    offsets: np.ndarray
    session_id: int = 0
    aq_strength: float = 0.0


class MapVerdict(enum.Enum):
    """What submit_qp_map did with a map (the node counts and logs each kind)."""

    ACCEPTED = "accepted"
    STALE = "stale"  # not newer than the map already queued or applied
    RESYNCED = "resynced"  # accepted after several stale maps: the numbering restarted


@dataclass(frozen=True)
class RobotEncoderConfig:
    """max_map_age_s: a map whose source frame is further than this from the frame being
    encoded falls back to a zero map; warp_qp_map: carry the map to each new frame with DIS
    optical flow; idr_offset_scale / p_offset_scale: the map's offsets are multiplied by this
    on IDR pictures / on P-frames (1 = as the edge sent them; 0 = no map on that kind).

    Forced skips (hold_offset_qp > 0): on a P-frame, every macroblock whose map offset is at
    least hold_offset_qp (the DNN needs little there) is handed to x264 with the co-located
    pixels of the previous picture, so x264 codes it as a skip or a near-zero residual, as DDS
    and AccMPEG do with a blank background. hold_source: which previous picture, "input" (what
    x264 was given last, held areas included) or "decoded" (x264's reconstruction of it, which
    its API does not hand out: the robot decodes its own access unit, one decode per frame; up
    to the RGB round trip). The held area would stay frozen, so it is coded from the camera
    again where it changed by more than hold_max_change (mean absolute difference,
    8-bit levels, over the macroblock's pixels and channels; 255 = never) and, column by column,
    every hold_refresh_frames frames (0 = never); IDR pictures are never held back.

    Reference-aware offsets (reference_qp_strength > 0, needs the map warp's flow): an
    MB-tree-like term on P-frames, from the past motion as the estimate of the future. Each
    macroblock's persistence r (the share of its content the previous frame predicts: one less
    its motion-compensated residual over its own texture, from the flow's grey images, at most
    REFERENCE_MAX_PERSISTENCE) says how much later frames will predict from it, r / (1 - r)
    over the whole future; weighted by the importance (the map, 2^(-offset / 6)) where that
    content goes next (the flow reversed) over its own, the offset becomes
    offset - strength * log2(1 + weight * r / (1 - r)): lower QP where later frames copy
    important content from, the map's own offset where content is coded anew every frame.
    reference_mean_zero: the term less its mean over the frame (it only moves bits between
    macroblocks, as the map does; off, it lowers the frame's QP as x264's MB-tree does).

    map_fade_px (> 0, needs the map warp): the warped map's offsets are scaled by
    F / (F + d), d the content's mean displacement since the map's frame (full-res pixels,
    `QPMapWarper.displacement_px`): half strength once the scene moved by F, towards no map
    (the encoder's own AQ) as it keeps moving. Flow carries a map's macroblocks but not its
    truth: content that comes into view, turns or scales is not what the edge found
    sensitive; a map that steers a frame the edge has not seen costs bits it does not pay
    back (0 = off). A map whose frame is older than the flow's history is faded out (d is
    unknown, only large). Forced skips (hold_offset_qp) read the faded offsets: the further
    the content moved, the less is held back.

    aq_motion_fade_px (> 0, needs the map warp's flow; 0 = off): the x264 AQ strength the maps
    ask for (QPMapUpdate.aq_strength, and encoder.aq_strength before the first map) is scaled
    on each P-frame by F / (F + m), m the camera's motion since the reference picture (the
    frame encoded before this one): the median macroblock's displacement (full-res pixels,
    `QPMapWarper.macroblock_motion_px`; the median, so that people walking through a still
    camera's view do not count as its motion); an IDR picture takes it in full. x264 runs at
    the offsets-only strength and its variance AQ is computed here for every frame
    (`stac_codec.variance_aq`; x264 fixes its own when it opens). Why: AQ spends bits on flat
    macroblocks; where the camera stands still later P-frames copy them from the reference,
    where it moves they are paid again in every frame (x264's AQ alone: -30.6 % bits at equal
    mIoU on vtest.avi, +18.6 % on the dashcam clip, docs/benchmarks.md). F is 0.25 px, H.264's
    quarter-pel motion precision: content that moved by less is copied from the reference
    nearly as it was, content that moved further is interpolated and its residual coded
    again. Off: x264's own AQ at the asked strength, a new encoder and an IDR picture when a
    map asks for another.

    Importance-guided blur (blur_sigma_px > 0; 0 = off): before x264 sees a frame, each
    macroblock is blended towards a Gaussian blur of the frame (sigma blur_sigma_px, full-res
    pixels) by its map offset over blur_full_offset_qp (0 at offset <= 0, the whole blur from
    blur_full_offset_qp up; the weights interpolated bilinearly between macroblock centres, so
    no seam is drawn at a macroblock's edge). The map's offsets act only where x264 codes a
    residual; texture the DNN does not need, blurred away, costs no residual in any frame
    kind, and a P-frame's blurred area predicts well from a blurred reference (more skips).
    blur_p_frames_only: IDR pictures keep their texture.

    far_gap_frames (> 0, needs encoder.far_preset; 0 = off): a frame at least this many camera
    frames after the frame encoded before it (keyframe mode's keyframes) is encoded with
    encoder.far_preset's analysis (`QPMapEncoder.encode(far=True)`): content that moved over
    several frames needs a wider motion search and better mode decisions, and an encoder that
    skips the frames in between can spend their time on it (needs the frames' flow numbers:
    a shared FrameFlow or the map warp)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    max_map_age_s: float = 5.0
    warp_qp_map: bool = True
    warp: WarpConfig = field(default_factory=WarpConfig)
    idr_offset_scale: float = 1.0
    p_offset_scale: float = 1.0
    hold_offset_qp: int = 0
    hold_refresh_frames: int = 0
    hold_max_change: float = 255.0
    hold_source: str = "input"
    reference_qp_strength: float = 0.0
    reference_mean_zero: bool = False
    map_fade_px: float = 16.0
    aq_motion_fade_px: float = 0.25
    far_gap_frames: int = 0
    blur_sigma_px: float = 0.0
    blur_full_offset_qp: float = 8.0
    blur_p_frames_only: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_map_age_s) or self.max_map_age_s <= 0:
            raise ValueError(f"max_map_age_s must be > 0, got {self.max_map_age_s}")
        if not 0 <= self.hold_offset_qp <= MAX_ABS_QP_OFFSET:
            raise ValueError(
                f"hold_offset_qp must be in 0..{MAX_ABS_QP_OFFSET} (0 = off), "
                f"got {self.hold_offset_qp}"
            )
        if not 0 <= self.hold_refresh_frames <= 100_000:
            raise ValueError(
                f"hold_refresh_frames must be in 0..100000 (0 = never), "
                f"got {self.hold_refresh_frames}"
            )
        if self.hold_source not in HOLD_SOURCES:
            raise ValueError(f"hold_source must be one of {HOLD_SOURCES}, got {self.hold_source!r}")
        if not (math.isfinite(self.hold_max_change) and 0.0 <= self.hold_max_change <= 255.0):
            raise ValueError(f"hold_max_change must be in [0, 255], got {self.hold_max_change}")
        if not (math.isfinite(self.reference_qp_strength) and 0 <= self.reference_qp_strength <= 8):
            raise ValueError(
                f"reference_qp_strength must be in [0, 8], got {self.reference_qp_strength}"
            )
        if not (math.isfinite(self.map_fade_px) and self.map_fade_px >= 0.0):
            raise ValueError(f"map_fade_px must be >= 0 (0 = off), got {self.map_fade_px}")
        if not (math.isfinite(self.aq_motion_fade_px) and self.aq_motion_fade_px >= 0.0):
            raise ValueError(
                f"aq_motion_fade_px must be >= 0 (0 = off), got {self.aq_motion_fade_px}"
            )
        if not (math.isfinite(self.blur_sigma_px) and 0.0 <= self.blur_sigma_px <= 32.0):
            raise ValueError(
                f"blur_sigma_px must be in [0, 32] (0 = off), got {self.blur_sigma_px}"
            )
        if not (math.isfinite(self.blur_full_offset_qp) and 0.0 < self.blur_full_offset_qp <= 51):
            raise ValueError(
                f"blur_full_offset_qp must be in (0, 51], got {self.blur_full_offset_qp}"
            )
        if self.far_gap_frames < 0:
            raise ValueError(f"far_gap_frames must be >= 0 (0 = off), got {self.far_gap_frames}")
        if self.far_gap_frames and not self.encoder.far_preset:
            raise ValueError("far_gap_frames needs encoder.far_preset")
        for name in ("idr_offset_scale", "p_offset_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 4.0):
                raise ValueError(f"{name} must be in [0, 4], got {value}")


@dataclass(frozen=True)
class EncodedFrameResult:
    """What the encoder produced for one camera frame; qp_map_seq 0 = no map applied."""

    frame_seq: int
    packet: EncodedPacket
    qp_map_seq: int
    width: int
    height: int


class RobotEncoder:
    """Encodes camera frames with the newest usable QP map. Not thread-safe: one caller.

    flow: a FrameFlow shared with other warpers (the caller adds every camera frame to it and
    passes `flow_seq` to encode); None: the encoder keeps its own when warp_qp_map is set.
    """

    def __init__(self, config: RobotEncoderConfig | None = None, flow: FrameFlow | None = None):
        self.config = config or RobotEncoderConfig()
        self._aq_strength = self.config.encoder.aq_strength
        self._base_quality: float | None = None  # set_base_quality's value, kept over re-opens
        self._encoder: QPMapEncoder | None = None
        self._shared_flow = flow
        self._flow: FrameFlow | None = None
        self._warper: QPMapWarper | None = None
        self._flow_seq_of: OrderedDict[int, int] = OrderedDict()  # frame_seq -> flow frame
        self._frame_seq = 0
        self._newest_capture_s: float | None = None
        self._pending_map: QPMapUpdate | None = None
        self._active_map: QPMapUpdate | None = None
        self._session_id: int | None = None
        self._newest_map_seq = 0
        self._stale_in_a_row = 0
        self._keyframe_requested = False
        self.last_map_ms = 0.0  # wall time the last encode spent warping the map
        self._since_idr: int | None = None  # frames since the last IDR of the open encoder
        self._previous_input: np.ndarray | None = None  # what held macroblocks copy
        self._reconstruction: H264Decoder | None = None
        self._hold_phase = 0  # frames since the encoder opened: the refresh column sweep
        self.last_held_macroblocks = 0  # macroblocks the last encode held back
        self.last_qp_map: np.ndarray | None = None  # the offsets the last encode gave x264
        self.last_map_scale = 1.0  # the map's strength after map_fade_px on the last encode
        # the variance AQ the last encode computed here (aq_motion_fade_px; 0: x264's own)
        self.last_variance_aq_strength = 0.0

    @property
    def aq_strength(self) -> float:
        """The AQ strength asked for (by the last map, else the configuration): x264's own, or
        before the camera motion's fade where the AQ fades with it (aq_motion_fade_px)."""
        return self._aq_strength

    @property
    def _aq_fades(self) -> bool:
        config = self.config
        return config.aq_motion_fade_px > 0 and config.warp_qp_map

    def _x264_aq_strength(self) -> float:
        """The strength x264 opens with: the asked one, or offsets-only where it fades."""
        return OFFSETS_ONLY_AQ_STRENGTH if self._aq_fades else self._aq_strength

    def _faded_aq_strength(self, idr: bool, reference_flow_seq: int | None) -> float:
        """The variance AQ computed here for this frame (0: none, x264's own applies), faded
        by the camera's motion since the reference picture (the flow frame of the frame
        encoded before; None: unknown, as after a re-open, when the frame is an IDR anyway)."""
        if not self._aq_fades or self._aq_strength <= OFFSETS_ONLY_AQ_STRENGTH:
            return 0.0
        fade_px = self.config.aq_motion_fade_px
        if idr or reference_flow_seq is None:
            return self._aq_strength
        motion_px = float(np.median(self._warper.macroblock_motion_px(reference_flow_seq)))
        return self._aq_strength * fade_px / (fade_px + motion_px)

    def submit_qp_map(self, update: QPMapUpdate) -> MapVerdict:
        """Queue a map for the next frame, newest wins.

        Raises ValueError for a malformed map (wrong dtype, out-of-range offsets, a shape that
        does not fit the current picture size, a stamp that is not finite or lies in the
        future, a source frame that was never encoded, an AQ strength out of range).
        """
        self._validate(update)
        if update.session_id != self._session_id:
            self._session_id, self._newest_map_seq, self._stale_in_a_row = update.session_id, 0, 0
        verdict = MapVerdict.ACCEPTED
        if update.map_seq <= self._newest_map_seq:
            self._stale_in_a_row += 1
            if self._stale_in_a_row < STALE_MAPS_BEFORE_RESYNC:
                return MapVerdict.STALE
            verdict = MapVerdict.RESYNCED
        self._stale_in_a_row = 0
        self._newest_map_seq = update.map_seq
        self._pending_map = update
        return verdict

    def _validate(self, update: QPMapUpdate) -> None:
        offsets = update.offsets
        grid = self._encoder.grid if self._encoder is not None else None
        if grid is None:
            if getattr(offsets, "ndim", 0) != 2:
                raise ValueError(f"QP map must be 2-D (rows, cols), got {type(offsets).__name__}")
            grid = offsets.shape
        validate_qp_map(offsets, grid)
        if not math.isfinite(update.source_stamp_s):
            raise ValueError(f"QP map {update.map_seq}: source stamp {update.source_stamp_s}")
        newest = self._newest_capture_s
        if newest is not None and update.source_stamp_s > newest + FUTURE_TOLERANCE_S:
            raise ValueError(
                f"QP map {update.map_seq}: source stamp {update.source_stamp_s:.3f} s is after "
                f"the newest camera frame ({newest:.3f} s)"
            )
        if not 0 < update.source_frame_seq <= max(self._frame_seq, 1):
            raise ValueError(
                f"QP map {update.map_seq}: source frame {update.source_frame_seq} was never "
                f"encoded (frames so far: {self._frame_seq})"
            )
        if update.aq_strength and not 0.0 < update.aq_strength <= 3.0:
            raise ValueError(f"QP map {update.map_seq}: aq_strength {update.aq_strength}")

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    @property
    def frame_seq(self) -> int:
        """The frame_seq of the last encoded frame (0 before the first)."""
        return self._frame_seq

    @property
    def base_quality(self) -> float:
        """The budget knob now: the CRF ('crf') or the target kbit/s ('bitrate')."""
        if self._base_quality is not None:
            return self._base_quality
        encoder = self.config.encoder
        return encoder.crf if encoder.rate_control == "crf" else float(encoder.bitrate_kbps)

    def set_base_quality(self, base_quality: float) -> None:
        """Move the CRF (or the bitrate target) from the next frame on, without a keyframe;
        kept when the encoder is re-opened. ValueError when out of range."""
        if self.config.encoder.rate_control == "crf" and not 0.0 <= base_quality <= 51.0:
            raise ValueError(f"CRF must be in [0, 51], got {base_quality}")
        if self.config.encoder.rate_control == "bitrate" and not base_quality >= 1:
            raise ValueError(f"bitrate must be >= 1 kbit/s, got {base_quality}")
        if self._encoder is not None:
            self._encoder.set_base_quality(base_quality)
        self._base_quality = float(base_quality)

    def _is_far(self, flow_seq: int | None, previous_flow_seq: int | None) -> bool:
        """Whether this frame gets the far preset's analysis (far_gap_frames)."""
        gap = self.config.far_gap_frames
        if not gap or flow_seq is None or previous_flow_seq is None:
            return False
        return flow_seq - previous_flow_seq >= gap

    def encode(
        self,
        frame: np.ndarray,
        capture_stamp_s: float,
        pixel_format: str = "rgb24",
        flow_seq: int | None = None,
        idr_extra_qp: int = 0,
        far: bool | None = None,
    ) -> EncodedFrameResult:
        """Encode one HxWx3 uint8 frame (rgb24 or bgr24) captured at `capture_stamp_s`.

        flow_seq: with a shared FrameFlow, the number under which the caller added this frame
        to it (default: its current frame). idr_extra_qp: added to every macroblock's offset
        if this frame is an IDR picture (a bitrate target's cap on the IDR's size). far: the
        far preset's analysis or not (None: by far_gap_frames; True needs encoder.far_preset)."""
        height, width = _check_frame(frame)
        if not math.isfinite(capture_stamp_s):
            raise ValueError(f"capture stamp must be finite, got {capture_stamp_s}")
        shared = self._shared_flow
        if shared is not None and (shared.width, shared.height) != (width, height):
            raise ValueError(
                f"frame of {width}x{height} px, the shared flow is for "
                f"{shared.width}x{shared.height}"
            )
        self._ensure_encoder(width, height, pixel_format)
        packet_frame_seq = self._frame_seq + 1
        if self._flow is not None:
            if self._shared_flow is None:
                rgb = frame if pixel_format == "rgb24" else frame[..., ::-1]
                self._flow.add_frame(packet_frame_seq, rgb)
                flow_seq = packet_frame_seq
            elif flow_seq is None:
                flow_seq = self._flow.current_seq
        self._adopt_pending_map()
        qp_map, qp_map_seq = self._map_for(capture_stamp_s)
        idr = self._keyframe_requested or self.next_is_idr()
        qp_map = self._scaled(qp_map, idr)
        if not idr and self.config.reference_qp_strength and qp_map is not None:
            qp_map = self._reference_aware(qp_map, flow_seq)
        if idr and idr_extra_qp:
            qp_map = _raised(qp_map, idr_extra_qp, height, width)
        frame = self._held_back(frame, qp_map, idr)
        if self.config.blur_sigma_px and not (idr and self.config.blur_p_frames_only):
            frame = blurred_where_unimportant(
                frame, qp_map, self.config.blur_sigma_px, self.config.blur_full_offset_qp
            )
        self.last_qp_map = qp_map
        previous_flow_seq = self._flow_seq_of.get(self._frame_seq)
        self.last_variance_aq_strength = self._faded_aq_strength(idr, previous_flow_seq)
        packet = self._encoder.encode(
            frame,
            qp_map,
            force_keyframe=self._keyframe_requested,
            variance_aq_strength=self.last_variance_aq_strength,
            far=self._is_far(flow_seq, previous_flow_seq) if far is None else far,
        )
        if self.config.hold_offset_qp:
            self._previous_input = self._held_reference(frame, packet, pixel_format)
        self._since_idr = 0 if packet.keyframe else self._since_idr + 1
        self._frame_seq = packet_frame_seq
        self._newest_capture_s = capture_stamp_s
        self._keyframe_requested = False
        if flow_seq is None and self._shared_flow is not None:
            flow_seq = self._shared_flow.current_seq
        if flow_seq is not None:  # also without map warping: the mask warper needs it
            self._flow_seq_of[packet_frame_seq] = flow_seq
            while len(self._flow_seq_of) > self.config.warp.history_frames:
                self._flow_seq_of.popitem(last=False)
        return EncodedFrameResult(self._frame_seq, packet, qp_map_seq, width, height)

    def _reference_aware(self, qp_map: np.ndarray, flow_seq: int | None) -> np.ndarray:
        """The map with the reference term (see RobotEncoderConfig); as it was when the flow
        of this frame to the one before is not held."""
        flow = self._flow
        if flow is None or flow_seq is None:
            return qp_map
        step, now, before = flow.step_flow(flow_seq), flow.grey(flow_seq), flow.grey(flow_seq - 1)
        if step is None or now is None or before is None:
            return qp_map
        rows, cols = qp_map.shape
        height, width = now.shape
        x, y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        predicted = cv2.remap(
            before, x + step[..., 0], y + step[..., 1], cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        grey = now.astype(np.float32)
        residual = np.abs(grey - predicted.astype(np.float32))

        def per_macroblock(values: np.ndarray) -> np.ndarray:
            return cv2.resize(values, (cols, rows), interpolation=cv2.INTER_AREA)

        mean = per_macroblock(grey)
        texture = np.sqrt(np.maximum(per_macroblock(grey * grey) - mean * mean, 0.0))
        persistence = np.clip(
            1.0 - per_macroblock(residual) / (texture + REFERENCE_TEXTURE_FLOOR),
            0.0,
            REFERENCE_MAX_PERSISTENCE,
        )
        # where each macroblock's content goes next: its backward flow reversed
        motion = per_macroblock(step)  # flow-res px
        centre_x = (np.arange(cols) + 0.5) * MACROBLOCK_SIZE
        centre_y = (np.arange(rows) + 0.5) * MACROBLOCK_SIZE
        next_x = centre_x[None, :] - motion[..., 0] / flow.scale_x
        next_y = centre_y[:, None] - motion[..., 1] / flow.scale_y
        next_col = np.clip((next_x // MACROBLOCK_SIZE).astype(int), 0, cols - 1)
        next_row = np.clip((next_y // MACROBLOCK_SIZE).astype(int), 0, rows - 1)
        offsets = qp_map.astype(np.float32)
        weight = np.exp2((offsets - offsets[next_row, next_col]) / 6.0)
        gain = np.log2(1.0 + weight * persistence / (1.0 - persistence))
        if self.config.reference_mean_zero:
            gain -= gain.mean()
        moved = np.rint(offsets - self.config.reference_qp_strength * gain)
        return np.clip(moved, -MAX_ABS_QP_OFFSET, MAX_ABS_QP_OFFSET).astype(np.int8)

    def _held_reference(self, frame: np.ndarray, packet: EncodedPacket, pixel_format: str):
        """The picture the next frame's held macroblocks are copied from (hold_source)."""
        if self.config.hold_source == "decoded":
            if self._reconstruction is None:
                height, width = frame.shape[:2]
                self._reconstruction = H264Decoder(width, height, pixel_format)
            decoded = self._reconstruction.decode(packet.data)
            if decoded.ok:
                return decoded.image
        return frame.copy()  # the caller may reuse its buffer

    def _held_back(self, frame: np.ndarray, qp_map: np.ndarray | None, idr: bool) -> np.ndarray:
        """The frame x264 is given: `frame` with the macroblocks the map marks unimportant
        replaced by the previous input's pixels (forced skips; see RobotEncoderConfig)."""
        self.last_held_macroblocks = 0
        threshold = self.config.hold_offset_qp
        previous = self._previous_input
        self._hold_phase += 1
        if not threshold or idr or qp_map is None or previous is None:
            return frame
        if previous.shape != frame.shape:
            return frame
        held = qp_map >= threshold
        period = self.config.hold_refresh_frames
        if period:
            columns = np.arange(held.shape[1])
            held &= ((columns + self._hold_phase) % period != 0)[None, :]
        if not held.any():
            return frame
        height, width = frame.shape[:2]
        if self.config.hold_max_change < 255.0:
            change = cv2.absdiff(frame, previous).mean(axis=2, dtype=np.float32)
            held &= _macroblock_means(change, held.shape) <= self.config.hold_max_change
        self.last_held_macroblocks = int(held.sum())
        if not self.last_held_macroblocks:
            return frame
        pixels = np.repeat(np.repeat(held, MACROBLOCK_SIZE, 0), MACROBLOCK_SIZE, 1)
        # one pass (a boolean-index copy takes ~4x as long: 11 vs 2.8 ms at 960x540)
        return np.where(pixels[:height, :width, None], previous, frame)

    def frames_to_periodic_idr(self) -> int | None:
        """Frames until x264's next IDR of its own (0: the next frame is one; None: none
        will come, the stream refreshes with intra refresh or not at all)."""
        if self._since_idr is None:
            return 0
        if self._encoder.config.refresh != "idr":
            return None
        return max(self._encoder.config.gop_frames - self._since_idr - 1, 0)

    def next_is_idr(self) -> bool:
        """Whether x264 will make the next frame an IDR on its own (the first frame of an
        encoder, or keyint frames after the last IDR when the refresh is by IDR; scenecut is
        off unless configured)."""
        return self.frames_to_periodic_idr() == 0

    def _scaled(self, qp_map: np.ndarray | None, idr: bool) -> np.ndarray | None:
        """The offsets at the frame kind's scale and the map's fade (last_map_scale), rounded
        once."""
        scale = self.config.idr_offset_scale if idr else self.config.p_offset_scale
        scale *= self.last_map_scale
        if qp_map is None or scale == 1.0:
            return qp_map
        scaled = np.rint(qp_map.astype(np.float32) * scale)
        return np.clip(scaled, -MAX_ABS_QP_OFFSET, MAX_ABS_QP_OFFSET).astype(np.int8)

    def flow_seq_of(self, frame_seq: int) -> int | None:
        """The flow frame an encoded frame was (None: unknown or forgotten)."""
        return self._flow_seq_of.get(frame_seq)

    def _ensure_encoder(self, width: int, height: int, pixel_format: str) -> None:
        """An encoder for this size, channel order and AQ strength; the old one is closed
        only once the new one is open (a failed build leaves the stream as it was)."""
        current = self._encoder
        if current is not None and (
            (current.width, current.height, current.pixel_format, current.config.aq_strength)
            == (width, height, pixel_format, self._x264_aq_strength())
        ):
            return
        base = current.config if current is not None else self.config.encoder
        config = replace(base, aq_strength=self._x264_aq_strength())
        if self._base_quality is not None and config.rate_control == "crf":
            config = replace(config, crf=self._base_quality)
        elif self._base_quality is not None:
            config = replace(config, bitrate_kbps=round(self._base_quality))
        replacement = QPMapEncoder(config, width, height, pixel_format)
        if current is not None:
            current.close()
            if macroblock_grid(current.width, current.height) != replacement.grid:
                self._pending_map = self._active_map = None
        self._encoder = replacement
        self._since_idr = None  # a new encoder starts with an IDR
        self._previous_input, self._hold_phase = None, 0
        self._reconstruction: H264Decoder | None = None  # hold_source "decoded": our own stream
        if self._warper is None or (self._warper.width, self._warper.height) != (width, height):
            self._warper = None
            if self.config.warp_qp_map:
                self._flow = self._flow_for(width, height)
                self._warper = QPMapWarper(self._flow)
                self._flow_seq_of.clear()
        if self._active_map is not None and self._pending_map is None:
            self._pending_map, self._active_map = self._active_map, None

    def _flow_for(self, width: int, height: int) -> FrameFlow:
        if self._shared_flow is not None:
            return self._shared_flow  # its size was checked in encode
        return FrameFlow(width, height, self.config.warp)

    def _adopt_pending_map(self) -> None:
        update, self._pending_map = self._pending_map, None
        if update is None:
            return
        if update.offsets.shape != self._encoder.grid:
            return  # computed for a picture size this stream no longer has
        if update.aq_strength and update.aq_strength != self._aq_strength:
            if self._aq_fades:  # computed per frame here: no new encoder
                self._aq_strength = update.aq_strength
            else:
                self._switch_aq_strength(update.aq_strength)
        self._active_map = update
        if self._warper is not None:
            source = self._flow_seq_of.get(update.source_frame_seq, -1)
            self._warper.set_map(update.offsets, source)

    def _switch_aq_strength(self, aq_strength: float) -> None:
        """Re-open the encoder with another AQ strength (x264's reconfig cannot change it);
        the new encoder starts with an IDR picture. On failure the old one keeps running."""
        previous, self._aq_strength = self._aq_strength, aq_strength
        encoder = self._encoder
        try:
            self._ensure_encoder(encoder.width, encoder.height, encoder.pixel_format)
        except (ValueError, RuntimeError):
            self._aq_strength = previous
            raise

    def _map_for(self, capture_stamp_s: float) -> tuple[np.ndarray | None, int]:
        """The map for this frame (warped to it when the robot has flow) and its sequence;
        sets last_map_scale, the fade _scaled applies. A map past max_map_age_s is not
        applied."""
        self.last_map_ms = 0.0
        self.last_map_scale = 1.0
        active = self._active_map
        if active is None:
            return None, 0
        fresh = abs(capture_stamp_s - active.source_stamp_s) <= self.config.max_map_age_s
        if not fresh:
            return None, 0
        if self._warper is None:
            return active.offsets, active.map_seq
        started = time.perf_counter()
        qp_map = self._warper.current_map()
        fade_px = self.config.map_fade_px
        if fade_px and qp_map is not None:
            self.last_map_scale = fade_px / (fade_px + self._warper.displacement_px())
        self.last_map_ms = 1e3 * (time.perf_counter() - started)
        return qp_map, active.map_seq

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None


def _check_frame(frame: object) -> tuple[int, int]:
    """(height, width) of a usable camera frame; ValueError naming what is wrong otherwise."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"frame must be an HxWx3 uint8 array, got shape {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    height, width = frame.shape[:2]
    if not (2 <= width <= MAX_PICTURE_SIDE_PX and 2 <= height <= MAX_PICTURE_SIDE_PX):
        raise ValueError(
            f"frame of {width}x{height} px: each side must be in 2..{MAX_PICTURE_SIDE_PX}"
        )
    return height, width


def _macroblock_means(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mean of a HxW array over each 16x16 macroblock of `grid` (partial ones at the
    right and bottom edges over the pixels they have)."""
    rows, cols = grid
    height, width = values.shape
    padded = np.zeros((rows * MACROBLOCK_SIZE, cols * MACROBLOCK_SIZE), np.float64)
    counts = np.zeros_like(padded)
    padded[:height, :width] = values
    counts[:height, :width] = 1.0
    shape = (rows, MACROBLOCK_SIZE, cols, MACROBLOCK_SIZE)
    return padded.reshape(shape).sum((1, 3)) / counts.reshape(shape).sum((1, 3))


def blurred_where_unimportant(
    frame: np.ndarray, qp_map: np.ndarray | None, sigma_px: float, full_offset_qp: float
) -> np.ndarray:
    """`frame` (HxWx3 uint8) blended towards its Gaussian blur (sigma_px) by each macroblock's
    offset over full_offset_qp, clipped to [0, 1], the weights bilinear between macroblock
    centres; the frame itself where no macroblock has a positive offset."""
    if qp_map is None or sigma_px <= 0.0:
        return frame
    weights = np.clip(qp_map.astype(np.float32) / float(full_offset_qp), 0.0, 1.0)
    if not weights.any():
        return frame
    rows, cols = weights.shape
    height, width = frame.shape[:2]
    per_pixel = cv2.resize(
        weights, (cols * MACROBLOCK_SIZE, rows * MACROBLOCK_SIZE), interpolation=cv2.INTER_LINEAR
    )[:height, :width, None]
    blur = cv2.GaussianBlur(frame, (0, 0), sigma_px).astype(np.float32)
    source = frame.astype(np.float32)
    return np.rint(source + per_pixel * (blur - source)).astype(np.uint8)


def _raised(qp_map: np.ndarray | None, extra_qp: int, height: int, width: int) -> np.ndarray:
    """The map (all zero if None) with extra_qp added to every macroblock, within x264's range."""
    base = np.zeros(macroblock_grid(width, height), np.int16) if qp_map is None else qp_map
    raised = base.astype(np.int16) + int(extra_qp)
    return np.clip(raised, -MAX_ABS_QP_OFFSET, MAX_ABS_QP_OFFSET).astype(np.int8)
