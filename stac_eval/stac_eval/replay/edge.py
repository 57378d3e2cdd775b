"""The edge of the replay: the edge container's cores on the simulated clock.

Every uplink message that arrives is decoded (`EncodedStreamDecoder`; a JPEG arrives decoded);
a loss seen as a frame_seq gap makes `ResyncTracker` ask the robot for a keyframe. The
segmenter's worker segments the newest decoded frame whenever it is free (a frame replaced
before the worker got to it is skipped: the segmenter's newest-frame policy, in both modes; in
keyframe mode the robot keeps at most two keyframes unanswered, one at work and one waiting,
so none is replaced unless one was lost and `edge_timeout_s` passed); a job holds it for
the edge profile's forward time (`edge_profile.EdgeTiming.segment_ms`, of the engine the
profile measured). When the job ends, the mask goes back.

Maps, as the sensitivity node computes them: each decoded frame is offered to `MapEdge`
(the pacing rule of `stac_sensitivity.map_pacing`, on the simulated clock), which starts a
sensitivity pass on a due frame in a worker of its own (the edge container's map worker).
Alone, a pass takes the profile's `map_ms` and a forward its `segment_ms`; while both workers
run they share the cores as Linux shares them between two threads, by their nice values (the
map worker runs at `map_worker_nice`, the segmenter at 0: `cpu_share`; at nice 0 half each,
the map pass at half speed and a forward that starts during a pass at twice its time; at 10
the map gets about a tenth and a forward takes about 1.1 times its time, at the default 19
about 1.4 % and 1.01 times: the pass runs on what the segmenter leaves). When the pass is
done the map goes back.

Class ids of a segmented frame are the model's forward on the decoded picture (`DecodedMasks`,
the same forward that scores decoded mIoU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stac_codec.mask_wire import DEFAULT_MASK_CODING, MaskSender
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder
from stac_edge_segmenter.resync import ResyncTracker
from stac_eval.baselines import two_level_allocation
from stac_eval.replay.accounting import UNDECODABLE, FrameLedger
from stac_eval.replay.accuracy import DecodedMasks
from stac_eval.replay.edge_profile import EdgeTiming
from stac_eval.replay.events import EventQueue
from stac_eval.replay.robot import EdgeUnit
from stac_eval.replay.wire import keyframe_request_bytes, qp_map_bytes, sent_mask
from stac_sensitivity.feedback import FeedbackConfig, FeedbackEncoder, FeedbackMap
from stac_sensitivity.map_pacing import MapPacer, MapPacingConfig, cpu_share
from stac_sensitivity.online import QPMapComputer

FEEDBACK_SESSION_ID = 1  # fixed (the node draws one at random) so that runs are identical
DONE = "edge_done"  # the event that frees the segmenter's worker
MAP_DONE = "edge_map_done"  # the event that ends a map pass (payload: the pass's token)


class MapEdge:
    """The sensitivity node in the edge container, on the simulated clock: which decoded
    frames get a map (`MapPacer`: the first frame, then every `period_frames` frames and
    `min_map_interval_s` of camera time, at most `max_compute_share` of the map worker's time,
    one pass at a time), and the pass itself, around the real cores (`QPMapComputer`,
    `FeedbackEncoder`). `method.maps`: "stac" (QPMapComputer's allocation) or "two_level"."""

    def __init__(self, method, computer: QPMapComputer, settings) -> None:
        self.method = method
        self.computer = computer
        self.settings = settings
        hysteresis = settings.hysteresis_levels if method.maps == "stac" else 0
        # Two levels one apart: hysteresis 1 would freeze the first map forever.
        self.feedback = FeedbackEncoder(
            FeedbackConfig(hysteresis, settings.key_map_interval), session_id=FEEDBACK_SESSION_ID
        )
        self.pacer = MapPacer(
            MapPacingConfig(
                settings.period_frames, settings.min_map_interval_s, settings.max_compute_share
            )
        )
        # the map worker's share of the cores while the segmenter's worker runs too
        self.share_while_segmenting = cpu_share(settings.map_worker_nice)

    def frame_decoded(self, frame_seq: int, stamp_s: float, now_s: float) -> bool:
        """Count a decoded frame; True when it is due for a map (the pass is then started)."""
        if self.pacer.frame_decoded(frame_seq):
            self.feedback.request_key()
        if not self.pacer.wants(stamp_s, now_s):
            return False
        self.pacer.map_started(stamp_s)
        return True

    def compute(
        self, image: np.ndarray, reference: np.ndarray | None, start_s: float, end_s: float
    ) -> FeedbackMap:
        """The map of `image` (a pass from start_s to end_s; reference: the picture decoded
        before it) as it goes out."""
        self.pacer.map_finished(start_s, end_s)
        result = self.computer.compute(image, reference)
        allocation = result.allocation
        if self.method.maps == "two_level":
            allocation = two_level_allocation(
                result.macroblock_sensitivity, self.settings.two_level_top_fraction
            )
        return self.feedback.encode(allocation)


@dataclass(frozen=True)
class Outgoing:
    """A message the edge sends back at `time_s` about camera frame `index`: kind 'mask'
    (payload: class ids, frame_seq, the decoded picture), 'map' (payload: the FeedbackMap,
    frame_seq, capture stamp, the decoded picture) or 'request' (a keyframe request)."""

    kind: str
    time_s: float
    index: int
    size_bytes: int
    payload: tuple = ()


@dataclass
class _Job:
    index: int
    frame_seq: int
    image: np.ndarray
    reference: np.ndarray | None  # the picture decoded before it


@dataclass
class _MapPass:
    """The map worker's pass: its frame, when it started, the full-speed time it still needs
    as of `since_s`, its speed since then, and the token of its pending MAP_DONE event."""

    job: _Job
    stamp_s: float
    started_s: float
    remaining_ms: float
    since_s: float
    speed: float = 1.0
    token: int = 0


class Edge:
    """Decoder, resync, the segmenter's worker and the map worker; see the module docstring.
    Outgoing messages are returned to the caller, which puts them on the downlink; the end of
    a job is an event on the shared queue (DONE or MAP_DONE, priority 0)."""

    def __init__(
        self,
        method,
        timing: EdgeTiming,
        masks: DecodedMasks,
        map_edge: MapEdge | None,
        ledger: FrameLedger,
        events: EventQueue,
        keyframe_request_interval_s: float,
        on_decoded: Callable[[int, np.ndarray], None],
    ) -> None:
        self.method = method
        self.timing = timing
        self.masks = masks
        self.map_edge = map_edge
        self.ledger = ledger
        self.events = events
        self.on_decoded = on_decoded
        self.decoder = EncodedStreamDecoder() if method.transport == "h264" else None
        self.resync = ResyncTracker(keyframe_request_interval_s)
        self.mask_sender = MaskSender(DEFAULT_MASK_CODING)  # the segmenter's, for this robot
        self._pending: _Job | None = None  # the newest decoded frame the worker has not taken
        self._busy = False
        self._map: _MapPass | None = None
        self._map_tokens = 0
        self.counters = dict.fromkeys(
            ("jobs_segment", "jobs_map", "skipped", "keyframe_requests", "undecodable"), 0
        )

    def arrive(self, now_s: float, unit: EdgeUnit) -> list[Outgoing]:
        """An uplink message reached the edge at `now_s`."""
        outgoing: list[Outgoing] = []
        reference = None
        if self.decoder is None:
            image = unit.payload
        else:
            decoded = self.decoder.decode(unit.payload, unit.frame_seq, unit.width, unit.height)
            self.resync.on_frame(decoded)
            if self.resync.should_request(decoded, now_s):
                self.counters["keyframe_requests"] += 1
                self.mask_sender.reset()  # as the segmenter does: the next mask goes in full
                outgoing.append(Outgoing("request", now_s, unit.index, keyframe_request_bytes()))
            if not decoded.ok:
                self.counters["undecodable"] += 1
                self.ledger.set(unit.index, "status", UNDECODABLE)
                return outgoing
            image, reference = decoded.image, self.decoder.reference_image
        self.on_decoded(unit.index, image)
        job = _Job(unit.index, unit.frame_seq, image, reference)
        if self.map_edge is not None:
            stamp_s = self.ledger.get(unit.index, "capture_s")
            if self.map_edge.frame_decoded(unit.frame_seq, stamp_s, now_s):
                self._start_map(now_s, job, stamp_s)
        if self._pending is not None:  # replaced before the worker took it
            self.counters["skipped"] += 1
        self._pending = job
        if not self._busy:
            outgoing += self._start(now_s)
        return outgoing

    def done(self, now_s: float) -> list[Outgoing]:
        """The segmenter's job ended at `now_s`: it takes the next one."""
        self._set_busy(now_s, False)
        return self._start(now_s)

    def map_done(self, now_s: float, token: int) -> list[Outgoing]:
        """A map pass may have ended at `now_s` (not if its speed changed since: a newer
        token)."""
        current = self._map
        if current is None or current.token != token:
            return []
        self._map = None
        sent = self.map_edge.compute(
            current.job.image, current.job.reference, current.started_s, now_s
        )
        payload = (sent, current.job.frame_seq, current.stamp_s, current.job.image)
        return [Outgoing("map", now_s, current.job.index, qp_map_bytes(len(sent.data)), payload)]

    def _start_map(self, now_s: float, job: _Job, stamp_s: float) -> None:
        self.counters["jobs_map"] += 1
        self._map = _MapPass(job, stamp_s, now_s, self.timing.map_ms, since_s=now_s)
        self._schedule_map(now_s)

    def _set_busy(self, now_s: float, busy: bool) -> None:
        """The segmenter's worker starts or stops: the map pass changes speed."""
        if busy == self._busy:
            return
        current = self._map
        if current is not None:
            current.remaining_ms -= 1e3 * (now_s - current.since_s) * current.speed
            current.since_s = now_s
        self._busy = busy
        self._schedule_map(now_s)

    def _schedule_map(self, now_s: float) -> None:
        current = self._map
        if current is None:
            return
        current.speed = self.map_edge.share_while_segmenting if self._busy else 1.0
        self._map_tokens += 1
        current.token = self._map_tokens
        end_s = now_s + 1e-3 * max(current.remaining_ms, 0.0) / current.speed
        self.events.push(end_s, MAP_DONE, current.token, priority=0)

    def _start(self, now_s: float) -> list[Outgoing]:
        job, self._pending = self._pending, None
        if job is None:
            return []
        self._set_busy(now_s, True)
        self.ledger.set(job.index, "segmented", True)
        self.counters["jobs_segment"] += 1
        segment_ms = self.timing.segment_ms
        if self._map is not None:  # the cores are shared with a map pass
            segment_ms /= 1.0 - self.map_edge.share_while_segmenting
        done_s = now_s + 1e-3 * segment_ms
        self.masks.add(job.index, job.image)
        class_ids = self.masks.get(job.index)
        self.masks.release(lambda index: index > job.index)
        self.events.push(done_s, DONE, priority=0)
        size_bytes, received = sent_mask(class_ids, sender=self.mask_sender)
        payload = (received, job.frame_seq, job.image)
        return [Outgoing("mask", done_s, job.index, size_bytes, payload)]
