"""The plain-Python parts of recovery: frame accounting, resync decisions, the kernel link's
commands (the link itself is exercised over DDS in test_link_e2e.py)."""

from __future__ import annotations

import subprocess

import pytest

from stac_codec.h264_decoder import DecodeResult, DecodeStatus
from stac_edge_segmenter.resync import ResyncTracker
from stac_eval.accounting import (
    after_robot_crash,
    counters_agree_with_topics,
    frame_accounting,
    robot_mask_check,
)
from stac_eval.kernel_link import (
    EDGE_PARTICIPANT_ID,
    ROBOT_PARTICIPANT_ID,
    KernelLink,
    LinkSettings,
    fastdds_profile,
    participant_ports,
    settings_from_spec,
)

GOOD = DecodeResult(DecodeStatus.DECODED, None, 1, False)


def decoded(frame_seq: int) -> DecodeResult:
    return DecodeResult(DecodeStatus.DECODED, None, frame_seq, False)


def refused(frame_seq: int) -> DecodeResult:
    return DecodeResult(DecodeStatus.CORRUPT, None, frame_seq, False, "garbage", True)


def bad(frame_seq: int) -> DecodeResult:
    return DecodeResult(DecodeStatus.WAITING_FOR_KEYFRAME, None, frame_seq, False, "gap")


def test_every_frame_is_in_exactly_one_category():
    robot = {"frames_in": 98, "frames_encoded": 97, "frames_failed": 1}
    edge = {
        "frames_in": 90, "frames_lost": 5, "frames_segmented": 30, "frames_skipped": 50,
        "frames_failed": 9, "frames_pending": 1,
    }  # fmt: skip
    accounting = frame_accounting(100, robot, edge)
    assert accounting["not_received_by_robot"] == 2
    assert accounting["lost_on_link"] == 7 and accounting["lost_on_link_seen_as_gaps"] == 5
    assert accounting["accounted"] == 100 and accounting["every_frame_accounted_for"]


def test_frames_a_killed_robot_took_with_it_are_their_own_category():
    # the killed encoder had counted 100 frames in; 94 access units went out, 1 was refused
    robot = after_robot_crash({"frames_in": 100, "frames_encoded": 97, "frames_failed": 1}, 94)
    edge = {"frames_in": 94, "frames_segmented": 30, "frames_skipped": 64}
    accounting = frame_accounting(110, robot, edge)
    assert accounting["lost_in_robot_crash"] == 5 and accounting["not_received_by_robot"] == 10
    assert accounting["accounted"] == 110 and accounting["every_frame_accounted_for"]
    # its stale counters said fewer frames in than went out: nothing was lost in the crash
    robot = after_robot_crash({"frames_in": 90, "frames_encoded": 90, "frames_failed": 1}, 94)
    assert robot["frames_lost_in_crash"] == 0 and robot["frames_in"] == 95


def test_a_restarted_robot_is_counted_per_instance():
    """The killed encoder's stale counters are replaced by the units the recorder saw before
    the numbering restarted; the new encoder's counters are added as they are."""
    from stac_eval.ros.bench_faults import robot_counters_after_restart
    from stac_eval.ros.recorder_node import EncodedRecord, GraphRunResult
    from stac_msgs.msg import Statistics

    result = GraphRunResult(frames_published=100)
    result.encoded = [EncodedRecord(seq, 0, 1000, seq == 1, 0) for seq in range(1, 41)]
    result.encoded += [EncodedRecord(seq, 0, 1000, seq == 1, 0) for seq in range(1, 51)]
    # its last report said 35 in and 35 encoded; it went on to 42 in, 40 sent, then died
    result.retired_statistics = [
        Statistics(node_name="stac_encoder", frames_in=35, frames_encoded=35)
    ]
    result.statistics["stac_encoder"] = Statistics(
        node_name="stac_encoder", frames_in=52, frames_encoded=52
    )
    robot = robot_counters_after_restart(result)
    assert (robot["frames_in"], robot["frames_encoded"]) == (40 + 52, 40 + 52)
    assert robot["frames_lost_in_crash"] == 0  # what it had in hand is not visible: not received


def test_counters_that_do_not_add_up_are_flagged():
    robot = {"frames_in": 100, "frames_encoded": 100, "frames_failed": 0}
    edge = {"frames_in": 90, "frames_segmented": 30, "frames_skipped": 50}  # 10 vanished
    assert not frame_accounting(100, robot, edge)["every_frame_accounted_for"]
    assert not frame_accounting(None, robot, {})["every_frame_accounted_for"]


def test_the_topic_check_counts_robot_masks_by_stamp():
    """Ten camera stamps, the robot's masks of eight; a mask of a stamp no camera frame had."""
    stamps = list(range(100, 110))
    check = robot_mask_check(stamps, [s for s in stamps if s not in (103, 107)])
    assert (check["frames_published"], check["frames_with_robot_mask"]) == (10, 8)
    assert check["frames_without_robot_mask"] == 2 and not check["every_frame_has_robot_mask"]
    assert robot_mask_check(stamps + stamps, stamps)["every_frame_has_robot_mask"]  # by stamp
    stray = robot_mask_check(stamps, [*stamps, 999])
    assert stray["robot_masks_of_unpublished_stamps"] == 1
    assert not stray["every_frame_has_robot_mask"]


def test_the_topic_check_says_where_the_misses_lie():
    """Camera frames 40 ms apart; which ones lack the robot's mask, and a stray mask, in ms
    after the first stamp."""
    stamps = [40_000_000 * k for k in range(10)]
    check = robot_mask_check(stamps, [*[s for s in stamps if s not in stamps[3:5]], 10**9])
    assert check["without_robot_mask_at_ms"] == [120.0, 160.0]
    assert check["unpublished_robot_masks_at_ms"] == [1000.0]


def test_frames_while_the_robot_was_down_are_explained_by_the_outage_only():
    """Killed at 150, started at 160: frames 141-149 were in the dying encoder's hands or
    published while it was down, 150-164 before the new one's first mask (165); 130 is a
    frame missing outside the outage and stays unexplained."""
    stamps = list(range(100, 200))
    masked = [s for s in stamps if s <= 140 or s >= 165]
    check = robot_mask_check(stamps, masked, [(150, 160)])
    assert check["without_robot_mask_while_robot_down"] == 24
    assert check["every_frame_has_robot_mask"]
    masked.remove(130)
    check = robot_mask_check(stamps, masked, [(150, 160)])
    assert check["without_robot_mask_while_robot_down"] == 24
    assert check["frames_without_robot_mask"] == 25 and not check["every_frame_has_robot_mask"]


def test_the_counters_must_tell_the_topics_story():
    robot = {"frames_in": 97, "frames_encoded": 96, "frames_failed": 1}
    edge = {"frames_in": 96, "frames_segmented": 30, "frames_skipped": 66}
    accounting = frame_accounting(100, robot, edge)  # 3 not received by the robot, 1 refused
    stamps = list(range(100))
    agreeing = robot_mask_check(stamps, stamps[4:])
    assert counters_agree_with_topics(agreeing, accounting)
    # a robot that published no mask for two frames its counters say it took
    assert not counters_agree_with_topics(robot_mask_check(stamps, stamps[6:]), accounting)
    # a recorder that saw another number of camera frames than the source says it published
    assert not counters_agree_with_topics(robot_mask_check(stamps[1:], stamps[4:]), accounting)


def test_resync_counts_gaps_and_forgives_a_restarted_numbering():
    tracker = ResyncTracker()
    counted = [tracker.on_frame(decoded(seq)) for seq in (1, 2, 5, 6, 1, 2)]
    assert counted == [0, 0, 2, 0, 0, 0]
    assert tracker.on_frame(decoded(2**63)) == 0 and tracker.on_frame(decoded(3)) == 0
    assert tracker.frames_lost == 2


def test_refused_units_are_neither_in_the_sequence_nor_lost():
    tracker = ResyncTracker()
    assert tracker.on_frame(decoded(10)) == 0
    assert tracker.on_frame(refused(7)) == 0  # someone else's number: ignored
    assert tracker.on_frame(refused(11)) == 0  # our frame 11, damaged: it arrived, it failed
    assert tracker.on_frame(decoded(13)) == 1  # only 12 is lost
    assert tracker.frames_lost == 1


def test_resync_asks_at_most_once_per_interval_and_times_the_outage():
    tracker = ResyncTracker(min_request_interval_s=0.5)
    assert not tracker.should_request(GOOD, 0.0)
    assert tracker.should_request(bad(10), 1.0)
    assert not tracker.should_request(bad(11), 1.2)
    assert tracker.should_request(bad(12), 1.6)
    assert tracker.on_mask(9, 1.7) is None  # a mask of a frame from before the outage
    assert tracker.on_mask(13, 2.0) == pytest.approx(1.0)
    assert not tracker.in_outage and tracker.on_mask(14, 2.1) is None


def test_a_request_that_could_not_go_out_does_not_hold_the_next_back():
    tracker = ResyncTracker(min_request_interval_s=0.5)
    assert tracker.should_request(bad(10), 1.0)
    tracker.request_not_sent()  # the robot's service was not matched yet
    assert tracker.should_request(bad(11), 1.04)  # the next unit asks again at once
    assert not tracker.should_request(bad(12), 1.08)  # that one went out: the interval holds


def test_the_link_syntax_is_the_replays():
    settings = settings_from_spec("rate=500kbit,loss=5%,delay=40ms")
    assert (settings.rate_bps, settings.loss, settings.delay_s) == (500e3, 0.05, 0.04)
    with pytest.raises(ValueError):
        settings_from_spec("rate=fast")


def test_participant_ports_follow_the_rtps_mapping():
    assert participant_ports(0, 0) == (7410, 7411)
    assert participant_ports(3, 7) == (8174, 8175)  # seen bound by rmw_fastrtps here


def test_only_the_edge_profile_drops_shared_memory():
    edge, robot = fastdds_profile(EDGE_PARTICIPANT_ID, True), fastdds_profile(20, False)
    assert "<useBuiltinTransports>false</useBuiltinTransports>" in edge and "UDPv4" in edge
    assert "useBuiltinTransports" not in robot and "<participantID>20</participantID>" in robot


class _Recorder:
    """Stands in for subprocess.run: records the commands, answers like tc/nft would."""

    def __init__(self, netem: bool) -> None:
        self.netem, self.commands = netem, []

    def __call__(self, command, **kwargs):
        self.commands.append((command, kwargs.get("input")))
        refused = "netem" in command and not self.netem
        return subprocess.CompletedProcess(command, 1 if refused else 0, "", "unknown qdisc")


def test_the_link_shapes_and_drops_only_the_robot_edge_ports(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/sbin/{tool}")
    run = _Recorder(netem=False)
    link = KernelLink(LinkSettings(rate_bps=2e6, loss=0.01, delay_s=0.04), 7, run=run)
    link.apply()
    uplink = participant_ports(7, EDGE_PARTICIPANT_ID)
    downlink = participant_ports(7, ROBOT_PARTICIPANT_ID)
    text = "\n".join(" ".join(c) + (i or "") for c, i in run.commands)
    assert "rate 2000000bit ceil 2000000bit" in text
    assert all(f"dport {port} 0xffff flowid 1:10" in text for port in uplink)
    rule = next(i for _, i in run.commands if i and "numgen" in i)
    assert "mod 10000 < 100" in rule and all(str(p) in rule for p in (*uplink, *downlink))
    assert link.describe()["delay"].startswith("unavailable")


def test_a_refused_unit_asks_for_nothing_and_starts_no_outage():
    tracker = ResyncTracker()
    assert not tracker.should_request(refused(5), 0.0) and not tracker.in_outage


def test_last_log_line_is_the_error_that_ends_a_traceback(tmp_path):
    from stac_eval.ros.graph_runner import last_log_line

    log = tmp_path / "node.log"
    log.write_text("[INFO] up\nTraceback (most recent call last):\n  File x\nValueError: bad\n\n")
    assert last_log_line(log) == "ValueError: bad"
    log.write_text("")
    assert last_log_line(log) == ""
    assert last_log_line(tmp_path / "missing.log") == ""


def test_start_up_failures_name_each_exited_process_with_its_code_and_last_line(tmp_path):
    import subprocess
    import sys

    from stac_eval.ros.graph_runner import exited_processes, start_up_failures

    def started(name: str, code: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)

    processes = {
        "edge": started("edge", "raise SystemExit('period_frames out of range')"),
        "robot": started("robot", "import time; time.sleep(30)"),
    }
    try:
        processes["edge"].wait(timeout=30)
        assert exited_processes(processes) == ["edge"]
        report = start_up_failures(processes, tmp_path)
        assert report.startswith("edge exited with code 1 during start-up: period_frames out of")
        assert str(tmp_path / "edge.log") in report and "robot" not in report
    finally:
        processes["robot"].kill()
        processes["robot"].wait()


def test_the_runner_kills_only_what_ignores_sigterm_and_times_each_end(tmp_path, monkeypatch):
    """SIGTERM to every process; one that ignores it is asked for its threads' stacks (a node
    writes them to its log) and killed after the grace, and each process's exit code and time
    from SIGTERM to its end are kept (a node that hangs in its shutdown shows as -9 after the
    grace, with its stacks in its log; one that ends shows its own time)."""
    import sys
    import time

    from stac_eval.ros import graph_runner
    from stac_eval.ros.graph_runner import GraphRun, GraphRunConfig

    monkeypatch.setattr(graph_runner, "SHUTDOWN_GRACE_S", 3.0)
    run = GraphRun(GraphRunConfig(video_uri="unused", out_dir=tmp_path, launch_dir=tmp_path))
    hanging = (
        "import signal, time\n"
        "from stac_ros_common.node_runner import ending_cleanly\n"
        "def stuck_in_shutdown():\n"
        "    time.sleep(60)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "with ending_cleanly():\n"
        "    print('ready', flush=True)\n"
        "    stuck_in_shutdown()\n"
    )
    log = tmp_path / "hangs.log"
    with log.open("w") as output:
        run._processes = {
            "ends": subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
            "hangs": subprocess.Popen(
                [sys.executable, "-c", hanging], stdout=output, stderr=subprocess.STDOUT
            ),
        }
    run.result.logs["hangs"] = log
    deadline = time.monotonic() + 30.0
    while "ready" not in log.read_text() and time.monotonic() < deadline:  # handlers are set
        time.sleep(0.05)
    run._end_processes()
    assert run.result.exit_codes == {"ends": -15, "hangs": -9}
    assert run.result.stacks_requested == ["hangs"]
    stacks = log.read_text()
    assert "most recent call first" in stacks and "in stuck_in_shutdown" in stacks
    # the one that hung waited out the grace (it is killed only after it); the one that ended
    # was timed when it ended, before that
    ended_s, hung_s = (run.result.exit_after_sigterm_s[name] for name in ("ends", "hangs"))
    assert ended_s <= hung_s and hung_s >= 3.0


def test_a_crashed_scenario_keeps_its_logs(tmp_path):
    from stac_eval.ros.bench_faults import keep_logs
    from stac_eval.ros.recorder_node import GraphRunResult

    run_dir = tmp_path / "scratch"
    run_dir.mkdir()
    (run_dir / "encoder_node.log").write_text("[INFO] started\n")
    result = GraphRunResult()
    result.logs = {"encoder_node": run_dir / "encoder_node.log", "gone": run_dir / "none.log"}
    kept = keep_logs(result, tmp_path / "out.json.logs" / "camera_flood")
    assert sorted(p.name for p in kept.iterdir()) == ["encoder_node.log"]
    assert (kept / "encoder_node.log").read_text() == "[INFO] started\n"


def test_memory_is_reported_as_growth_and_as_a_series():
    """rss_growth_mb: the last quarter's median after warm-up less the first quarter's (a
    one-sample swing is not growth); rss_mb_series: the medians of each 10 samples."""
    from stac_eval.ros.bench_faults import WARMUP_S, rss_growth_mb, rss_series

    warmup = [100.0] * int(WARMUP_S)
    steady = warmup + [500.0] * 39 + [900.0]  # one swing at the end
    growing = warmup + [500.0 + i for i in range(40)]
    assert rss_growth_mb({"steady": steady, "growing": growing}) == {
        "steady": 0.0,
        "growing": 30.0,
    }
    series = rss_series({"growing": growing, "none": []})
    assert series == {"growing": [100.0, 504.5, 514.5, 524.5, 534.5]}
