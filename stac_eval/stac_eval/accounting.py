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
"""

from __future__ import annotations

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
