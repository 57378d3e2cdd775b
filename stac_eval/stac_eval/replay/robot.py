"""The robot of the replay: what it sends for each camera frame and which mask it holds.

H.264 methods run the encoder node's core, `RobotLoop` (flow, keyframe decision, the QP map
warped by flow, x264, the edge's newest mask warped to every camera frame), with the node's
`QPMapReceiver` in front of it for maps. JPEG runs OpenCV's encoder as
compressed_image_transport does, with the same flow and mask propagation as `RobotLoop`
(`FrameFlow`, `MaskPropagator`, masks dropped at scene cuts), so that every method can have
this suite's robot.

Each robot holds two masks of every camera frame: the warped one (its `RobotLoop`, the suite's
robot: `--robot warp`) and the held one (the newest mask back, as it came: what a user of
today's transports has, `--robot held`). Both come from the same masks arriving at the same
times; the robot's decisions never depend on which one is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from stac_codec.h264_encoder import EncoderConfig
from stac_encoder.frame_flow import FrameFlow
from stac_encoder.keyframes import SceneCuts
from stac_encoder.mask_warp import MaskPropagator, PropagatedMask
from stac_encoder.qp_map_receiver import QPMapReceiver, ReceivedMapFields
from stac_encoder.rate_control import RateControlConfig, resolve_refresh
from stac_encoder.robot_encoder import MapVerdict, QPMapUpdate, RobotEncoderConfig
from stac_encoder.robot_loop import RobotLoop, RobotLoopConfig
from stac_eval.baselines import jpeg_round_trip
from stac_eval.replay.wire import compressed_image_bytes, encoded_frame_bytes
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH
from stac_sensitivity.feedback import FeedbackMap


@dataclass(frozen=True)
class EdgeUnit:
    """What one uplink message carries to the edge: the camera frame `index` (its position in
    the run), its frame_seq,
    the H.264 access unit (bytes) or the decoded JPEG (HxWx3 RGB), the picture size."""

    index: int
    frame_seq: int
    payload: object
    width: int
    height: int


@dataclass(frozen=True)
class Uplinked:
    """The message a camera frame put on the uplink: its serialized size, what the edge gets,
    whether it is an intra picture, its bytes for a bag, the robot's encode time (s,
    ReplaySettings.robot_encode_ms: the far or the near figure) and whether x264 ran the far
    preset's analysis on it."""

    size_bytes: int
    unit: EdgeUnit
    keyframe: bool
    data: bytes
    encode_s: float = 0.0
    far: bool = False


@dataclass(frozen=True)
class RobotFrame:
    """One camera frame at the robot: what it sent (None: kept, keyframe mode), its warped
    mask (None before the first), the held mask and the frame it came from (-1: none), the
    encoder's base quality."""

    uplinked: Uplinked | None
    warped: PropagatedMask | None
    held: np.ndarray | None
    held_source: int
    crf: float


class HeldMask:
    """The newest mask back, by the frame it was computed on, as it came."""

    def __init__(self) -> None:
        self.class_ids: np.ndarray | None = None
        self.source_index = -1

    def submit(self, class_ids: np.ndarray, source_index: int) -> None:
        if source_index >= self.source_index:
            self.class_ids, self.source_index = class_ids, source_index


def robot_aq_strength(method, settings) -> float:
    """The x264 AQ strength a method's robot starts at: the method's own, or for a map method
    under the map-only strength, settings.map_aq_strength where set (the maps ask for it)."""
    if method.maps and settings.map_aq_strength and method.aq_strength == MAP_ONLY_AQ_STRENGTH:
        return float(settings.map_aq_strength)
    return method.aq_strength


class H264Robot:
    """The encoder node's core over H.264, stream or keyframe mode."""

    def __init__(self, method, budget: float, settings, max_abs_offset_qp: int) -> None:
        encoder = EncoderConfig(
            rate_control=settings.rate_control if settings.target_steps else "crf",
            crf=float(budget),
            bitrate_kbps=max(1, round(settings.target_steps[0][1]))
            if settings.target_steps
            else 2000,
            fps=settings.fps,
            preset=settings.preset,
            gop_frames=settings.gop_frames,
            refresh=resolve_refresh(settings.refresh, bool(settings.target_steps)),
            mbtree=settings.mbtree,
            threads=1,  # deterministic bitstreams
            aq_strength=robot_aq_strength(method, settings),
        )
        encoder = replace(encoder, **dict(settings.encoder_options))
        target = settings.target_steps[0][1] if settings.target_steps else 0.0
        self.loop = RobotLoop(
            RobotLoopConfig(
                mode=method.mode,
                encoder=RobotEncoderConfig(
                    **{
                        "encoder": encoder,
                        "warp_qp_map": bool(method.maps) and settings.warp_qp_map,
                        "warp": settings.flow,
                        "idr_offset_scale": settings.idr_offset_scale,
                        "p_offset_scale": settings.p_offset_scale,
                        "map_fade_px": settings.map_fade_px,
                        "aq_motion_fade_px": settings.aq_motion_fade_px,
                        **dict(settings.robot_options),
                    }
                ),
                flow=settings.flow,
                keyframes=settings.keyframes,
                drop_masks_at_cuts=settings.drop_masks_at_cuts,
                rate=RateControlConfig(
                    target_kbps=target if encoder.rate_control == "crf" else 0,
                    overhead_bytes=encoded_frame_bytes(0),
                ),
            )
        )
        self.receiver = QPMapReceiver(max_abs_offset_qp) if method.maps else None
        self.encode_ms = settings.robot_encode_ms
        self.loop.assume_encode_s(1e-3 * self.encode_ms[0], 1e-3 * self.encode_ms[1])
        self.held = HeldMask()
        self._index_of_seq: dict[int, int] = {}

    def capture(self, position: int, image: np.ndarray, capture_s: float) -> RobotFrame:
        """Camera frame number `position` (0, 1, ... in order) captured at `capture_s`."""
        outcome = self.loop.process(image, capture_s)
        uplinked = None
        encoded = outcome.encoded
        if encoded is not None:
            self._index_of_seq[encoded.frame_seq] = position
            unit = EdgeUnit(
                position, encoded.frame_seq, encoded.packet.data, encoded.width, encoded.height
            )
            size = encoded_frame_bytes(encoded.packet.size_bytes)
            near_ms, far_ms = self.encode_ms
            encode_s = 1e-3 * (far_ms if encoded.packet.far else near_ms)
            uplinked = Uplinked(
                size,
                unit,
                encoded.packet.keyframe,
                encoded.packet.data,
                encode_s,
                encoded.packet.far,
            )
        return RobotFrame(
            uplinked,
            outcome.mask,
            self.held.class_ids,
            self.held.source_index,
            float(self.loop.encoder.base_quality),
        )

    def receive_map(
        self, sent: FeedbackMap, source_frame_seq: int, source_stamp_s: float, aq_strength: float
    ) -> MapVerdict | None:
        """The QPMap subscription: None when the receiver or the encoder refused the map."""
        try:
            level_map = self.receiver.receive(received_fields(sent))
            return self.loop.submit_qp_map(
                QPMapUpdate(
                    map_seq=sent.map_seq,
                    source_frame_seq=source_frame_seq,
                    source_stamp_s=source_stamp_s,
                    offsets=level_map.offsets_qp,
                    session_id=sent.session_id,
                    aq_strength=aq_strength,
                )
            )
        except ValueError:  # MapRejectedError or the encoder's own checks
            return None

    def receive_mask(self, class_ids: np.ndarray | None, frame_seq: int) -> None:
        """The SegmentationMask subscription (None: a keep, the mask held goes on)."""
        if class_ids is None:
            self.loop.mask_kept(frame_seq)
            return
        self.loop.submit_mask(class_ids, frame_seq)
        index = self._index_of_seq.get(frame_seq)
        if index is not None:
            self.held.submit(class_ids, index)

    def request_keyframe(self) -> None:
        self.loop.request_keyframe()

    def set_target_kbps(self, target_kbps: float) -> None:
        self.loop.set_target_kbps(target_kbps)

    def close(self) -> None:
        self.loop.close()


class JpegRobot:
    """JPEG per frame (compressed_image_transport), with the robot loop's mask propagation."""

    def __init__(self, quality: int, settings) -> None:
        self.quality = int(quality)
        self.flow_config = settings.flow
        self.cut_config = settings.keyframes if settings.drop_masks_at_cuts else None
        self.flow: FrameFlow | None = None
        self.masks: MaskPropagator | None = None
        self.cuts: SceneCuts | None = None
        self.held = HeldMask()
        self.record = False  # keep each frame's JPEG bytes (for a bag)

    def _ensure_flow(self, width: int, height: int) -> None:
        if self.flow is None or (self.flow.width, self.flow.height) != (width, height):
            self.flow = FrameFlow(width, height, self.flow_config)
            self.masks = MaskPropagator(self.flow)
            if self.cut_config is not None:
                self.cuts = SceneCuts(self.flow, self.cut_config)

    def capture(self, position: int, image: np.ndarray, capture_s: float) -> RobotFrame:
        """Camera frame number `position` (0, 1, ... in order); frame_seq = position + 1."""
        del capture_s  # JPEG frames carry no state from one to the next
        height, width = image.shape[:2]
        self._ensure_flow(width, height)
        frame_seq = position + 1
        self.flow.add_frame(frame_seq, image)
        if self.cuts is not None and self.cuts.at_current():
            self.masks.scene_cut(frame_seq)
        decoded, data_bytes = jpeg_round_trip(image, self.quality)
        unit = EdgeUnit(position, frame_seq, decoded, width, height)
        data = _jpeg_bytes(image, self.quality) if self.record else b""
        uplinked = Uplinked(compressed_image_bytes(data_bytes), unit, True, data)
        return RobotFrame(
            uplinked, self.masks.current(), self.held.class_ids, self.held.source_index, math.nan
        )

    def receive_map(self, *args) -> MapVerdict | None:
        raise TypeError("JPEG takes no QP map")

    def receive_mask(self, class_ids: np.ndarray | None, frame_seq: int) -> None:
        if class_ids is None:  # a keep: the mask held goes on
            return
        self.masks.set_mask(class_ids, frame_seq)
        self.held.submit(class_ids, frame_seq - 1)

    def request_keyframe(self) -> None:
        """Every JPEG is a keyframe."""

    def set_target_kbps(self, target_kbps: float) -> None:
        raise TypeError("JPEG has no bitrate target")

    def close(self) -> None:
        """Nothing to release."""


def received_fields(sent: FeedbackMap) -> ReceivedMapFields:
    """What the robot's receiver reads from the QPMap message (as qp_map_message fills it)."""
    level_map = sent.level_map
    rows, cols = level_map.shape
    largest = max(abs(level) for level in level_map.levels_qp) + abs(level_map.budget_shift_qp)
    return ReceivedMapFields(
        session_id=sent.session_id,
        map_seq=sent.map_seq,
        reference_map_seq=sent.reference_map_seq,
        rows=rows,
        cols=cols,
        max_abs_offset_qp=min(largest, 51),
        data=sent.data,
    )


def _jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes() if ok else b""
