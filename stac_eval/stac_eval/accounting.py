"""Where every camera frame went: the accounting the demo, the live benchmark and the fault
suite report, from the nodes' own counters (stac_msgs/Statistics, as plain dicts).

A frame the source published is, in order along the path: not received by the robot (a camera
queue that overflowed under a flood), refused by the robot (failed), kept on the robot (keyframe
mode: the robot carried the edge's last mask to it instead of sending it), lost in a robot
crash (received by an encoder that was killed before its access unit went out), lost on the
link (the
edge saw a gap in frame_seq, or it went missing after the edge's last frame), or received by
the edge, where it is segmented, skipped under the newest-frame policy, failed (not decodable,
e.g. waiting for a keyframe after a loss) or still pending. Each category is a counter of the
node that saw it; `accounted` is their sum, and it must equal `published`. Two figures are
differences, because no node can see them: frames the robot never received (published by the
source minus received by the robot) and the tail of the link loss (frames after the last one
the edge received, which no gap in frame_seq reveals).

`robot_mask_check` does not rest on those counters: from the topics alone (the camera's stamps
and the robot's masks, as a recorder saw them) it counts the frames that got the robot's mask,
and `counters_agree_with_topics` says whether the nodes' accounting tells the same story.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EDGE_OUTCOMES = ("frames_segmented", "frames_skipped", "frames_failed", "frames_pending")


def frame_accounting(published: int | None, robot: dict, edge: dict) -> dict:
    """The accounting of one run; `robot` and `edge` are the final statistics of the encoder
    and of the segmenter (empty dicts when a node never reported). `robot` may carry
    frames_lost_in_crash, which no node counts (see bench_faults)."""
    robot_in = robot.get("frames_in", 0)
    encoded = robot.get("frames_encoded", 0)
    edge_in = edge.get("frames_in", 0)
    gaps = edge.get("frames_lost", 0)
    tail = max(encoded - edge_in - gaps, 0)
    held = robot.get("frames_held", 0)
    crashed = robot.get("frames_lost_in_crash", 0)
    categories = {
        "not_received_by_robot": max((published or 0) - robot_in, 0),
        "failed_on_robot": robot.get("frames_failed", 0),
        "kept_on_robot": held,
        "lost_in_robot_crash": crashed,
        "lost_on_link": gaps + tail,
        **{name.removeprefix("frames_"): edge.get(name, 0) for name in EDGE_OUTCOMES},
    }
    accounted = sum(categories.values())
    consistent = (
        robot_in == encoded + robot.get("frames_failed", 0) + held + crashed
        and edge_in == sum(edge.get(name, 0) for name in EDGE_OUTCOMES)
        and edge_in + gaps <= encoded
    )
    return {
        "published": published,
        **categories,
        "lost_on_link_seen_as_gaps": gaps,
        "accounted": accounted,
        "every_frame_accounted_for": bool(published is not None and consistent)
        and accounted == published,
    }


def after_robot_crash(robot: dict, units_seen: int) -> dict:
    """The robot's counters when an encoder was killed during the run: its last second of
    counters died with it, so frames_encoded is the access units the recorder saw, and the
    frames it had counted in without sending them are frames_lost_in_crash."""
    out = units_seen + robot.get("frames_failed", 0) + robot.get("frames_held", 0)
    return {
        **robot,
        "frames_encoded": units_seen,
        "frames_lost_in_crash": max(robot.get("frames_in", 0) - out, 0),
        "frames_in": max(robot.get("frames_in", 0), out),
    }


def robot_mask_check(
    source_stamps: Iterable[int],
    robot_mask_stamps: Iterable[int],
    robot_outages_ns: Sequence[tuple[int, int]] = (),
) -> dict:
    """The frame check that needs no node's counter: for every camera stamp the source
    published (as seen on the camera topic), whether the robot's mask with that stamp was seen
    on its topic. A frame without one is explained only by a robot outage: it lies after the
    last robot mask before the robot was killed and before the first one after it was started
    again (robot_outages_ns: (killed, started) pairs, in the stamps' clock). The rest must be
    explained by the nodes' accounting (frames the robot never received or refused), which
    `every_frame_has_robot_mask` does not take on trust."""
    published = set(source_stamps)
    masked = set(robot_mask_stamps)
    without = published - masked
    down = set()
    for killed_ns, started_ns in robot_outages_ns:
        before = max((s for s in masked if s < killed_ns), default=-1)
        after = min((s for s in masked if s > started_ns), default=float("inf"))
        down |= {stamp for stamp in without if before < stamp < after}
    unknown = masked - published
    first_ns = min(published | masked, default=0)
    return {
        "frames_published": len(published),
        "frames_with_robot_mask": len(published & masked),
        "frames_without_robot_mask": len(without),
        "without_robot_mask_while_robot_down": len(down),
        "robot_masks_of_unpublished_stamps": len(unknown),
        "every_frame_has_robot_mask": not unknown and len(without) == len(down),
        # where the misses lie (ms after the first stamp, at most 10 each): a failed check
        # says which frames, not only how many
        "without_robot_mask_at_ms": _offsets_ms(without - down, first_ns),
        "unpublished_robot_masks_at_ms": _offsets_ms(unknown, first_ns),
    }


def _offsets_ms(stamps_ns: set[int], first_ns: int, limit: int = 10) -> list[float]:
    return [round((stamp - first_ns) * 1e-6, 3) for stamp in sorted(stamps_ns)[:limit]]


def counters_agree_with_topics(check: dict, accounting: dict) -> bool:
    """Whether the counters' accounting (frame_accounting) matches what the topics showed
    (robot_mask_check): the same number of frames published, and the frames without the
    robot's mask exactly those the robot never received, refused or lost in a crash."""
    robot_missed = sum(
        accounting[name]
        for name in ("not_received_by_robot", "failed_on_robot", "lost_in_robot_crash")
    )
    return (
        check["frames_published"] == accounting["published"]
        and check["frames_without_robot_mask"] == robot_missed
    )
