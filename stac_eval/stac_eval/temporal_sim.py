"""One robot configuration at one budget over a clip, event by event: the robot loop (flow,
keyframes, maps, encoder, masks), a link, and the edge (decoder, newest-frame or every-keyframe
worker, sensitivity passes), for `stac-bench temporal`.

It is the replay's event model (`stac_eval.replay.simulation`: the same link model, edge
timing, pseudo ground truth, sensitivity rule and wire sizes) around the robot's whole loop
(`stac_encoder.robot_loop.RobotLoop`) instead of its encoder alone, so that it covers what the
temporal half adds: keyframe mode, masks sent back (their bytes counted separately from the
maps') and warped to every camera frame, a bitrate target, offsets scaled per frame type.
Built beside the replay while the replay was still being finished; it imports the replay's
pieces and changes none of them.

Scoring, per camera frame: decoded mIoU (the model on the decoded frame, every `decoded_stride`
-th decoded frame) and timely mIoU (the robot's own mask of that frame at its capture time:
the edge's newest mask that had arrived, warped by flow; before the first one every pixel
counts as missed), both against the pseudo ground truth.

Deterministic apart from nothing: no wall clock enters the simulation.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stac_codec.h264_encoder import EncoderConfig
from stac_codec.mask_wire import encode_mask
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder
from stac_edge_segmenter.loading import SegmentationModel
from stac_encoder.frame_flow import FlowConfig
from stac_encoder.keyframes import KeyframeConfig
from stac_encoder.qp_map_receiver import QPMapReceiver, ReceivedMapFields
from stac_encoder.rate_control import RateControlConfig
from stac_encoder.robot_encoder import QPMapUpdate, RobotEncoderConfig
from stac_encoder.robot_loop import RobotLoop, RobotLoopConfig
from stac_eval.replay.link import Downlink, LinkConfig, Uplink
from stac_eval.replay.simulation import MapEdge, confusion
from stac_eval.replay.truth import EdgeTiming
from stac_eval.replay.wire import encoded_frame_bytes, qp_map_bytes
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH
from stac_sensitivity.feedback import FeedbackMap
from stac_sensitivity.online import QPMapComputer

X264_AQ_STRENGTH = 1.0


@dataclass(frozen=True)
class Variant:
    """A method: maps None (no map), 'stac' or 'two_level'; the robot's mode; aq_strength of
    x264's variance AQ (0.001: the map alone)."""

    name: str
    maps: str | None = None
    mode: str = "stream"
    aq_strength: float = MAP_ONLY_AQ_STRENGTH


VARIANTS = {
    "uniform": Variant("uniform"),
    "x264_aq": Variant("x264_aq", aq_strength=X264_AQ_STRENGTH),
    "two_level": Variant("two_level", maps="two_level"),
    "stac": Variant("stac", maps="stac"),
    # the map on top of x264's variance AQ (the robot keeps AQ 1.0 whatever the map asks)
    "stac_aq": Variant("stac_aq", maps="stac", aq_strength=X264_AQ_STRENGTH),
    "stac_keyframe": Variant("stac_keyframe", maps="stac", mode="keyframe"),
}


@dataclass(frozen=True)
class SimSettings:
    """Everything but the variant, budget, link and timing that shapes a run."""

    fps: float
    gop_frames: int = 50
    preset: str = "veryfast"
    period_frames: int = 5
    min_map_interval_s: float = 1.0
    max_compute_share: float = 0.5
    two_level_top_fraction: float = 0.4
    max_abs_offset_qp: int = 30
    hysteresis_levels: int = 1
    key_map_interval: int = 10
    warp_qp_map: bool = True
    flow: FlowConfig = field(default_factory=FlowConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    idr_offset_scale: float = 1.0
    p_offset_scale: float = 1.0
    decoded_stride: int = 1  # score the model on every n-th decoded frame (0: none)
    # a bitrate target: (seconds from the start, kbit/s) steps; rate_control 'crf' = the
    # robot's outer loop, 'bitrate' = x264's ABR (stream mode)
    target_steps: tuple[tuple[float, float], ...] = ()
    rate_control: str = "crf"

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class SimResult:
    """Per-frame arrays of one run (N camera frames) and its counters."""

    variant: str
    budget: float
    capture_s: np.ndarray
    uplink_bytes: np.ndarray  # EncodedFrame messages that took the link (0: not sent)
    map_bytes: np.ndarray  # QPMap messages computed from this frame
    mask_bytes: np.ndarray  # SegmentationMask messages of this frame
    sent: np.ndarray
    idr: np.ndarray
    crf: np.ndarray
    mask_age: np.ndarray  # frames; -1: no mask yet
    decoded_scored: np.ndarray
    decoded_confusion: np.ndarray  # (N, K, K+1)
    timely_confusion: np.ndarray  # (N, K, K+1)
    counters: dict

    ARRAYS = (
        "capture_s",
        "uplink_bytes",
        "map_bytes",
        "mask_bytes",
        "sent",
        "idr",
        "crf",
        "mask_age",
        "decoded_scored",
        "decoded_confusion",
        "timely_confusion",
    )

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **{name: getattr(self, name) for name in self.ARRAYS})
        meta = {"variant": self.variant, "budget": self.budget, "counters": self.counters}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SimResult:
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as data:
            arrays = {name: data[name] for name in cls.ARRAYS}
        return cls(meta["variant"], meta["budget"], **arrays, counters=meta["counters"])


def segmentation_mask_bytes(data_bytes: int, frame_id: str = "camera") -> int:
    """Serialized (CDR) size of a stac_msgs/SegmentationMask carrying `data_bytes`."""
    offset = 4 + 4  # header stamp
    offset += 4 + len(frame_id) + 1  # frame_id
    offset += (-offset) % 8 + 8  # source_frame_seq
    offset += 4 + 4  # width, height
    offset += 4 + len("stac_rle_deflate_v1") + 1  # encoding
    offset += (-offset) % 2 + 2  # num_classes
    offset += (-offset) % 4 + 4 + data_bytes  # data
    return 4 + offset


@dataclass
class _Job:
    index: int
    frame_seq: int
    image: np.ndarray
    reference: np.ndarray | None  # the picture decoded before it


class TemporalSim:
    """Runs one variant at one budget; see the module docstring."""

    def __init__(
        self,
        variant: Variant,
        budget: float,
        settings: SimSettings,
        link: LinkConfig,
        timing: EdgeTiming,
        model: SegmentationModel,
        computer: QPMapComputer | None,
        truth,
    ) -> None:
        self.variant, self.budget, self.settings = variant, float(budget), settings
        self.timing, self.model, self.truth = timing, model, truth
        self.computer = computer
        self.classes = model.num_classes
        self.uplink, self.downlink = Uplink(link), Downlink(link)
        encoder = EncoderConfig(
            rate_control=settings.rate_control if settings.target_steps else "crf",
            crf=self.budget,
            bitrate_kbps=max(1, round(settings.target_steps[0][1]))
            if settings.target_steps
            else 2000,
            fps=settings.fps,
            preset=settings.preset,
            gop_frames=settings.gop_frames if variant.mode == "stream" else 100_000,
            threads=1,
            aq_strength=variant.aq_strength,
        )
        target = settings.target_steps[0][1] if settings.target_steps else 0.0
        self.robot = RobotLoop(
            RobotLoopConfig(
                mode=variant.mode,
                encoder=RobotEncoderConfig(
                    encoder=encoder,
                    warp_qp_map=settings.warp_qp_map,
                    warp=settings.flow,
                    idr_offset_scale=settings.idr_offset_scale,
                    p_offset_scale=settings.p_offset_scale,
                ),
                flow=settings.flow,
                keyframes=settings.keyframes,
                rate=RateControlConfig(
                    target_kbps=target if encoder.rate_control == "crf" else 0,
                    overhead_bytes=encoded_frame_bytes(0),
                ),
            )
        )
        self.receiver = QPMapReceiver(settings.max_abs_offset_qp) if variant.maps else None
        self.map_rule = MapEdge(variant, computer, settings) if variant.maps else None
        self.decoder = EncodedStreamDecoder()
        self.counters = dict.fromkeys(
            ("sent", "idr", "maps", "masks", "jobs_map", "jobs_segment", "skipped", "lost"), 0
        )
        self._events: list = []
        self._tie = itertools.count()
        self._robot_inbox: list = []
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._step = 1
        self._scored_masks: dict[int, np.ndarray] = {}  # position -> class ids, for reuse

    # --- driving ---------------------------------------------------------------------------

    def run(self, frames: Iterable, progress=None) -> SimResult:
        """frames: objects with .index (0..N-1, the truth index), .offset_s and .image."""
        rows: dict[str, list] = {name: [] for name in SimResult.ARRAYS}
        self._rows = rows
        for position, frame in enumerate(frames):
            self._process_events_until(frame.offset_s)
            self._apply_target(frame.offset_s)
            self._capture(position, frame)
            if progress is not None:
                progress.update(1)
        self._process_events_until(math.inf)
        self.robot.close()
        arrays = {}
        for name in SimResult.ARRAYS:
            values = rows[name]
            if name.endswith("confusion"):
                arrays[name] = np.asarray(values, dtype=np.int32).reshape(
                    len(values), self.classes, self.classes + 1
                )
            else:
                arrays[name] = np.asarray(values)
        return SimResult(self.variant.name, self.budget, **arrays, counters=dict(self.counters))

    def _apply_target(self, now_s: float) -> None:
        steps = self.settings.target_steps
        while self._step < len(steps) and now_s >= steps[self._step][0]:
            self.robot.set_target_kbps(steps[self._step][1])
            self._step += 1

    def _push(self, time_s: float, order: int, kind: str, payload) -> None:
        heapq.heappush(self._events, (time_s, order, next(self._tie), kind, payload))

    def _process_events_until(self, time_s: float) -> None:
        while self._events and self._events[0][0] <= time_s:
            event_time, _, _, kind, payload = heapq.heappop(self._events)
            if kind == "done":
                self._busy = False
                self._start_job(event_time)
            else:
                self._edge_arrival(event_time, payload)

    # --- robot -----------------------------------------------------------------------------

    def _capture(self, position: int, frame) -> None:
        now = frame.offset_s
        self._robot_receive(now)
        rows = self._rows
        outcome = self.robot.process(frame.image, now)
        encoded = outcome.encoded
        size = 0
        if encoded is not None:
            size = encoded_frame_bytes(encoded.packet.size_bytes)
            delivery = self.uplink.send(now, size)
            self.counters["sent"] += 1
            self.counters["idr"] += int(encoded.packet.keyframe)
            if delivery.delivered:
                payload = (position, frame.index, encoded.frame_seq, encoded.packet.data,
                           encoded.width, encoded.height)  # fmt: skip
                self._push(delivery.arrival_s, 1, "arrival", payload)
            else:
                self.counters["lost"] += 1
                size = 0 if delivery.status == "dropped" else size
        rows["capture_s"].append(now)
        rows["uplink_bytes"].append(size)
        rows["map_bytes"].append(0)
        rows["mask_bytes"].append(0)
        rows["sent"].append(encoded is not None)
        rows["idr"].append(bool(encoded is not None and encoded.packet.keyframe))
        rows["crf"].append(float(self.robot.encoder.base_quality))
        rows["mask_age"].append(-1 if outcome.mask is None else outcome.mask.age_frames)
        rows["decoded_scored"].append(False)
        rows["decoded_confusion"].append(np.zeros((self.classes, self.classes + 1), np.int32))
        truth = self.truth.mask(frame.index)
        mask = None if outcome.mask is None else outcome.mask.class_ids
        rows["timely_confusion"].append(confusion(truth, mask, self.classes))

    def _robot_receive(self, now: float) -> None:
        while self._robot_inbox and self._robot_inbox[0][0] <= now:
            _, _, kind, payload = heapq.heappop(self._robot_inbox)
            if kind == "map":
                sent, frame_seq, stamp_s = payload
                try:
                    level_map = self.receiver.receive(_received_fields(sent))
                    self.robot.submit_qp_map(
                        QPMapUpdate(
                            sent.map_seq,
                            frame_seq,
                            stamp_s,
                            level_map.offsets_qp,
                            sent.session_id,
                            0.0
                            if self.variant.aq_strength != MAP_ONLY_AQ_STRENGTH
                            else self.computer.calibration.aq_strength,
                        )
                    )
                except ValueError:
                    pass
            else:
                class_ids, frame_seq = payload
                self.robot.submit_mask(class_ids, frame_seq)

    # --- edge ------------------------------------------------------------------------------

    def _edge_arrival(self, now: float, payload) -> None:
        position, index, frame_seq, data, width, height = payload
        decoded = self.decoder.decode(data, frame_seq, width, height)
        if not decoded.ok:
            return
        stride = self.settings.decoded_stride
        if stride and index % stride == 0 and self.variant.mode == "stream":
            self._score_decoded(position, index, decoded.image)
        if self.map_rule is not None:
            self.map_rule.frame_decoded(frame_seq)
        job = _Job(position, frame_seq, decoded.image, self.decoder.reference_image)
        if self.variant.mode == "stream" and self._queue:  # the newest frame only
            self.counters["skipped"] += len(self._queue)
            self._queue.clear()
        self._queue.append(job)
        if not self._busy:
            self._start_job(now)

    def _score_decoded(self, position: int, index: int, image: np.ndarray) -> None:
        mask = self.model.predict(image, batch_size=1, with_probabilities=False).class_ids[0]
        self._scored_masks[position] = mask
        self._rows["decoded_scored"][position] = True
        self._rows["decoded_confusion"][position] = confusion(
            self.truth.mask(index), mask, self.classes
        )

    def _start_job(self, now: float) -> None:
        if not self._queue:
            return
        job = self._queue.popleft()
        self._busy = True
        stamp_s = self._rows["capture_s"][job.index]
        if self.map_rule is not None and self.map_rule.wants(now, stamp_s):
            done = now + 1e-3 * self.timing.map_ms
            sent, class_ids = self.map_rule.compute(job.image, job.reference, stamp_s, now, done)
            size = qp_map_bytes(len(sent.data))
            self._rows["map_bytes"][job.index] += size
            self.counters["maps"] += 1
            self.counters["jobs_map"] += 1
            delivery = self.downlink.send(done, size)
            if delivery.delivered:
                heapq.heappush(
                    self._robot_inbox,
                    (delivery.arrival_s, next(self._tie), "map", (sent, job.frame_seq, stamp_s)),
                )
        else:
            done = now + 1e-3 * self.timing.segment_ms
            class_ids = self._scored_masks.get(job.index)
            if class_ids is None:
                class_ids = self.model.predict(
                    job.image, batch_size=1, with_probabilities=False
                ).class_ids[0]
            self.counters["jobs_segment"] += 1
        for position in [p for p in self._scored_masks if p <= job.index]:
            del self._scored_masks[position]
        size = segmentation_mask_bytes(len(encode_mask(class_ids)))
        self._rows["mask_bytes"][job.index] += size
        self.counters["masks"] += 1
        delivery = self.downlink.send(done, size)
        if delivery.delivered:
            heapq.heappush(
                self._robot_inbox,
                (delivery.arrival_s, next(self._tie), "mask", (class_ids, job.frame_seq)),
            )
        self._push(done, 0, "done", None)


def _received_fields(sent: FeedbackMap) -> ReceivedMapFields:
    level_map = sent.level_map
    rows, cols = level_map.shape
    largest = max(abs(level) for level in level_map.levels_qp) + abs(level_map.budget_shift_qp)
    return ReceivedMapFields(
        sent.session_id, sent.map_seq, sent.reference_map_seq, rows, cols, min(largest, 51),
        sent.data,
    )  # fmt: skip
