"""Keyframe mode's pacing (`EdgePacer`): when the edge can take the robot's next keyframe.

A small event model stands in for the link and the edge: the robot wants to send at every
camera frame (the scene is always stale), the uplink takes `uplink_s`, the edge works on one
keyframe at a time for `service_s` each, in order, and its answer takes `downlink_s` back. The
robot notices an answer at its next camera frame, as the node does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stac_encoder.keyframes import EdgePacer

FPS = 25.0


@dataclass
class Played:
    sent: int
    waits_s: list[float]  # per keyframe: how long it waited at the edge before work began
    idle_s: float  # the edge's idle time between its first start and its last end
    most_unanswered: int
    mean_age_s: float  # over camera frames: age of the newest answered keyframe's capture


def play(
    send_ahead: bool, service_s: float, uplink_s: float, downlink_s: float, fps: float = FPS
) -> Played:
    pacer = EdgePacer(send_ahead, timeout_s=2.0)
    answers: list[tuple[float, int]] = []  # (arrival at the robot, frame_seq)
    free_at, first_start, busy_s = 0.0, None, 0.0
    waits, sent, most = [], 0, 0
    captured: dict[int, float] = {}
    newest, ages = None, []
    for index in range(int(10 * fps)):
        now = index / fps
        for arrival, frame_seq in [answer for answer in answers if answer[0] <= now]:
            pacer.answered(frame_seq)
            answers.remove((arrival, frame_seq))
            newest = max(newest or 0.0, captured[frame_seq])
        if newest is not None:
            ages.append(now - newest)
        pacer.frame(now)
        if pacer.free(now):
            sent += 1
            pacer.sent(sent, now)
            captured[sent] = now
            arrival = now + uplink_s
            start = max(arrival, free_at)
            first_start = start if first_start is None else first_start
            waits.append(start - arrival)
            free_at = start + service_s
            busy_s += service_s
            answers.append((free_at + downlink_s, sent))
        most = max(most, pacer.unanswered)
    return Played(sent, waits, free_at - first_start - busy_s, most, sum(ages) / len(ages))


def test_waiting_for_each_answer_never_queues_but_leaves_the_edge_idle():
    played = play(False, service_s=0.17, uplink_s=0.03, downlink_s=0.025)
    assert played.most_unanswered == 1
    assert max(played.waits_s) == 0.0
    # each round trip leaves the edge idle for the return trip, the wait for the next
    # camera frame and the next uplink
    assert played.idle_s > 0.25 * 10.0


@pytest.mark.parametrize(
    ("service_s", "uplink_s", "downlink_s"),
    [(0.17, 0.03, 0.025), (0.14, 0.05, 0.04)],
    ids=["cpu_edge", "slower_link"],
)
def test_send_ahead_keeps_a_slow_edge_busy_without_a_queue(service_s, uplink_s, downlink_s):
    waiting = play(False, service_s, uplink_s, downlink_s)
    ahead = play(True, service_s, uplink_s, downlink_s)
    assert ahead.most_unanswered == 2  # one at work, one in the edge's one-frame slot
    assert ahead.sent >= 1.15 * waiting.sent
    assert ahead.idle_s < 0.75 * waiting.idle_s
    assert ahead.mean_age_s < 0.97 * waiting.mean_age_s
    # a keyframe sent ahead reaches the edge about when it frees (a queue would make it wait
    # about a whole service time)
    assert sum(ahead.waits_s) / len(ahead.waits_s) < 0.5 / FPS


def test_send_ahead_lets_a_fast_edge_take_nearly_every_frame():
    """A GPU edge answers in ~60 ms, more than a camera frame: waiting for each answer sends
    every second frame at best."""
    waiting = play(False, service_s=0.007, uplink_s=0.03, downlink_s=0.022)
    ahead = play(True, service_s=0.007, uplink_s=0.03, downlink_s=0.022)
    frames = int(10 * FPS)
    assert waiting.sent <= frames // 2 + 1
    assert ahead.sent >= 0.9 * frames
    assert max(ahead.waits_s) == 0.0
    assert ahead.mean_age_s < 0.85 * waiting.mean_age_s


@pytest.mark.parametrize(
    ("fps", "service_s"), [(25.0, 0.3), (10.0, 0.139)], ids=["slow_edge", "slow_camera"]
)
def test_send_ahead_costs_little_where_it_cannot_win(fps, service_s):
    """Where the edge's time dwarfs the link's, or camera frames are far apart, a keyframe
    can only go a whole frame early or late: the masks age about as much as without."""
    waiting = play(False, service_s, 0.03, 0.03, fps)
    ahead = play(True, service_s, 0.03, 0.03, fps)
    assert ahead.mean_age_s < 1.06 * waiting.mean_age_s
    assert ahead.most_unanswered <= 2


def test_a_request_clears_what_is_waited_for_and_a_silent_edge_times_out():
    pacer = EdgePacer(True, timeout_s=0.5)
    pacer.frame(0.0)
    pacer.sent(1, 0.0)
    assert not pacer.free(0.04)  # no round trip measured yet: nothing is sent ahead
    pacer.clear()
    assert pacer.free(0.08) and pacer.unanswered == 0
    pacer.sent(2, 0.08)
    assert not pacer.frame(0.5)
    assert pacer.frame(0.6) and pacer.free(0.6)  # 0.52 s without an answer


# --- the pipeline (send_ahead with pipeline): the edge's own pace, several in flight ---------


@dataclass
class Slotted:
    sent: int
    skipped: int  # replaced in the edge's slot by a newer keyframe before work began
    most_unanswered: int
    mean_age_s: float


def play_slot(pipeline: bool, service, uplink_s: float, downlink_s: float) -> Slotted:
    """The segmenter's own policy: one keyframe at work, one waiting in its slot, a newer one
    replaces the waiting one (which is never answered; the next answer covers it).
    `service`: seconds per keyframe, or a function of the start time."""
    service_at = service if callable(service) else (lambda _: service)
    pacer = EdgePacer(True, timeout_s=2.0, pipeline=pipeline)
    arrivals: list[tuple[float, int]] = []
    answers: list[tuple[float, int]] = []
    slot, free_at = None, 0.0
    captured: dict[int, float] = {}
    sent = skipped = most = 0
    newest, ages = None, []

    def start(item: tuple[float, int], at: float) -> None:
        nonlocal free_at
        free_at = at + service_at(at)
        answers.append((free_at + downlink_s, item[1]))

    def edge_until(now: float) -> None:
        nonlocal slot
        while True:
            if slot is not None and free_at <= now and (not arrivals or free_at <= arrivals[0][0]):
                start(slot, max(free_at, slot[0]))
                slot = None
            elif arrivals and arrivals[0][0] <= now:
                item = arrivals.pop(0)
                if free_at <= item[0]:
                    start(item, item[0])
                else:
                    skipped_now = slot is not None
                    slot = item
                    yield skipped_now
                    continue
            else:
                return

    for index in range(int(10 * FPS)):
        now = index / FPS
        skipped += sum(edge_until(now))
        for arrival, frame_seq in sorted(answer for answer in answers if answer[0] <= now):
            pacer.answered(frame_seq)
            answers.remove((arrival, frame_seq))
            newest = max(newest or 0.0, captured[frame_seq])
        if newest is not None:
            ages.append(now - newest)
        pacer.frame(now)
        if pacer.free(now):
            sent += 1
            pacer.sent(sent, now)
            captured[sent] = now
            arrivals.append((now + uplink_s, sent))
        most = max(most, pacer.unanswered)
    return Slotted(sent, skipped, most, sum(ages) / len(ages))


def test_the_pipeline_keeps_an_edge_as_fast_as_the_camera_busy():
    """A 38-ms forward (ONNX Runtime on one core at 960x540) and a round trip of three camera
    frames: send-ahead sends every second frame, the pipeline nearly every one."""
    ahead = play_slot(False, 0.038, 0.023, 0.021)
    piped = play_slot(True, 0.038, 0.023, 0.021)
    frames = int(10 * FPS)
    assert ahead.sent <= frames // 2 + 1
    assert piped.sent >= 0.9 * frames and piped.skipped == 0
    assert 3 <= piped.most_unanswered <= 4  # a round trip's worth, plus the edge's slot
    assert piped.mean_age_s < 0.9 * ahead.mean_age_s


def test_the_pipeline_finds_a_slower_edges_pace():
    """An edge slower than the camera: the pipeline settles at its pace (a few keyframes
    replaced in the slot while it tries a frame faster) and its masks are no older."""
    ahead = play_slot(False, 0.08, 0.023, 0.021)
    piped = play_slot(True, 0.08, 0.023, 0.021)
    assert piped.skipped <= 0.2 * piped.sent
    assert piped.mean_age_s <= ahead.mean_age_s


def test_the_pipeline_follows_an_edge_that_slows_for_map_passes():
    """A 40-ms edge whose forwards take twice as long while a map pass runs beside them
    (0.45 s of every second): the pace follows the gaps between the answers both ways."""

    def service(at: float) -> float:
        return 0.08 if at % 1.0 < 0.45 else 0.04

    ahead = play_slot(False, service, 0.023, 0.021)
    piped = play_slot(True, service, 0.023, 0.021)
    assert piped.sent > 1.5 * ahead.sent and piped.skipped <= 0.1 * piped.sent
    assert piped.mean_age_s < 0.95 * ahead.mean_age_s


@pytest.mark.parametrize(
    "service", [0.06, 0.124, 0.3], ids=["between_frames", "cpu_edge", "slow_edge"]
)
def test_the_pipeline_costs_little_where_it_cannot_win(service):
    """A pace between two frame counts, or an edge much slower than the camera: the masks
    age at most 8 % more than with send-ahead alone."""
    ahead = play_slot(False, service, 0.023, 0.021)
    piped = play_slot(True, service, 0.023, 0.021)
    assert piped.mean_age_s <= 1.08 * ahead.mean_age_s
    assert piped.skipped <= 0.25 * piped.sent


def test_without_the_pipeline_at_most_two_are_unanswered():
    for service in (0.0073, 0.038, 0.124):
        assert play_slot(False, service, 0.023, 0.021).most_unanswered <= 2


def test_a_long_first_round_trip_does_not_hold_the_pipeline_back():
    """The first keyframe (an IDR, several times a P-frame's size) takes a frame longer: once
    a shorter round trip is seen, the pace is no slower than send-ahead's."""
    pacer = EdgePacer(True, timeout_s=2.0, pipeline=True)
    frame_s = 1.0 / FPS
    pacer.frame(0.0)
    pacer.sent(1, 0.0)
    for index in (1, 2):
        pacer.frame(index * frame_s)
    pacer.answered(1)
    pacer.frame(3 * frame_s)  # three frames for the IDR
    assert pacer.free(3 * frame_s)
    pacer.sent(2, 3 * frame_s)
    pacer.frame(4 * frame_s)
    assert not pacer.free(4 * frame_s) and pacer.interval_frames == 2  # every second frame
    pacer.answered(2)
    pacer.frame(5 * frame_s)  # two frames for a P-frame: send-ahead's pace is every frame
    assert pacer.free(5 * frame_s)
    pacer.sent(3, 5 * frame_s)
    pacer.frame(6 * frame_s)
    # the next one before the answer: the edge is that fast
    assert pacer.free(6 * frame_s) and pacer.interval_frames == 1
