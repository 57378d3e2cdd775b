"""Edge helpers: the newest-wins slot, mask overlays and node statistics."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from stac_codec.overlay import mask_overlay
from stac_ros_common.newest_item_worker import LatestSlot, NewestItemWorker
from stac_ros_common.statistics import NodeStatistics, SlidingWindow


def test_slot_keeps_the_newest_and_reports_what_it_displaced():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1
    assert slot.take(timeout_s=0) == 2
    assert slot.take(timeout_s=0.01) is None


def test_slot_wakes_a_waiting_consumer():
    slot: LatestSlot[str] = LatestSlot()
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout_s=5)))
    consumer.start()
    slot.put("frame")
    consumer.join(timeout=5)
    assert got == ["frame"]


def test_close_returns_the_unconsumed_item_and_releases_the_consumer():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(7)
    assert slot.close() == 7
    assert slot.closed and slot.take(timeout_s=5) is None


def test_overlay_blends_palette_colours():
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    palette = np.array([[0, 0, 0], [200, 50, 0]], np.uint8)
    out = mask_overlay(image, mask, palette, alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])
    np.testing.assert_array_equal(out[0, 1], [150, 75, 50])
    np.testing.assert_array_equal(mask_overlay(image, mask, palette, alpha=0.0), image)


def test_overlay_is_the_blend_rounded_to_nearest():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = rng.integers(0, 7, (40, 60), dtype=np.uint8)
    palette = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    for alpha in (0.5, 0.3, 1.0):
        exact = (1 - alpha) * image.astype(np.float64) + alpha * palette[mask].astype(np.float64)
        out = mask_overlay(image, mask, palette, alpha)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out - exact).max() <= 0.5 + 1e-6  # nearest (a tie either way)


def test_overlay_rejects_mismatches():
    palette = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match="sizes differ"):
        mask_overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 2), np.uint8), palette)
    with pytest.raises(ValueError, match="no colour"):
        mask_overlay(np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 5, np.uint8), palette)


def test_rates_and_latencies_cover_the_window_only():
    stats = NodeStatistics(window_s=1.0)
    stats.add_uplink(0.2, 1000)
    stats.add_uplink(1.5, 500)
    stats.add_feedback(1.6, 100)
    for i, latency in enumerate([10, 20, 30, 40, 1000]):
        stats.add_latency(1.1 + i * 0.1, latency)
    stats.count("frames_in", 3)
    snapshot = stats.snapshot(now_s=2.0)
    assert snapshot.uplink_bps == 8 * 500
    assert snapshot.feedback_bps == 8 * 100
    assert snapshot.latency_ms_median == 30
    assert 40 < snapshot.latency_ms_p95 <= 1000
    assert snapshot.counters.frames_in == 3
    assert "in 3" in snapshot.summary()


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        SlidingWindow(0.0)


def test_worker_survives_a_failing_item_and_processes_the_next():
    handled, failed, done = [], [], threading.Event()

    def handle(item: int) -> None:
        if item == 1:
            raise RuntimeError("bad frame")
        handled.append(item)
        done.set()

    worker = NewestItemWorker(handle, lambda item, error: failed.append((item, str(error))), "t")
    worker.submit(1)
    for _ in range(500):  # wait (up to 5 s) until the failure is reported
        if failed:
            break
        threading.Event().wait(0.01)
    worker.submit(2)
    assert done.wait(5)
    assert worker.close() is None
    assert failed == [(1, "bad frame")] and handled == [2]


def _nice_of_items(creator_nice: int, worker_nice: int) -> tuple[list[int], bool, int]:
    """The nice values a NewestItemWorker(nice=worker_nice) ran its item at, created by a
    thread at creator_nice (its own thread, so this test's nice stays as it is); whether it
    says it is niced; and the creator's nice afterwards."""
    seen, done, out = [], threading.Event(), {}

    def handle(item: int) -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        done.set()

    def creator() -> None:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, creator_nice)
        worker = NewestItemWorker(handle, lambda item, error: None, "niced", nice=worker_nice)
        worker.submit(1)
        assert done.wait(5)
        worker.close()
        out["niced"], out["after"] = worker.niced, os.getpriority(os.PRIO_PROCESS, thread_id)

    thread = threading.Thread(target=creator)
    thread.start()
    thread.join()
    return seen, out["niced"], out["after"]


def test_a_niced_worker_runs_its_items_that_much_nicer_than_its_creator():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if before > 15:  # the creator thread below cannot take nice 15 back without privilege
        pytest.skip(f"the test runs at nice {before}; it needs 15 or less")
    # an edge process launched at nice 3 with a map worker nice 7: the worker at 10, not
    # at max(3, 7) = 7, so it yields to the process's other threads
    creator = max(before, 3)
    assert _nice_of_items(creator, 7) == ([min(19, creator + 7)], True, creator)
    assert _nice_of_items(15, 10) == ([19], True, 15)  # capped at the lowest priority
    # the caller's thread is untouched
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    with pytest.raises(ValueError, match="nice"):
        NewestItemWorker(print, lambda item, error: None, "bad", nice=20)
