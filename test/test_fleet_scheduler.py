"""The fleet edge's scheduler core: one frame per robot per batch, newest wins, round robin,
a flooding robot cannot take the others' places, one forward per picture size, at most one
map pass per batch under the fleet-wide compute share (stac_sensitivity.fleet_scheduler)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from stac_edge_segmenter.edge_decoding import DecodedFrame
from stac_eval.fleet_metrics import jain_fairness
from stac_sensitivity.fleet_scheduler import (
    BatchEntry,
    FleetScheduler,
    MapGate,
    run_batch,
    run_map_pass,
)

WAIT_S = 10.0  # generous: only a broken scheduler waits this long


class Recorder:
    """process_batch that records each batch and, while `hold` is set, blocks until told."""

    def __init__(self) -> None:
        self.batches: queue.Queue[list[tuple[str, int]]] = queue.Queue()
        self.errors: list[Exception] = []
        self.release = threading.Semaphore(0)
        self.hold = False

    def process(self, entries: list[BatchEntry[int]]) -> None:
        self.batches.put([(entry.robot, entry.item) for entry in entries])
        if self.hold:
            assert self.release.acquire(timeout=WAIT_S)

    def on_error(self, entries, error) -> None:
        self.errors.append(error)

    def next(self) -> list[tuple[str, int]]:
        return self.batches.get(timeout=WAIT_S)


@pytest.fixture
def recorder():
    return Recorder()


def scheduler_for(recorder: Recorder, robots: list[str], **kwargs) -> FleetScheduler[int]:
    scheduler = FleetScheduler(recorder.process, recorder.on_error, **kwargs)
    for robot in robots:
        scheduler.lane(robot)
    return scheduler


def test_a_batch_holds_one_frame_per_robot_the_newest(recorder):
    recorder.hold = True
    scheduler = scheduler_for(recorder, ["r1", "r2"], max_batch=8, batch_timeout_s=WAIT_S)
    try:
        assert scheduler.submit("r1", 1) is None
        assert scheduler.submit("r2", 1) is None  # every robot has one: the batch goes now
        assert recorder.next() == [("r1", 1), ("r2", 1)]
        # while the model is busy, r1 sends three frames: only the newest waits
        assert scheduler.submit("r1", 2) is None
        assert scheduler.submit("r1", 3) == 2
        assert scheduler.submit("r1", 4) == 3
        assert scheduler.submit("r2", 2) is None
        recorder.release.release()
        assert recorder.next() == [("r1", 4), ("r2", 2)]
    finally:
        recorder.release.release()
        scheduler.close()


def test_a_lone_frame_goes_after_the_batch_timeout(recorder):
    scheduler = scheduler_for(recorder, ["r1", "r2"], max_batch=8, batch_timeout_s=0.05)
    try:
        scheduler.submit("r1", 7)
        assert recorder.next() == [("r1", 7)]
    finally:
        scheduler.close()


def test_robots_take_turns_when_a_batch_cannot_hold_them_all(recorder):
    recorder.hold = True
    robots = ["r0", "r1", "r2", "r3"]
    scheduler = scheduler_for(recorder, robots, max_batch=2, batch_timeout_s=WAIT_S)
    try:
        scheduler.submit("r0", 1)
        scheduler.submit("r1", 1)
        assert recorder.next() == [("r0", 1), ("r1", 1)]
        for robot in robots:
            scheduler.submit(robot, 2)
        recorder.release.release()
        assert recorder.next() == [("r2", 2), ("r3", 2)]  # the ones left out go first
        recorder.release.release()
        assert recorder.next() == [("r0", 2), ("r1", 2)]
    finally:
        recorder.release.release()
        scheduler.close()


def test_a_flooding_robot_cannot_starve_the_others(recorder):
    """r_flood offers 50 frames for each frame of the others: every batch still has exactly
    one frame of each robot, and the others lose nothing."""
    recorder.hold = True
    scheduler = scheduler_for(recorder, ["r_flood", "r1", "r2"], batch_timeout_s=WAIT_S)
    served: dict[str, int] = {"r_flood": 0, "r1": 0, "r2": 0}
    displaced = {"r_flood": 0, "r1": 0, "r2": 0}
    try:
        for round_ in range(20):
            for index in range(50):
                flood = scheduler.submit("r_flood", round_ * 100 + index)
                displaced["r_flood"] += flood is not None
            for robot in ("r1", "r2"):
                displaced[robot] += scheduler.submit(robot, round_) is not None
            batch = recorder.next()
            assert sorted(robot for robot, _ in batch) == ["r1", "r2", "r_flood"]
            for robot, _ in batch:
                served[robot] += 1
            recorder.release.release()
    finally:
        recorder.release.release()
        scheduler.close()
    assert served == {"r_flood": 20, "r1": 20, "r2": 20}
    assert displaced["r1"] == displaced["r2"] == 0
    assert jain_fairness(list(served.values())) == pytest.approx(1.0)


def test_a_robot_joins_and_leaves_while_batches_run(recorder):
    recorder.hold = True
    scheduler = scheduler_for(recorder, ["r1"], batch_timeout_s=WAIT_S)
    try:
        scheduler.submit("r1", 1)
        assert recorder.next() == [("r1", 1)]
        scheduler.lane("r2").submit(1)  # joins while r1's batch is in flight
        scheduler.submit("r1", 2)
        left = {}
        leaving = threading.Thread(target=lambda: left.update(r1=scheduler.remove_robot("r1")))
        leaving.start()
        leaving.join(0.2)
        assert leaving.is_alive(), "remove_robot returned while r1's frame was in flight"
        recorder.release.release()
        leaving.join(WAIT_S)
        assert not leaving.is_alive()
        assert left["r1"] in (None, 2)  # its waiting frame, unless it went out before
        batch = recorder.next()
        assert ("r2", 1) in batch
        assert scheduler.robots == ("r2",)
        with pytest.raises(KeyError):
            scheduler.submit("r1", 3)
    finally:
        recorder.release.release()
        recorder.release.release()
        scheduler.close()


def test_a_failing_batch_does_not_stop_the_worker(recorder):
    def explode(entries):
        recorder.batches.put(entries)
        raise RuntimeError("model on fire")

    scheduler = FleetScheduler(explode, recorder.on_error, batch_timeout_s=0.0)
    scheduler.lane("r1")
    try:
        scheduler.submit("r1", 1)
        recorder.next()
        scheduler.submit("r1", 2)
        assert [entry.item for entry in recorder.next()] == [2]
    finally:
        scheduler.close()
    assert [str(e) for e in recorder.errors] == ["model on fire", "model on fire"]


def test_bad_settings_are_refused(recorder):
    with pytest.raises(ValueError, match="max_batch"):
        FleetScheduler(recorder.process, recorder.on_error, max_batch=0)
    with pytest.raises(ValueError, match="batch_timeout_s"):
        FleetScheduler(recorder.process, recorder.on_error, batch_timeout_s=-1)


# run_batch ---------------------------------------------------------------------------------


@dataclass
class FakeRobot:
    """A robot session: wants a map when told; records what the batch did with its frames."""

    wants: bool = False
    map_share: float = 0.5
    finished: list = field(default_factory=list)
    maps: int = 0

    def wants_map(self, frame):
        return self.wants

    def map_pass(self, frame):
        self.maps += 1

    def finish(self, frame, class_ids=None, error=None):
        self.finished.append((frame.frame_seq, None if class_ids is None else class_ids, error))


def frame(seq: int, height: int = 4, width: int = 6, value: int = 0) -> DecodedFrame:
    return DecodedFrame(None, seq, np.full((height, width, 3), value, np.uint8))


class Forward:
    """A batched 'model': class id = the frame's pixel value; records each call's batch."""

    def __init__(self, fail_on_height: int | None = None) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail_on_height = fail_on_height

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(images.shape)
        if images.shape[1] == self.fail_on_height:
            raise RuntimeError("out of memory")
        return images[..., 0].copy()


def test_a_batch_runs_one_forward_per_picture_size_and_hands_one_map_over():
    """Every frame is segmented by the batch's forward, the map frame too: its map pass goes
    to the map worker (run_map_pass) and nothing waits for it."""
    robots = {name: FakeRobot(wants=name in ("b", "c")) for name in "abcd"}
    entries = [
        BatchEntry("a", frame(1, value=1)),
        BatchEntry("b", frame(2, value=2)),
        BatchEntry("c", frame(3, value=3)),
        BatchEntry("d", frame(4, height=8, value=4)),
    ]
    forward, handed = Forward(), []
    gate = MapGate()
    report = run_batch(entries, robots, forward, gate, handed.append, clock=lambda: 1.0)
    assert report.map_robot == "b" and report.forwarded == 4  # one map per batch
    assert sorted(forward.calls) == [(1, 8, 6, 3), (3, 4, 6, 3)]
    assert [entry.robot for entry in handed] == ["b"] and robots["b"].maps == 0
    for name, value in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        ((seq, class_ids, error),) = robots[name].finished
        assert error is None and (class_ids == value).all()
    # one pass at a time: c is due too, but the gate stays shut until b's pass is recorded
    assert (
        run_batch(entries[2:3], robots, forward, gate, handed.append, lambda: 2.0).map_robot is None
    )
    run_map_pass(handed[0], robots, gate, clock=iter([3.0, 3.5]).__next__)
    assert robots["b"].maps == 1
    assert (
        run_batch(entries[2:3], robots, forward, gate, handed.append, lambda: 4.0).map_robot == "c"
    )


def test_the_gate_keeps_maps_to_their_share_of_the_worker():
    gate = MapGate()
    gate.record("a", started_s=10.0, ended_s=11.0, share=0.25)  # a 1-s map: 3 s of masks first
    assert gate.choose(13.9, ["a"]) is None and gate.choose(14.0, ["a"]) == "a"
    robots = {"a": FakeRobot(wants=True)}
    gate.record("a", started_s=10.0, ended_s=11.0, share=0.25)
    handed = []
    report = run_batch(
        [BatchEntry("a", frame(1))], robots, Forward(), gate, handed.append, lambda: 12.0
    )
    assert report.map_robot is None and not handed
    with pytest.raises(ValueError, match="share"):
        gate.record("a", 0.0, 1.0, share=0.0)


def test_the_robot_that_waited_longest_gets_the_next_map():
    """r2's frames always come in the batch after r1's: r1 must not take every map."""
    gate = MapGate(forget_after_s=5.0)
    granted = []
    for second in range(6):
        now = float(second)
        for robot in ("r1", "r2"):  # each robot's frame in a batch of its own
            if gate.choose(now, [robot]) == robot:
                granted.append(robot)
                gate.record(robot, now, now + 0.1, share=0.5)
            now += 0.05
    assert granted == ["r1", "r2", "r1", "r2", "r1", "r2"]
    assert gate.choose(100.0, ["r1"]) == "r1"  # r2 was not seen for 5 s: forgotten


def test_a_failure_fails_only_the_frames_it_concerns():
    robots = {"a": FakeRobot(), "b": FakeRobot(), "c": FakeRobot(wants=True)}
    entries = [
        BatchEntry("a", frame(1, height=4)),
        BatchEntry("b", frame(2, height=8)),
        BatchEntry("c", frame(3, height=8)),
    ]
    run_batch(entries, robots, Forward(fail_on_height=4), MapGate(), [].append, lambda: 0.0)
    assert [str(error) for *_, error in robots["a"].finished] == ["out of memory"]
    assert [error for *_, error in robots["b"].finished] == [None]
    assert [error for *_, error in robots["c"].finished] == [None]


def test_a_map_pass_for_a_robot_that_left_still_reopens_the_gate():
    gate = MapGate()
    assert gate.choose(0.0, ["gone"]) == "gone"
    run_map_pass(BatchEntry("gone", frame(1)), {}, gate, clock=iter([1.0, 2.0]).__next__)
    assert gate.choose(5.0, ["other"]) == "other"


def test_jain_fairness():
    assert jain_fairness([5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain_fairness([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_fairness([]) == 1.0
