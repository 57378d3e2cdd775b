"""One method at one budget over a recording: robot, link and edge, event by event.

The robot side is the encoder node's core (`RobotEncoder`, with `QPMapReceiver` for maps) or,
for JPEG, OpenCV's encoder as compressed_image_transport uses it. Each camera frame is encoded
at its recorded capture time and offered to the uplink (`link.Uplink`). The edge side is the
edge container's: `EncodedStreamDecoder` decodes every access unit that arrives; one worker
takes the newest decoded frame whenever it is free (a frame replaced before the worker got to
it is skipped) and holds it for the edge's compute time (`EdgeTiming`). For the map methods the
worker runs the sensitivity pass instead of a plain forward when the sensitivity node's rule
says a map is due (`MapEdge`: period_frames, min_map_interval_s, max_compute_share), through
`QPMapComputer` and `FeedbackEncoder`, and the map travels back over the downlink to the
robot's receiver; the robot applies the newest map from the next frame it encodes after the
map arrived (warped by flow). Masks travel back over the downlink too.

Scoring, per camera frame: decoded mIoU (the model on the decoded frame, for every frame the
edge decoded, whether or not the worker segmented it) and timely mIoU (the newest mask that had
arrived at the robot by the frame's capture time, as it is, against that frame's truth; before
the first mask arrives every pixel counts as missed). Both against the pseudo ground truth and,
where the source has them, human labels.

Deterministic: no wall clock enters the simulation; times come from the recording, the link
model and the fixed (or cached) edge timing.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from stac_codec.h264_encoder import EncoderConfig
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder
from stac_edge_segmenter.loading import SegmentationModel
from stac_edge_segmenter.overlay import mask_overlay
from stac_edge_segmenter.resync import ResyncTracker
from stac_encoder.frame_sources import SourceFrame
from stac_encoder.qp_map_receiver import QPMapReceiver, ReceivedMapFields
from stac_encoder.qp_map_warp import WarpConfig
from stac_encoder.robot_encoder import MapVerdict, QPMapUpdate, RobotEncoder, RobotEncoderConfig
from stac_eval.baselines import jpeg_round_trip, two_level_allocation
from stac_eval.replay.link import Downlink, LinkConfig, Uplink
from stac_eval.replay.truth import EdgeTiming, decode_mask, encode_mask
from stac_eval.replay.wire import (
    compressed_image_bytes,
    encoded_frame_bytes,
    keyframe_request_bytes,
    qp_map_bytes,
)
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH
from stac_sensitivity.feedback import FeedbackConfig, FeedbackEncoder, FeedbackMap
from stac_sensitivity.online import QPMapComputer, qp_heatmap

X264_AQ_STRENGTH = 1.0  # x264's default variance AQ
FEEDBACK_SESSION_ID = 1  # fixed (the node draws one at random) so that runs are identical

# Per-frame status codes.
DECODED, LOST, DROPPED, UNDECODABLE = 0, 1, 2, 3
STATUS_NAMES = {DECODED: "decoded", LOST: "lost", DROPPED: "dropped", UNDECODABLE: "undecodable"}


@dataclass(frozen=True)
class Method:
    """A transport: 'h264' (with `maps` None, 'stac' or 'two_level') or 'jpeg'; knob: the
    budget it sweeps ('crf' or 'quality')."""

    name: str
    transport: str
    knob: str
    maps: str | None = None
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
}
BASELINES = ("uniform", "x264_aq", "two_level", "jpeg")


@dataclass(frozen=True)
class ReplaySettings:
    """Everything but the method, budget, link and timing that shapes a run."""

    fps: float
    gop_frames: int = 50
    preset: str = "veryfast"
    period_frames: int = 5
    min_map_interval_s: float = 1.0
    max_compute_share: float = 0.5
    two_level_top_fraction: float = 0.4
    max_abs_offset_qp: int = 30
    warp_qp_map: bool = True
    flow_width_px: int = 320
    hysteresis_levels: int = 1
    key_map_interval: int = 10
    keyframe_request_interval_s: float = 0.5
    batch_size: int = 1

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Recording:
    """What a bag of the run needs (collected only for the chosen operating point)."""

    video: list[tuple[float, float, bytes, bool]] = field(default_factory=list)  # log, stamp
    masks: list[tuple[float, float, int]] = field(default_factory=list)  # log, stamp, frame
    mask_png: dict[int, bytes] = field(default_factory=dict)  # frame -> PNG class ids
    overlays: dict[int, bytes] = field(default_factory=dict)  # frame -> JPEG
    heatmaps: list[tuple[float, float, bytes]] = field(default_factory=list)  # log, stamp, JPEG


@dataclass
class PointResult:
    """Per-frame arrays of one run (N frames) and its counters."""

    method: str
    budget: float
    capture_s: np.ndarray
    uplink_bytes: np.ndarray
    feedback_bytes: np.ndarray
    status: np.ndarray
    queueing_s: np.ndarray
    segmented: np.ndarray
    mask_arrival_s: np.ndarray
    held_frame: np.ndarray
    confusion: dict[str, np.ndarray]  # decoded_pseudo, timely_pseudo, [decoded|timely]_human
    counters: dict

    ARRAYS = (
        "capture_s",
        "uplink_bytes",
        "feedback_bytes",
        "status",
        "queueing_s",
        "segmented",
        "mask_arrival_s",
        "held_frame",
    )

    def save(self, path: Path) -> None:
        arrays = {name: getattr(self, name) for name in self.ARRAYS}
        arrays.update({f"confusion_{k}": v for k, v in self.confusion.items()})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        meta = {"method": self.method, "budget": self.budget, "counters": self.counters}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PointResult:
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as data:
            arrays = {name: data[name] for name in cls.ARRAYS}
            confusion = {
                k.removeprefix("confusion_"): data[k] for k in data if k.startswith("confusion_")
            }
        return cls(
            meta["method"], meta["budget"], **arrays, confusion=confusion, counters=meta["counters"]
        )


class MapEdge:
    """Which frames get a map, by the sensitivity node's rule in the edge container
    (SensitivityNode.frame_decoded / wants / segment, with the simulated clock for its
    monotonic one), around the real cores: the first frame, then the first frame the worker
    takes once `period_frames` frames were decoded, `min_map_interval_s` of camera time
    passed since the last map's frame, and the worker spent at most `max_compute_share` of its
    time on maps. Shared by the replay and stac-bench temporal's simulation (settings: their
    ReplaySettings or SimSettings, which both carry the fields used here; method: anything
    with `maps`, "stac" or "two_level")."""

    def __init__(self, method, computer: QPMapComputer, settings) -> None:
        self.method = method
        self.computer = computer
        self.settings = settings
        hysteresis = settings.hysteresis_levels if method.maps == "stac" else 0
        # Two levels one apart: hysteresis 1 would freeze the first map forever.
        self.feedback = FeedbackEncoder(
            FeedbackConfig(hysteresis, settings.key_map_interval), session_id=FEEDBACK_SESSION_ID
        )
        self._decoded_since_map = 0
        self._compute_requested = True
        self._last_frame_seq = 0
        self._last_map_stamp_s: float | None = None
        self._next_map_allowed_s = 0.0

    def frame_decoded(self, frame_seq: int) -> None:
        if frame_seq <= self._last_frame_seq:
            self.feedback.request_key()
        self._last_frame_seq = frame_seq
        self._decoded_since_map += 1

    def wants(self, now_s: float, stamp_s: float) -> bool:
        if self._compute_requested:
            return True
        return self._due(stamp_s) and now_s >= self._next_map_allowed_s

    def _due(self, stamp_s: float) -> bool:
        period = self.settings.period_frames
        if not period or self._decoded_since_map < period:
            return False
        last = self._last_map_stamp_s
        elapsed_s = stamp_s - last if last is not None else math.inf
        return elapsed_s >= self.settings.min_map_interval_s or elapsed_s < 0

    def compute(
        self,
        image: np.ndarray,
        reference: np.ndarray | None,
        stamp_s: float,
        start_s: float,
        end_s: float,
    ):
        """The map of `image` (a job from start_s to end_s; reference: the picture decoded
        before it) as it goes out, and the class ids of the same forward pass."""
        self._compute_requested = False
        self._decoded_since_map = 0
        self._last_map_stamp_s = stamp_s
        share = self.settings.max_compute_share
        self._next_map_allowed_s = end_s + (end_s - start_s) * (1.0 - share) / share
        result = self.computer.compute(image, reference)
        allocation = result.allocation
        if self.method.maps == "two_level":
            allocation = two_level_allocation(
                result.macroblock_sensitivity, self.settings.two_level_top_fraction
            )
        return self.feedback.encode(allocation), result.class_ids


@dataclass
class _Arrival:
    """An access unit (or a decoded JPEG) reaching the edge."""

    index: int
    frame_seq: int
    payload: object  # H.264 bytes or the decoded RGB frame
    width: int
    height: int


class PointReplay:
    """Runs one method at one budget over the frames; see the module docstring."""

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
    ) -> None:
        self.method = method
        self.budget = budget
        self.settings = settings
        self.timing = timing
        self.model = model
        self.truth = truth
        self.labels = labels or {}
        self.num_classes = model.num_classes
        self.uplink = Uplink(link)
        self.downlink = Downlink(link)
        self.recording = Recording() if record else None
        self.map_edge = MapEdge(method, computer, settings) if method.maps else None
        self.computer = computer
        self.robot: RobotEncoder | None = None
        self.receiver: QPMapReceiver | None = None
        if method.transport == "h264":
            encoder = EncoderConfig(
                crf=float(budget),
                fps=settings.fps,
                preset=settings.preset,
                gop_frames=settings.gop_frames,
                threads=1,  # deterministic bitstreams
                aq_strength=method.aq_strength,
            )
            self.robot = RobotEncoder(
                RobotEncoderConfig(
                    encoder=encoder,
                    warp_qp_map=bool(method.maps) and settings.warp_qp_map,
                    warp=WarpConfig(flow_width_px=settings.flow_width_px),
                )
            )
            if method.maps:
                self.receiver = QPMapReceiver(settings.max_abs_offset_qp)
        self.decoder = EncodedStreamDecoder()
        self.resync = ResyncTracker(settings.keyframe_request_interval_s)
        self.counters = {
            "maps_sent": 0,
            "maps_lost": 0,
            "maps_applied": 0,
            "maps_refused": 0,
            "masks_sent": 0,
            "masks_lost": 0,
            "keyframes": 0,
            "keyframe_requests": 0,
            "keyframe_requests_lost": 0,
            "jobs_segment": 0,
            "jobs_map": 0,
        }
        # The event queue: (time, order, tie-breaker, kind, payload). At equal times a job
        # that ends frees the worker before an arrival is decoded.
        self._events: list = []
        self._tie = itertools.count()
        self._robot_inbox: list = []  # (arrival time, tie, kind, payload): maps, requests
        # (index, frame_seq, image, the picture decoded before it)
        self._pending: tuple[int, int, np.ndarray, np.ndarray | None] | None = None
        self._busy = False
        self._to_predict: list[tuple[int, np.ndarray]] = []
        self._decoded_masks: dict[int, bytes] = {}
        self._mask_arrivals: list[tuple[float, int]] = []
        self._frames: dict[str, list] = {}

    # --- driving ---------------------------------------------------------------------------

    def run(self, frames: Iterable[SourceFrame], progress=None) -> PointResult:
        count = 0
        columns = {
            "capture_s": [],
            "uplink_bytes": [],
            "feedback_bytes": [],
            "status": [],
            "queueing_s": [],
            "segmented": [],
        }
        self._frames = columns
        self._decoded_confusion: dict[str, dict[int, np.ndarray]] = {"pseudo": {}, "human": {}}
        for frame in frames:
            self._process_events_until(frame.offset_s)
            self._capture(frame)
            count += 1
            if progress is not None:
                progress.update(1)
        self._process_events_until(math.inf)
        self._flush_predictions()
        if self.robot is not None:
            self.robot.close()
        return self._result(count)

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

    # --- robot -------------------------------------------------------------------------------

    def _capture(self, frame: SourceFrame) -> None:
        now = frame.offset_s
        index = frame.index
        self._robot_receive(now)
        columns = self._frames
        columns["capture_s"].append(now)
        columns["feedback_bytes"].append(0)
        columns["segmented"].append(False)
        if self.method.transport == "jpeg":
            decoded, data_bytes = jpeg_round_trip(frame.image, int(self.budget))
            size = compressed_image_bytes(data_bytes)
            arrival = _Arrival(index, index + 1, decoded, *frame.image.shape[1::-1])
            record_data = self._jpeg_bytes(frame.image) if self.recording else b""
            keyframe = True
        else:
            result = self.robot.encode(frame.image, now)
            size = encoded_frame_bytes(result.packet.size_bytes)
            arrival = _Arrival(
                index, result.frame_seq, result.packet.data, result.width, result.height
            )
            record_data, keyframe = result.packet.data, result.packet.keyframe
            self.counters["keyframes"] += int(keyframe)
        delivery = self.uplink.send(now, size)
        columns["uplink_bytes"].append(0 if delivery.status == "dropped" else size)
        columns["queueing_s"].append(
            math.nan if delivery.queueing_s is None else delivery.queueing_s
        )
        columns["status"].append(
            {"delivered": DECODED, "lost": LOST, "dropped": DROPPED}[delivery.status]
        )
        if delivery.delivered:
            self._push(delivery.arrival_s, 1, "arrival", arrival)
            if self.recording is not None:
                self.recording.video.append((delivery.arrival_s, now, record_data, keyframe))

    def _jpeg_bytes(self, rgb: np.ndarray) -> bytes:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(self.budget)])
        return data.tobytes() if ok else b""

    def _robot_receive(self, now: float) -> None:
        """Act on everything that has reached the robot by `now`, in arrival order: keyframe
        requests (the encoder node's service) and maps (its QPMap subscription)."""
        while self._robot_inbox and self._robot_inbox[0][0] <= now:
            _, _, kind, payload = heapq.heappop(self._robot_inbox)
            if kind == "keyframe":
                self.robot.request_keyframe()
                continue
            sent, source_frame_seq, source_stamp_s = payload
            try:
                level_map = self.receiver.receive(_received_fields(sent))
                verdict = self.robot.submit_qp_map(
                    QPMapUpdate(
                        map_seq=sent.map_seq,
                        source_frame_seq=source_frame_seq,
                        source_stamp_s=source_stamp_s,
                        offsets=level_map.offsets_qp,
                        session_id=sent.session_id,
                        aq_strength=self.computer.aq_strength,
                    )
                )
            except ValueError:  # MapRejectedError or the encoder's own checks
                self.counters["maps_refused"] += 1
                continue
            if verdict is MapVerdict.STALE:
                self.counters["maps_refused"] += 1
            else:
                self.counters["maps_applied"] += 1

    # --- edge --------------------------------------------------------------------------------

    def _edge_arrival(self, now: float, arrival: _Arrival) -> None:
        reference = None
        if self.method.transport == "jpeg":
            image = arrival.payload
        else:
            decoded = self.decoder.decode(
                arrival.payload, arrival.frame_seq, arrival.width, arrival.height
            )
            self.resync.on_frame(decoded)
            if self.resync.should_request(decoded, now):
                self._request_keyframe(now, arrival.index)
            if not decoded.ok:
                self._frames["status"][arrival.index] = UNDECODABLE
                return
            image, reference = decoded.image, self.decoder.reference_image
        self._to_predict.append((arrival.index, image))
        if len(self._to_predict) >= self.settings.batch_size:
            self._flush_predictions()
        if self.map_edge is not None:
            self.map_edge.frame_decoded(arrival.frame_seq)
        self._pending = (arrival.index, arrival.frame_seq, image, reference)
        if not self._busy:
            self._start_job(now)

    def _request_keyframe(self, now: float, index: int) -> None:
        """The segmenter node's keyframe request after a loss (std_srvs/Trigger, downlink)."""
        size = keyframe_request_bytes()
        self.counters["keyframe_requests"] += 1
        self._frames["feedback_bytes"][index] += size
        delivery = self.downlink.send(now, size)
        if delivery.delivered:
            heapq.heappush(
                self._robot_inbox, (delivery.arrival_s, next(self._tie), "keyframe", None)
            )
        else:
            self.counters["keyframe_requests_lost"] += 1

    def _start_job(self, now: float) -> None:
        if self._pending is None:
            return
        index, frame_seq, image, reference = self._pending
        self._pending = None
        self._busy = True
        self._frames["segmented"][index] = True
        capture_s = self._frames["capture_s"][index]
        if self.map_edge is not None and self.map_edge.wants(now, capture_s):
            self.counters["jobs_map"] += 1
            done = now + 1e-3 * self.timing.map_ms
            sent, _ = self.map_edge.compute(image, reference, capture_s, now, done)
            size = qp_map_bytes(len(sent.data))
            self._frames["feedback_bytes"][index] += size
            self.counters["maps_sent"] += 1
            delivery = self.downlink.send(done, size)
            if delivery.delivered:
                heapq.heappush(
                    self._robot_inbox,
                    (delivery.arrival_s, next(self._tie), "map", (sent, frame_seq, capture_s)),
                )
                if self.recording is not None:
                    heatmap = qp_heatmap(
                        image, sent.level_map.offsets_qp, self.computer.max_offset_qp
                    )
                    self.recording.heatmaps.append(
                        (delivery.arrival_s, capture_s, _jpeg_rgb(heatmap))
                    )
            else:
                self.counters["maps_lost"] += 1
        else:
            self.counters["jobs_segment"] += 1
            done = now + 1e-3 * self.timing.segment_ms
        self.counters["masks_sent"] += 1
        delivery = self.downlink.send(done, 0)
        if delivery.delivered:
            self._mask_arrivals.append((delivery.arrival_s, index))
        else:
            self.counters["masks_lost"] += 1
        self._push(done, 0, "done", None)

    def _flush_predictions(self) -> None:
        if not self._to_predict:
            return
        batch, self._to_predict = self._to_predict, []
        images = np.stack([image for _, image in batch])
        masks = self.model.predict(
            images, batch_size=self.settings.batch_size, with_probabilities=False
        ).class_ids
        for (index, image), mask in zip(batch, masks, strict=True):
            self._decoded_masks[index] = encode_mask(mask)
            self._decoded_confusion["pseudo"][index] = confusion(
                self.truth.mask(index), mask, self.num_classes
            )
            if index in self.labels:
                self._decoded_confusion["human"][index] = confusion(
                    self.labels[index], mask, self.num_classes
                )
            if self.recording is not None:
                overlay = mask_overlay(image, mask, self.model.palette)
                self.recording.overlays[index] = _jpeg_rgb(overlay)

    # --- scoring -----------------------------------------------------------------------------

    def _result(self, count: int) -> PointResult:
        columns = self._frames
        classes = self.num_classes
        capture = np.asarray(columns["capture_s"], dtype=np.float64)
        mask_arrival = np.full(count, math.nan)
        for arrival_s, index in self._mask_arrivals:
            mask_arrival[index] = arrival_s
        kinds = ["pseudo"] + (["human"] if self.labels else [])
        result_confusion = {}
        for kind in kinds:
            decoded = np.zeros((count, classes, classes + 1), dtype=np.int32)
            for index, matrix in self._decoded_confusion[kind].items():
                decoded[index] = matrix
            result_confusion[f"decoded_{kind}"] = decoded
        held = self._timely(capture, result_confusion, kinds)
        if self.recording is not None:
            self.recording.masks = [
                (arrival_s, capture[index], index) for arrival_s, index in self._mask_arrivals
            ]
            self.recording.mask_png = {
                index: self._decoded_masks[index] for _, index in self._mask_arrivals
            }
        return PointResult(
            method=self.method.name,
            budget=float(self.budget),
            capture_s=capture,
            uplink_bytes=np.asarray(columns["uplink_bytes"], dtype=np.int64),
            feedback_bytes=np.asarray(columns["feedback_bytes"], dtype=np.int64),
            status=np.asarray(columns["status"], dtype=np.int8),
            queueing_s=np.asarray(columns["queueing_s"], dtype=np.float64),
            segmented=np.asarray(columns["segmented"], dtype=bool),
            mask_arrival_s=mask_arrival,
            held_frame=held,
            confusion=result_confusion,
            counters=dict(self.counters),
        )

    def _timely(self, capture: np.ndarray, confusions: dict, kinds: list[str]) -> np.ndarray:
        """For every camera frame, the newest mask at the robot at its capture time, scored."""
        count, classes = len(capture), self.num_classes
        arrivals = sorted(self._mask_arrivals)
        held = np.full(count, -1, dtype=np.int32)
        for kind in kinds:
            confusions[f"timely_{kind}"] = np.zeros((count, classes, classes + 1), np.int32)
        position, newest = 0, -1
        cached_index, cached_mask = -1, None
        for index in range(count):
            while position < len(arrivals) and arrivals[position][0] <= capture[index]:
                newest = max(newest, arrivals[position][1])
                position += 1
            held[index] = newest
            if newest >= 0 and cached_index != newest:
                cached_index, cached_mask = newest, decode_mask(self._decoded_masks[newest])
            mask = cached_mask if newest >= 0 else None
            confusions["timely_pseudo"][index] = confusion(self.truth.mask(index), mask, classes)
            if "human" in kinds and index in self.labels:
                confusions["timely_human"][index] = confusion(self.labels[index], mask, classes)
        return held


def confusion(truth: np.ndarray, prediction: np.ndarray | None, classes: int) -> np.ndarray:
    """K x (K+1) counts, rows truth, columns prediction; column K: no mask at all. Truth ids
    outside 0..K-1 (void) are not counted."""
    truth = truth.reshape(-1).astype(np.int64)
    valid = truth < classes
    if prediction is None:
        predicted = np.full(truth.shape, classes, dtype=np.int64)
    else:
        if prediction.size != truth.size:
            raise ValueError(f"a mask of {prediction.shape} for {truth.size} truth pixels")
        predicted = prediction.reshape(-1).astype(np.int64)
    index = truth[valid] * (classes + 1) + predicted[valid]
    counts = np.bincount(index, minlength=classes * (classes + 1))
    return counts.reshape(classes, classes + 1).astype(np.int32)


def miou(matrix: np.ndarray) -> float:
    """mIoU of a K x (K+1) confusion (the last column: pixels without a mask): per class
    TP / (truth + predicted - TP); classes never in truth nor predicted left out."""
    matrix = np.asarray(matrix, dtype=np.float64)
    classes = matrix.shape[0]
    true_positive = np.diag(matrix[:, :classes])
    union = matrix.sum(1) + matrix[:, :classes].sum(0) - true_positive
    present = union > 0
    if not present.any():
        return math.nan
    return float(np.mean(true_positive[present] / union[present]))


def _received_fields(sent: FeedbackMap) -> ReceivedMapFields:
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


def _jpeg_rgb(rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    return data.tobytes() if ok else b""
