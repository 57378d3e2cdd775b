"""One edge, many robots: which decoded frames share the model's next forward pass.

Plain Python (no ROS): the edge container's per-robot nodes hand every decoded frame to
their robot's lane; one worker thread forms batches and hands each to `process_batch`, which
runs them through the model in one forward. The pattern of multi-stream video analytics
(DeepStream's muxer, Triton's dynamic batcher):

- each robot has a one-frame slot: a newer frame replaces the waiting one (returned to the
  caller, which counts it as skipped), so a robot that floods the edge only ever has its newest
  frame waiting and never more than one place in a batch;
- a batch takes at most one frame per robot and at most `max_batch` frames, robots in round
  robin order starting after the last robot served, so when the batch cannot hold every robot
  they take turns;
- once a frame waits, the worker waits up to `batch_timeout_s` for the other robots' frames
  (or until every robot has one), then runs the batch it has.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np

from stac_edge_segmenter.edge_decoding import DecodedFrame

T = TypeVar("T")


@dataclass(frozen=True)
class BatchEntry(Generic[T]):
    """One robot's frame in a batch."""

    robot: str
    item: T


class RobotLane(Generic[T]):
    """A robot's door into the scheduler, with the worker interface its segmenter node
    expects (`submit` returns the displaced frame, `close` the frame left waiting)."""

    def __init__(self, scheduler: FleetScheduler[T], robot: str) -> None:
        self._scheduler, self.robot = scheduler, robot

    def submit(self, item: T) -> T | None:
        return self._scheduler.submit(self.robot, item)

    def close(self) -> T | None:
        return self._scheduler.remove_robot(self.robot)


class FleetScheduler(Generic[T]):
    """Batches of the robots' newest frames for one model; see the module docstring.

    process_batch(entries) runs one batch; on_error(entries, error) is called if it raises
    (the worker outlives a failing batch). Robots join with `lane(robot)` and leave with
    `remove_robot(robot)` at any time.
    """

    def __init__(
        self,
        process_batch: Callable[[list[BatchEntry[T]]], None],
        on_error: Callable[[list[BatchEntry[T]], Exception], None],
        max_batch: int = 8,
        batch_timeout_s: float = 0.02,
        name: str = "fleet-scheduler",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if batch_timeout_s < 0:
            raise ValueError(f"batch_timeout_s must be >= 0, got {batch_timeout_s}")
        self._process_batch, self._on_error = process_batch, on_error
        self.max_batch, self.batch_timeout_s = max_batch, batch_timeout_s
        self._robots: list[str] = []  # round-robin order: the order robots joined
        self._slots: dict[str, T] = {}
        self._next = 0  # index in _robots where the next batch starts looking
        self._first_waiting_s: float | None = None
        self._in_flight: frozenset[str] = frozenset()
        self._closed = False
        self._condition = threading.Condition()
        self.batches = 0
        self.batch_sizes: dict[int, int] = {}  # batch size -> how many batches had it
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def robots(self) -> tuple[str, ...]:
        with self._condition:
            return tuple(self._robots)

    def lane(self, robot: str) -> RobotLane[T]:
        """Add a robot (at the end of the round-robin order); its lane."""
        with self._condition:
            if robot in self._robots:
                raise ValueError(f"robot {robot!r} already has a lane")
            self._robots.append(robot)
        return RobotLane(self, robot)

    def submit(self, robot: str, item: T) -> T | None:
        """Offer a robot's newest frame; the frame it displaced from the slot, if any."""
        with self._condition:
            if robot not in self._robots:
                raise KeyError(f"robot {robot!r} has no lane")
            displaced = self._slots.get(robot)
            self._slots[robot] = item
            if self._first_waiting_s is None:
                self._first_waiting_s = time.monotonic()
            self._condition.notify_all()
            return displaced

    def remove_robot(self, robot: str) -> T | None:
        """Take a robot out; waits until a batch in flight that holds its frame is done (so
        nothing of the robot runs after this returns). The frame left waiting, if any."""
        with self._condition:
            if robot not in self._robots:
                return None
            index = self._robots.index(robot)
            self._robots.remove(robot)
            if index < self._next:
                self._next -= 1
            leftover = self._slots.pop(robot, None)
            if not self._slots:
                self._first_waiting_s = None
            if threading.current_thread() is not self._thread:
                self._condition.wait_for(lambda: robot not in self._in_flight)
            return leftover

    def _take_batch(self) -> list[BatchEntry[T]]:
        """Up to max_batch waiting frames, one per robot, round robin from _next."""
        order = self._robots[self._next :] + self._robots[: self._next]
        chosen = [robot for robot in order if robot in self._slots][: self.max_batch]
        if chosen:
            self._next = (self._robots.index(chosen[-1]) + 1) % len(self._robots)
        self._first_waiting_s = None
        batch = [BatchEntry(robot, self._slots.pop(robot)) for robot in chosen]
        if self._slots:  # robots left out wait from now on
            self._first_waiting_s = time.monotonic()
        return batch

    def _ready(self) -> bool:
        """A batch should go now: full, every robot has a frame, or the first frame has
        waited batch_timeout_s."""
        if self._closed or not self._slots:
            return self._closed
        if len(self._slots) >= min(self.max_batch, len(self._robots)):
            return True
        return time.monotonic() - self._first_waiting_s >= self.batch_timeout_s

    def _wait_s(self) -> float | None:
        if not self._slots:
            return None
        return max(0.0, self._first_waiting_s + self.batch_timeout_s - time.monotonic())

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._ready():
                    self._condition.wait(self._wait_s())
                if self._closed:
                    return
                batch = self._take_batch()
                self._in_flight = frozenset(entry.robot for entry in batch)
            try:
                self._process_batch(batch)
            except Exception as error:  # the worker outlives a failing batch
                self._on_error(batch, error)
            finally:
                with self._condition:
                    self._in_flight = frozenset()
                    self.batches += 1
                    self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
                    self._condition.notify_all()

    def close(self, timeout_s: float = 10.0) -> list[BatchEntry[T]]:
        """Stop after the batch in flight; the frames left waiting."""
        with self._condition:
            self._closed = True
            leftovers = [BatchEntry(robot, item) for robot, item in self._slots.items()]
            self._slots.clear()
            self._condition.notify_all()
        self._thread.join(timeout=timeout_s)
        return leftovers


class MapGate:
    """Which robot's frame gets the next map pass, across all robots of an edge.

    The edge has one map worker beside the batch worker: one map pass at a time (none is
    chosen while one runs), and the sensitivity node's compute-share rule once for the whole
    map worker: after a pass that took d seconds, the next may start only d * (1 - share) /
    share seconds later (each robot's sensitivity node applies the rule to its own maps; with
    many robots their maps together would take far more than `share` of the cores). When the
    gate opens, the robot that has wanted a map longest gets it, even if its frame is not in
    the batch at hand: the robot whose frames happen to come first after each map would
    otherwise take every map. A robot that wanted one but has not been seen for
    `forget_after_s` (it left, or stopped sending) no longer holds the others up. Thread-safe:
    the batch worker chooses, the map worker records."""

    def __init__(self, forget_after_s: float = 5.0) -> None:
        self.forget_after_s = forget_after_s
        self._next_allowed_s = 0.0
        self._running = False
        self._wanting_since: dict[str, float] = {}
        self._seen_s: dict[str, float] = {}
        self._lock = threading.Lock()

    def choose(self, now_s: float, wanting: list[str]) -> str | None:
        """Of the robots in this batch whose frame is due for a map, the one to get it now;
        the gate stays closed until `record` says its pass ended."""
        with self._lock:
            for robot in wanting:
                self._wanting_since.setdefault(robot, now_s)
                self._seen_s[robot] = now_s
            stale = [r for r, seen in self._seen_s.items() if now_s - seen > self.forget_after_s]
            for robot in stale:
                self._forget(robot)
            if self._running or now_s < self._next_allowed_s or not wanting:
                return None
            longest = min(self._wanting_since, key=self._wanting_since.__getitem__)
            if longest not in wanting:
                return None
            self._running = True
            return longest

    def record(self, robot: str, started_s: float, ended_s: float, share: float) -> None:
        """A map pass of `robot` ran from started_s to ended_s; share: its max_compute_share."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        with self._lock:
            self._forget(robot)
            self._running = False
            self._next_allowed_s = ended_s + (ended_s - started_s) * (1.0 - share) / share

    def forget(self, robot: str) -> None:
        with self._lock:
            self._forget(robot)

    def _forget(self, robot: str) -> None:
        self._wanting_since.pop(robot, None)
        self._seen_s.pop(robot, None)


class FleetRobot(Protocol):
    """What a batch needs of each robot's session on the edge (its segmenter and sensitivity
    nodes in the container)."""

    map_share: float  # the robot's max_compute_share

    def wants_map(self, frame: DecodedFrame) -> bool:
        """Whether this frame is due for a QP map (the robot's own pacing)."""

    def map_pass(self, frame: DecodedFrame) -> None:
        """The sensitivity pass: publishes the frame's map (a failure is the robot's to count
        and log: it never raises)."""

    def finish(
        self,
        frame: DecodedFrame,
        class_ids: np.ndarray | None = None,
        error: Exception | None = None,
    ) -> None:
        """Publish the frame's mask, or count it failed (error, or publishing failed); the
        frame leaves pending either way. Never raises."""


@dataclass(frozen=True)
class BatchReport:
    """What one batch did: frames through the batched forward, and the robot whose frame was
    handed to the map worker (None: no map this batch)."""

    forwarded: int
    map_robot: str | None


def run_batch(
    entries: list[BatchEntry[DecodedFrame]],
    robots: Mapping[str, FleetRobot],
    forward: Callable[[np.ndarray], np.ndarray],
    gate: MapGate,
    start_map: Callable[[BatchEntry[DecodedFrame]], None],
    clock: Callable[[], float] = time.monotonic,
) -> BatchReport:
    """Run one batch: every frame goes through `forward` (NxHxWx3 uint8 -> NxHxW class ids),
    frames of one picture size in one call; the frame the gate chooses among those due for a
    map is also handed to the map worker (`start_map`, which runs `run_map_pass` in a thread
    of its own), so no frame waits for a map pass. A failure fails only the frames it
    concerns; each frame is delivered or failed once."""
    wanting = [e.robot for e in entries if robots[e.robot].wants_map(e.item)]
    chosen = gate.choose(clock(), wanting)
    map_entry = next((e for e in entries if e.robot == chosen), None)
    if map_entry is not None:
        start_map(map_entry)
    by_size: dict[tuple[int, ...], list[BatchEntry[DecodedFrame]]] = {}
    for entry in entries:
        by_size.setdefault(entry.item.image.shape, []).append(entry)
    for group in by_size.values():
        try:
            class_ids = forward(np.stack([entry.item.image for entry in group]))
        except Exception as error:  # the model failed on this group: its frames failed
            for entry in group:
                robots[entry.robot].finish(entry.item, error=error)
            continue
        for entry, ids in zip(group, class_ids, strict=True):
            robots[entry.robot].finish(entry.item, ids)
    return BatchReport(len(entries), None if map_entry is None else map_entry.robot)


def run_map_pass(
    entry: BatchEntry[DecodedFrame],
    robots: Mapping[str, FleetRobot],
    gate: MapGate,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """The map worker's job: the robot's sensitivity pass on the frame, then the gate told
    how long it took (whether the robot is still served or not)."""
    robot = robots.get(entry.robot)
    started = clock()
    try:
        if robot is not None:
            robot.map_pass(entry.item)
    finally:
        share = robot.map_share if robot is not None else 1.0
        gate.record(entry.robot, started, clock(), share)
