"""The edge of the replay: the edge container's cores on the simulated clock.

Every uplink message that arrives is decoded (`EncodedStreamDecoder`; a JPEG arrives decoded);
a loss seen as a frame_seq gap makes `ResyncTracker` ask the robot for a keyframe. One worker
segments the newest decoded frame whenever it is free (a frame replaced before the worker got
to it is skipped: the segmenter's newest-frame policy, in both modes; in keyframe mode the
robot sends to a busy edge only after `edge_timeout_s`). A job holds the worker for the
edge profile's time (`edge_profile.EdgeTiming`): a forward, or a sensitivity pass when
`MapEdge` says a map is due (the one place where the edge decides map passes). When the job
ends, the mask goes back, and the map with it after a sensitivity pass.

Class ids of a segmented frame are the model's forward on the decoded picture (`DecodedMasks`,
the same forward that scores decoded mIoU); after a sensitivity pass, those of its own forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
from stac_sensitivity.online import QPMapComputer

FEEDBACK_SESSION_ID = 1  # fixed (the node draws one at random) so that runs are identical
DONE = "edge_done"  # the event that frees the worker


class MapEdge:
    """Which frames get a map, by the sensitivity node's rule in the edge container
    (SensitivityNode.frame_decoded / wants / segment, with the simulated clock for its
    monotonic one), around the real cores: the first frame, then the first frame the worker
    takes once `period_frames` frames were decoded, `min_map_interval_s` of camera time
    passed since the last map's frame, and the worker spent at most `max_compute_share` of its
    time on maps. `method.maps`: "stac" (QPMapComputer's allocation) or "two_level"."""

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
    ) -> tuple[FeedbackMap, np.ndarray]:
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


class Edge:
    """Decoder, resync and one worker; see the module docstring. Outgoing messages are
    returned to the caller, which puts them on the downlink; the end of a job is an event
    (DONE, priority 0) on the shared queue."""

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
        self._pending: _Job | None = None  # the newest decoded frame the worker has not taken
        self._busy = False
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
                outgoing.append(Outgoing("request", now_s, unit.index, keyframe_request_bytes()))
            if not decoded.ok:
                self.counters["undecodable"] += 1
                self.ledger.set(unit.index, "status", UNDECODABLE)
                return outgoing
            image, reference = decoded.image, self.decoder.reference_image
        self.on_decoded(unit.index, image)
        if self.map_edge is not None:
            self.map_edge.frame_decoded(unit.frame_seq)
        if self._pending is not None:  # replaced before the worker took it
            self.counters["skipped"] += 1
        self._pending = _Job(unit.index, unit.frame_seq, image, reference)
        if not self._busy:
            outgoing += self._start(now_s)
        return outgoing

    def done(self, now_s: float) -> list[Outgoing]:
        """The worker's job ended at `now_s`: it takes the next one."""
        self._busy = False
        return self._start(now_s)

    def _start(self, now_s: float) -> list[Outgoing]:
        job, self._pending = self._pending, None
        if job is None:
            return []
        self._busy = True
        self.ledger.set(job.index, "segmented", True)
        stamp_s = self.ledger.get(job.index, "capture_s")
        outgoing = []
        if self.map_edge is not None and self.map_edge.wants(now_s, stamp_s):
            self.counters["jobs_map"] += 1
            done_s = now_s + 1e-3 * self.timing.map_ms
            sent, class_ids = self.map_edge.compute(
                job.image, job.reference, stamp_s, now_s, done_s
            )
            outgoing.append(
                Outgoing(
                    "map",
                    done_s,
                    job.index,
                    qp_map_bytes(len(sent.data)),
                    (sent, job.frame_seq, stamp_s, job.image),
                )
            )
        else:
            self.counters["jobs_segment"] += 1
            done_s = now_s + 1e-3 * self.timing.segment_ms
            self.masks.add(job.index, job.image)
            class_ids = self.masks.get(job.index)
        size_bytes, received = sent_mask(class_ids)
        outgoing.append(
            Outgoing("mask", done_s, job.index, size_bytes, (received, job.frame_seq, job.image))
        )
        self.masks.release(lambda index: index > job.index)
        self.events.push(done_s, DONE, priority=0)
        return outgoing
