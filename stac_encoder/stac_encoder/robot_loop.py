"""The robot, frame by frame: flow once, then the map, the keyframe decision, the encoder and
the mask, in one plain-Python core (no ROS) that `encoder_node` wraps and the evaluation drives.

For every camera frame:

1. `FrameFlow` computes its backward DIS flow to the previous camera frame (once; the map
   warper, the mask warper and the keyframe decision all read it);
2. stream mode: the frame is encoded (P-frames, an IDR every gop_frames); keyframe mode:
   `KeyframeSelector` decides whether it travels (stale, cut, interval, edge free) and only
   keyframes reach the encoder, which predicts each from the previous keyframe;
3. the encoder applies the edge's newest QP map, warped to this frame (`RobotEncoder`); a
   bitrate target, when set, moves the CRF frame by frame (`BitrateController`, or x264's
   own ABR when rate_control is "bitrate");
4. `MaskPropagator` warps the edge's newest mask to this frame: the robot's mask of every
   camera frame, with its age; at a scene cut (`SceneCuts`) the mask of the previous scene
   is dropped instead of warped into the new one.

Frame numbers: `flow_seq` counts camera frames (the flow's frames), `frame_seq` counts encoded
frames (what the edge sees; gapless, so the edge can tell a loss from a frame the robot kept).
Maps and masks come back naming a frame_seq; the loop translates it to the flow frame.
Not thread-safe: one caller.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from stac_encoder.frame_flow import FlowConfig, FrameFlow
from stac_encoder.keyframes import (
    FarWhenFree,
    KeyframeConfig,
    KeyframeDecision,
    KeyframeSelector,
    SceneCuts,
)
from stac_encoder.mask_warp import MaskPropagator, PropagatedMask
from stac_encoder.rate_control import BitrateController, RateControlConfig
from stac_encoder.robot_encoder import (
    EncodedFrameResult,
    MapVerdict,
    QPMapUpdate,
    RobotEncoder,
    RobotEncoderConfig,
    _check_frame,
)

MODES = ("stream", "keyframe")
PLACEHOLDER_SIDE = 16  # the flow's size before the first frame
STAGES = ("flow", "keyframe", "map_warp", "encode", "mask_warp")


@dataclass(frozen=True)
class RobotLoopConfig:
    """mode: 'stream' (every frame encoded) or 'keyframe' (only keyframes); propagate_masks:
    warp the edge's masks to every frame; drop_masks_at_cuts: at a scene cut (`SceneCuts`,
    the keyframe decision's detector, in either mode) drop the mask held, and refuse masks of
    frames before the cut, until the edge's mask of a frame after it arrives (flow cannot
    carry a mask into another scene; the robot holds none meanwhile); rate: the bitrate
    target (an outer loop on the CRF, used when encoder.encoder.rate_control is 'crf')."""

    mode: str = "stream"
    encoder: RobotEncoderConfig = field(default_factory=RobotEncoderConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    rate: RateControlConfig = field(default_factory=RateControlConfig)
    propagate_masks: bool = True
    drop_masks_at_cuts: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass
class FrameOutcome:
    """What the loop did with one camera frame. encoded: the access unit (None: not sent);
    mask: the robot's mask of this frame (None before the edge's first mask); stage_ms:
    wall time of each stage (STAGES) spent on this frame."""

    flow_seq: int
    capture_s: float
    encoded: EncodedFrameResult | None
    decision: KeyframeDecision | None
    mask: PropagatedMask | None
    mask_age_s: float | None
    stage_ms: dict[str, float]


class RobotLoop:
    """Flow, keyframe decision, map, encoder and mask for each camera frame."""

    def __init__(self, config: RobotLoopConfig | None = None) -> None:
        self.config = config or RobotLoopConfig()
        # sized by the first frame (and again whenever the picture size changes)
        self._flow = FrameFlow(PLACEHOLDER_SIDE, PLACEHOLDER_SIDE, self.config.flow)
        self._sized = False
        self._masks: MaskPropagator | None = None
        self._keyframes: KeyframeSelector | None = None
        self._cuts: SceneCuts | None = None
        encoder_config = self._encoder_config()
        self.encoder = RobotEncoder(encoder_config, flow=self._flow)
        self._flow_seq = 0
        self._capture_s: OrderedDict[int, float] = OrderedDict()  # flow_seq -> stamp
        self.rate = BitrateController(self.config.rate, self.config.encoder.encoder.crf)
        self._idr_requested = False
        self.far_when_free = (
            FarWhenFree()
            if self.config.mode == "keyframe"
            and encoder_config.far_gap_frames
            and self.config.keyframes.far_when_free
            else None
        )
        self._last_sent_flow_seq: int | None = None
        self._held_source_seq: int | None = None  # the mask held at the last camera frame
        self._encode_s: dict[bool, float] = {}  # near / far: the encoder's time, smoothed
        self._assumed_encode_s: dict[bool, float] | None = None

    def _encoder_config(self) -> RobotEncoderConfig:
        """The encoder's settings; in keyframe mode with the keyframes' far preset."""
        config, keyframes = self.config.encoder, self.config.keyframes
        far = keyframes.far_preset and keyframes.far_gap_frames
        if self.config.mode != "keyframe" or not far:
            return config
        encoder = replace(config.encoder, far_preset=keyframes.far_preset)
        return replace(config, encoder=encoder, far_gap_frames=keyframes.far_gap_frames)

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def flow(self) -> FrameFlow:
        return self._flow

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the camera frames now, None before the first: the size every
        mask from the edge must have."""
        return (self._flow.width, self._flow.height) if self._sized else None

    def _ensure_flow(self, width: int, height: int) -> None:
        if self._sized and (self._flow.width, self._flow.height) == (width, height):
            return
        self._flow.resize(width, height)
        self._sized = True
        self._masks = MaskPropagator(self._flow) if self.config.propagate_masks else None
        if self.config.mode == "keyframe":
            self._keyframes = KeyframeSelector(self._flow, self.config.keyframes)
        self._cuts = None
        if self.config.drop_masks_at_cuts and self._masks is not None:
            self._cuts = (
                self._keyframes.cuts
                if self._keyframes is not None
                else SceneCuts(self._flow, self.config.keyframes)
            )
        self._capture_s.clear()

    # --- inputs from the edge ------------------------------------------------------------

    def submit_qp_map(self, update: QPMapUpdate) -> MapVerdict:
        """A map from the edge (see RobotEncoder.submit_qp_map)."""
        return self.encoder.submit_qp_map(update)

    def submit_mask(self, class_ids: np.ndarray, source_frame_seq: int) -> bool:
        """The edge's mask of encoded frame `source_frame_seq`. Returns False when it is older
        than the mask held or its frame is no longer known (ignored; in keyframe mode it
        still tells the robot that the edge is free). ValueError for a wrong size."""
        if self._keyframes is not None:
            self._keyframes.answered(source_frame_seq)
        if self._masks is None:
            return False
        expected = (self._flow.height, self._flow.width)
        if getattr(class_ids, "shape", None) != expected:
            shape = getattr(class_ids, "shape", None)
            raise ValueError(f"a mask of shape {shape} for frames of shape {expected}")
        source = self.encoder.flow_seq_of(source_frame_seq)
        if source is None:
            return False
        return self._masks.set_mask(class_ids, source)

    def mask_kept(self, source_frame_seq: int) -> None:
        """The edge's keep for encoded frame `source_frame_seq` (a gated mask coding: its
        mask agrees with the last one it sent): the mask held goes on being carried; in
        keyframe mode it tells the robot that the edge is free, as a mask would."""
        if self._keyframes is not None:
            self._keyframes.answered(source_frame_seq)

    def request_keyframe(self) -> None:
        """The edge asks for an IDR picture (after a loss, or on joining)."""
        self._idr_requested = True
        if self._keyframes is not None:
            self._keyframes.request()

    def set_target_kbps(self, target_kbps: float) -> None:
        """A new bitrate target (0: constant quality at the current CRF); x264's own rate
        control when rate_control is 'bitrate', else the outer loop on the CRF."""
        if self.config.encoder.encoder.rate_control == "bitrate":
            if target_kbps <= 0:
                raise ValueError("rate_control 'bitrate' needs a target > 0")
            self.encoder.set_base_quality(target_kbps)
            self.rate.target_kbps = float(target_kbps)
            return
        self.rate.set_target(target_kbps)

    # --- the camera ------------------------------------------------------------------------

    def process(
        self, frame: np.ndarray, capture_s: float, pixel_format: str = "rgb24"
    ) -> FrameOutcome:
        """One camera frame (HxWx3 uint8, rgb24 or bgr24) captured at `capture_s` (camera
        clock, s). Raises ValueError (or EncoderError) for a frame it cannot take; nothing
        changes then."""
        height, width = _check_frame(frame)
        stage_ms = dict.fromkeys(STAGES, 0.0)
        started = time.perf_counter()
        if (
            self.config.encoder.encoder.rate_control == "crf"
            and self.rate.active
            and self.encoder.frame_seq == 0
        ):
            self.encoder.set_base_quality(self.rate.crf)
        self._ensure_flow(width, height)
        rgb = frame if pixel_format == "rgb24" else frame[..., ::-1]
        self._flow_seq += 1
        self._flow.add_frame(self._flow_seq, rgb)
        self._capture_s[self._flow_seq] = capture_s
        while len(self._capture_s) > self.config.flow.history_frames:
            self._capture_s.popitem(last=False)
        stage_ms["flow"] = _lap(started)

        decision = None
        send = True
        if self._keyframes is not None:
            started = time.perf_counter()
            decision = self._keyframes.decide(capture_s)
            send = decision.send
            stage_ms["keyframe"] = _lap(started)

        encoded = None
        if send:
            idr = self._idr_requested or (decision is not None and decision.idr)
            if idr:
                self.encoder.request_keyframe()
            idr_extra_qp = 0
            if self.rate.active and self.config.encoder.encoder.rate_control == "crf":
                idr = idr or self.encoder.next_is_idr()
                ahead = self.encoder.frames_to_periodic_idr() if self._keyframes is None else None
                crf = self.rate.next_crf(capture_s, idr, ahead)
                if crf != self.encoder.base_quality:
                    self.encoder.set_base_quality(crf)
                if idr:
                    idr_extra_qp = self.rate.idr_extra_qp(capture_s)
            started = time.perf_counter()
            crf_used = self.encoder.base_quality
            encoded = self.encoder.encode(
                frame,
                capture_s,
                pixel_format,
                self._flow_seq,
                idr_extra_qp=idr_extra_qp,
                far=self._far_anyway(),
            )
            stage_ms["encode"] = _lap(started)
            stage_ms["map_warp"] = self.encoder.last_map_ms
            stage_ms["encode"] -= stage_ms["map_warp"]
            if self.far_when_free is not None:  # the one reader of the encode times
                self._note_encode_s(encoded.packet.far, 1e-3 * stage_ms["encode"])
            self._idr_requested = False
            if self.config.encoder.encoder.rate_control == "crf":
                keyframe = encoded.packet.keyframe
                self.rate.frame_encoded(
                    encoded.packet.size_bytes,
                    capture_s,
                    keyframe,
                    crf_used + (idr_extra_qp if keyframe else 0),
                )
            if self._keyframes is not None:
                self._keyframes.sent(encoded.frame_seq, capture_s)
            if self.far_when_free is not None:
                self.far_when_free.sent(self._flow_seq, encoded.packet.far)
            self._last_sent_flow_seq = self._flow_seq

        mask, age_s = None, None
        if self._masks is not None:
            started = time.perf_counter()
            if self._cuts is not None and self._cuts.at_current():
                self._masks.scene_cut(self._flow_seq)
            mask = self._masks.current()
            stage_ms["mask_warp"] = _lap(started)
            self._note_held(mask)
            if mask is not None:
                source_s = self._capture_s.get(mask.source_seq)
                age_s = None if source_s is None else capture_s - source_s
        return FrameOutcome(self._flow_seq, capture_s, encoded, decision, mask, age_s, stage_ms)

    def _far_anyway(self) -> bool | None:
        """The far preset for a keyframe nearer than far_gap_frames when `FarWhenFree` says
        so (None: the encoder's own rule, by the gap)."""
        if self.far_when_free is None or self._last_sent_flow_seq is None:
            return None
        gap = self._flow_seq - self._last_sent_flow_seq
        if gap >= self.config.keyframes.far_gap_frames:
            return None
        encode_s = self._assumed_encode_s or self._encode_s
        extra_s = None
        if True in encode_s and False in encode_s:
            extra_s = encode_s[True] - encode_s[False]
        return self.far_when_free.choose(extra_s, self._frame_interval_s())

    def assume_encode_s(self, near_s: float, far_s: float) -> None:
        """Take these as the encoder's time for a near and a far frame instead of measuring
        it (the replay, which charges fixed figures)."""
        self._assumed_encode_s = {False: float(near_s), True: float(far_s)}

    def _note_encode_s(self, far: bool, seconds: float) -> None:
        previous = self._encode_s.get(far)
        self._encode_s[far] = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def _frame_interval_s(self) -> float | None:
        """The camera's frame interval: the last two capture stamps apart."""
        if len(self._capture_s) < 2:
            return None
        newest_first = reversed(self._capture_s.values())
        interval = next(newest_first) - next(newest_first)
        return interval if interval > 0 else None

    def _note_held(self, mask: PropagatedMask | None) -> None:
        """Tell `FarWhenFree` the age at which a new mask is first held."""
        source = None if mask is None else mask.source_seq
        new = source is not None and source != self._held_source_seq
        if new and self.far_when_free is not None:
            self.far_when_free.held(source, self._flow_seq)
        self._held_source_seq = source

    def capture_s_of(self, flow_seq: int) -> float | None:
        return self._capture_s.get(flow_seq)

    def close(self) -> None:
        self.encoder.close()


def _lap(started: float) -> float:
    return 1e3 * (time.perf_counter() - started)
