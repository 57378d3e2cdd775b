"""One method at one operating point over a recording: robot, link and edge, event by event.

The one event simulator of the project: `stac-replay run` (the system comparison) and
`stac-bench temporal` both drive `PointReplay`. Its parts, each in its own module:

- `events`: the simulated clock's event queue (edge arrivals and job ends; the robot's inbox);
- `link`: the uplink bottleneck with its queue, delay and loss; the downlink's delay and loss;
- `robot`: the encoder node's core (`RobotLoop`: flow, keyframe decision, the QP map warped,
  x264, the edge's masks warped to every frame) or JPEG per frame, and the held mask;
- `edge`: the edge container's decoder, resync, the segmenter's worker and the map worker
  below it with the map pacing (`MapEdge`), and the edge profile's compute times
  (`edge_profile`);
- `accounting`: every frame's bytes both ways (serialized messages, `wire`) and its fate;
- `accuracy`: decoded and timely (warped and held) confusions of every frame.

Each camera frame is captured at its recorded time: the robot first acts on everything that
reached it by then (maps, masks, keyframe requests, in arrival order), then processes the
frame; whatever it sends takes the uplink. Deterministic: no wall clock enters the simulation;
times come from the recording, the link model and the edge profile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from stac_codec.overlay import mask_overlay
from stac_edge_segmenter.loading import SegmentationModel
from stac_encoder.frame_flow import FlowConfig
from stac_encoder.frame_sources import SourceFrame
from stac_encoder.keyframes import KeyframeConfig
from stac_encoder.robot_encoder import MapVerdict, RobotEncoderConfig
from stac_eval.replay.accounting import DECODED, DROPPED, LOST, FrameLedger, PointResult
from stac_eval.replay.accuracy import DecodedMasks, Scorer
from stac_eval.replay.edge import DONE, MAP_DONE, Edge, MapEdge, Outgoing
from stac_eval.replay.edge_profile import EdgeTiming
from stac_eval.replay.events import EventQueue
from stac_eval.replay.link import Downlink, LinkConfig, Uplink
from stac_eval.replay.robot import H264Robot, JpegRobot
from stac_eval.replay.truth import encode_mask
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH
from stac_sensitivity.map_pacing import MAP_WORKER_NICE
from stac_sensitivity.online import QPMapComputer, qp_heatmap

X264_AQ_STRENGTH = 1.0  # x264's default variance AQ
ARRIVAL = "edge_arrival"
BYTES_COLUMN = {"map": "map_bytes", "mask": "mask_bytes", "request": "request_bytes"}


@dataclass(frozen=True)
class Method:
    """A transport: 'h264' (with `maps` None, 'stac' or 'two_level') or 'jpeg'; knob: the
    budget it sweeps ('crf' or 'quality'); mode: the robot's 'stream' (every frame) or
    'keyframe' (only stale frames, STAC's scheme)."""

    name: str
    transport: str
    knob: str
    maps: str | None = None
    mode: str = "stream"
    aq_strength: float = MAP_ONLY_AQ_STRENGTH
    description: str = ""


METHODS = {
    "uniform": Method(
        "uniform", "h264", "crf", description="H.264, no map (AQ at 0.001: same encoder as STAC)"
    ),
    "x264_aq": Method(
        "x264_aq", "h264", "crf", aq_strength=X264_AQ_STRENGTH, description="x264 variance AQ 1.0"
    ),
    "two_level": Method(
        "two_level",
        "h264",
        "crf",
        maps="two_level",
        description="AccMPEG-style map: top 40% sensitive macroblocks -6 QP, rest +6, fed back",
    ),
    "jpeg": Method("jpeg", "jpeg", "quality", description="JPEG per frame (image_transport)"),
    "stac": Method(
        "stac", "h264", "crf", maps="stac", description="STAC stream mode (map every N frames)"
    ),
    "uniform_keyframe": Method(
        "uniform_keyframe",
        "h264",
        "crf",
        mode="keyframe",
        description="keyframe mode (only stale frames travel), no map",
    ),
    "stac_keyframe": Method(
        "stac_keyframe",
        "h264",
        "crf",
        maps="stac",
        mode="keyframe",
        description="STAC keyframe mode, as the robot runs it (maps on keyframes)",
    ),
}
BASELINES = ("uniform", "x264_aq", "two_level", "jpeg")
STAC_METHODS = ("stac", "stac_keyframe", "uniform_keyframe")


@dataclass(frozen=True)
class ReplaySettings:
    """Everything but the method, budget, link and edge timing that shapes a run; the defaults
    are the nodes' (test_replay_mirrors_nodes). decoded_stride: score the model on every n-th
    decoded frame (0: none); target_steps: a bitrate target, (seconds from the start, kbit/s)
    steps, with rate_control 'crf' (the robot's outer loop) or 'bitrate' (x264's ABR)."""

    fps: float
    gop_frames: int = 50
    refresh: str = "auto"  # the encoder node's refresh (resolve_refresh) and mbtree
    mbtree: bool = False
    preset: str = "veryfast"
    period_frames: int = 5
    min_map_interval_s: float = 1.0
    max_compute_share: float = 0.5
    map_worker_nice: int = MAP_WORKER_NICE
    two_level_top_fraction: float = 0.4
    max_abs_offset_qp: int = 30
    warp_qp_map: bool = True
    map_fade_px: float = RobotEncoderConfig.map_fade_px
    aq_motion_fade_px: float = RobotEncoderConfig.aq_motion_fade_px
    flow: FlowConfig = field(default_factory=FlowConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    drop_masks_at_cuts: bool = True
    hysteresis_levels: int = 1
    key_map_interval: int = 10
    keyframe_request_interval_s: float = 0.5
    batch_size: int = 1
    idr_offset_scale: float = 1.0
    p_offset_scale: float = 1.0
    decoded_stride: int = 1
    target_steps: tuple[tuple[float, float], ...] = ()
    rate_control: str = "crf"
    # the robot's x264 time per frame, ms: (a frame of the stream preset, a far keyframe with
    # keyframe mode's far preset); a frame enters the uplink when the robot has encoded it and
    # the frames before it (`robot_timing`); (0, 0): at capture
    robot_encode_ms: tuple[float, float] = (0.0, 0.0)
    # x264 AQ strength the maps ask the robot for, for every map method alike (stac,
    # two_level, stac_keyframe; the sensitivity node's map_aq_strength): 0 = the
    # calibration's; 1.0 = the map's offsets on top of x264's variance AQ. A map method's
    # robot also starts at it (its encoder's aq_strength), so no re-open at the first map.
    map_aq_strength: float = 0.5
    # EncoderConfig / RobotEncoderConfig fields set for every H.264 method alike, e.g.
    # (("refresh", "none"),): settings tried against the codec's defaults (a robot option
    # wins over the field of the same name above)
    encoder_options: tuple[tuple[str, object], ...] = ()
    robot_options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.map_aq_strength <= 3.0:
            raise ValueError(
                f"map_aq_strength must be 0 (the calibration's) or in (0, 3], "
                f"got {self.map_aq_strength}"
            )
        if not 0 <= self.map_worker_nice <= 19:  # the nodes' map_worker_nice range
            raise ValueError(f"map_worker_nice must be in 0..19, got {self.map_worker_nice}")

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class Recording:
    """What a bag of the run needs (collected only for the chosen operating point)."""

    video: list[tuple[float, float, bytes, bool]] = field(default_factory=list)  # log, stamp
    masks: list[tuple[float, float, int]] = field(default_factory=list)  # log, stamp, frame
    mask_png: dict[int, bytes] = field(default_factory=dict)  # frame -> PNG class ids
    overlays: dict[int, bytes] = field(default_factory=dict)  # frame -> JPEG
    heatmaps: list[tuple[float, float, bytes]] = field(default_factory=list)  # log, stamp, JPEG


class PointReplay:
    """Runs one method at one operating point over the frames; see the module docstring."""

    def __init__(
        self,
        method: Method,
        budget: float,
        settings: ReplaySettings,
        link: LinkConfig,
        timing: EdgeTiming,
        model: SegmentationModel,
        computer: QPMapComputer | None,
        truth,
        labels: dict | None = None,
        record: bool = False,
        decoded_cache=None,
    ) -> None:
        self.method = method
        self.budget = float(budget)
        self.settings = settings
        self.model = model
        self.computer = computer
        self.uplink = Uplink(link)
        self.downlink = Downlink(link)
        self.recording = Recording() if record else None
        self.ledger = FrameLedger()
        self.scorer = Scorer(truth, labels, model.num_classes)
        self.masks = DecodedMasks(model, settings.batch_size, decoded_cache, self._decoded_mask)
        self.edge_events = EventQueue()
        self.robot_inbox = EventQueue()
        if method.transport == "jpeg":
            self.robot = JpegRobot(int(budget), settings)
            self.robot.record = record
        else:
            self.robot = H264Robot(method, budget, settings, settings.max_abs_offset_qp)
        map_edge = MapEdge(method, computer, settings) if method.maps else None
        self.edge = Edge(
            method,
            timing,
            self.masks,
            map_edge,
            self.ledger,
            self.edge_events,
            settings.keyframe_request_interval_s,
            self._decoded,
        )
        # x264's AQ strength a map asks for: the calibration's, unless the method runs its own
        self.map_aq_strength = 0.0
        if computer is not None and method.aq_strength == MAP_ONLY_AQ_STRENGTH:
            self.map_aq_strength = settings.map_aq_strength or computer.aq_strength
        self.counters = dict.fromkeys(
            (
                "sent",
                "keyframes",
                "far_encoded",
                "maps_sent",
                "maps_lost",
                "maps_applied",
                "maps_refused",
                "masks_sent",
                "masks_lost",
                "keyframe_requests_lost",
            ),
            0,
        )
        self._target_step = 1
        self._robot_free_s = -math.inf  # when the robot's encoder finishes its last frame

    # --- driving ---------------------------------------------------------------------------

    def run(self, frames: Iterable[SourceFrame], progress=None) -> PointResult:
        """frames: objects with .index (the source frame: its truth and label), .offset_s
        (non-decreasing) and .image; the ledger numbers them 0, 1, ... as they come."""
        for frame in frames:
            self._edge_until(frame.offset_s)
            self._apply_target(frame.offset_s)
            self._capture(frame)
            if progress is not None:
                progress.update(1)
        self._edge_until(math.inf)
        self.masks.flush()
        self.robot.close()
        counters = {**self.counters, **self.edge.counters}
        point = {"budget": self.budget}
        if self.method.mode == "keyframe":
            point["stale_psnr_db"] = self.settings.keyframes.stale_psnr_db
        return PointResult(
            self.method.name,
            self.budget,
            self.ledger.arrays(),
            self.scorer.arrays(len(self.ledger)),
            counters,
            point,
        )

    def _edge_until(self, time_s: float) -> None:
        for event in self.edge_events.pop_until(time_s):
            if event.kind == DONE:
                outgoing = self.edge.done(event.time_s)
            elif event.kind == MAP_DONE:
                outgoing = self.edge.map_done(event.time_s, event.payload)
            else:
                outgoing = self.edge.arrive(event.time_s, event.payload)
            for message in outgoing:
                self._send_back(message)

    def _apply_target(self, now_s: float) -> None:
        steps = self.settings.target_steps
        while self._target_step < len(steps) and now_s >= steps[self._target_step][0]:
            self.robot.set_target_kbps(steps[self._target_step][1])
            self._target_step += 1

    # --- robot -----------------------------------------------------------------------------

    def _capture(self, frame: SourceFrame) -> None:
        now = frame.offset_s
        index = self.ledger.append(capture_s=now)
        self.scorer.truth_index.append(frame.index)
        self._robot_receive(now)
        state = self.robot.capture(index, frame.image, now)
        warped = state.warped
        self.ledger.set(index, "crf", state.crf)
        self.ledger.set(index, "mask_age", -1 if warped is None else warped.age_frames)
        self.ledger.set(index, "held_frame", state.held_source)
        self.scorer.score("timely", index, None if warped is None else warped.class_ids)
        self.scorer.score("timely_held", index, state.held)
        sent = state.uplinked
        if sent is None:
            return
        self.counters["sent"] += 1
        self.counters["keyframes"] += int(sent.keyframe)
        self.counters["far_encoded"] += int(sent.far)
        self.ledger.set(index, "idr", sent.keyframe and self.method.transport == "h264")
        self._robot_free_s = max(now, self._robot_free_s) + sent.encode_s
        self.ledger.set(index, "encoded_s", self._robot_free_s)
        delivery = self.uplink.send(self._robot_free_s, sent.size_bytes)
        self.ledger.set(
            index, "uplink_bytes", 0 if delivery.status == "dropped" else sent.size_bytes
        )
        if delivery.queueing_s is not None:
            self.ledger.set(index, "queueing_s", delivery.queueing_s)
        status = {"delivered": DECODED, "lost": LOST, "dropped": DROPPED}[delivery.status]
        self.ledger.set(index, "status", status)
        if delivery.delivered:
            self.edge_events.push(delivery.arrival_s, ARRIVAL, sent.unit)
            if self.recording is not None:
                self.recording.video.append((delivery.arrival_s, now, sent.data, sent.keyframe))

    def _robot_receive(self, now_s: float) -> None:
        """Act on everything that reached the robot by `now_s`, in arrival order: keyframe
        requests (the encoder node's service), maps (its QPMap subscription) and masks (its
        SegmentationMask subscription)."""
        for event in self.robot_inbox.pop_until(now_s):
            message: Outgoing = event.payload
            if message.kind == "request":
                self.robot.request_keyframe()
            elif message.kind == "map":
                sent, frame_seq, stamp_s, _ = message.payload
                verdict = self.robot.receive_map(sent, frame_seq, stamp_s, self.map_aq_strength)
                applied = verdict is not None and verdict is not MapVerdict.STALE
                self.counters["maps_applied" if applied else "maps_refused"] += 1
            else:
                class_ids, frame_seq, _ = message.payload
                self.robot.receive_mask(class_ids, frame_seq)
                self.ledger.set(message.index, "mask_arrival_s", event.time_s)
                if self.recording is not None:
                    stamp_s = self.ledger.get(message.index, "capture_s")
                    self.recording.masks.append((event.time_s, stamp_s, message.index))

    # --- edge ------------------------------------------------------------------------------

    def _decoded(self, index: int, image: np.ndarray) -> None:
        stride = self.settings.decoded_stride
        if stride and index % stride == 0:
            self.masks.add(index, image)

    def _decoded_mask(self, index: int, class_ids: np.ndarray) -> None:
        stride = self.settings.decoded_stride
        if stride and index % stride == 0 and not self.scorer.is_scored("decoded", index):
            self.scorer.score("decoded", index, class_ids)

    def _send_back(self, message: Outgoing) -> None:
        """A message from the edge onto the downlink, charged to its frame."""
        self.ledger.add(message.index, BYTES_COLUMN[message.kind], message.size_bytes)
        kind = message.kind
        if kind in ("map", "mask"):
            self.counters[f"{kind}s_sent"] += 1
        delivery = self.downlink.send(message.time_s, message.size_bytes)
        if not delivery.delivered:
            self.counters[
                {"map": "maps_lost", "mask": "masks_lost", "request": "keyframe_requests_lost"}[
                    kind
                ]
            ] += 1
            return
        self.robot_inbox.push(delivery.arrival_s, kind, message)
        if self.recording is not None:
            self._record(message, delivery.arrival_s)

    def _record(self, message: Outgoing, arrival_s: float) -> None:
        stamp_s = self.ledger.get(message.index, "capture_s")
        if message.kind == "map" and self.computer is not None:
            sent, _, _, image = message.payload
            heatmap = qp_heatmap(image, sent.level_map.offsets_qp, self.computer.max_offset_qp)
            self.recording.heatmaps.append((arrival_s, stamp_s, _jpeg_rgb(heatmap)))
        elif message.kind == "mask" and message.payload[0] is not None:  # not a keep
            class_ids, _, image = message.payload
            self.recording.mask_png[message.index] = encode_mask(class_ids)
            overlay = mask_overlay(image, class_ids, self.model.palette)
            self.recording.overlays[message.index] = _jpeg_rgb(overlay)


def _jpeg_rgb(rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return data.tobytes() if ok else b""
