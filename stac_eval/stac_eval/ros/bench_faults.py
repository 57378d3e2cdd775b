"""`stac-bench faults`: the real nodes over DDS under loss, a rate cap, restarts, a camera
flood and a rogue publisher, each scenario ending with the accounting of every frame.

Each scenario is one run of the graph (stac_eval.ros.graph_runner) on the clip played in a
loop for its duration, inside the private network namespace scripts/demo.sh and scripts/test.sh
use, with the kernel link (stac_eval.kernel_link) where the scenario has one. Figures per
scenario: frames_published and frames_with_robot_mask, counted from the topics by the
recorder (every camera stamp the source published, and those the robot's mask with that stamp
came for; frame_check: the frames without one, those while the robot was down, and whether the
nodes' counters agree), frames_accounted (from the counters; must equal what the source
says it published), lost_on_link, recovery_ms (for restarts: from the restart to the next
mask; otherwise the longest outage the edge measured from a loss, damage or join to its next
mask), max_rss_mb, rss_growth_mb and rss_mb_series (every 10 s) per process (memory must
stay bounded), crashed (a process that died on its own or logged a traceback, or did not end
within 30 s of SIGTERM: exit_after_sigterm_s; such a process is asked for its threads'
stacks first, `stacks_requested`, which it writes to its log; the processes' logs of such a
scenario are kept in OUT.logs/SCENARIO, `logs_kept`), and what each scenario adds (keyframe
requests, rejected messages, ...). At the top level, the bit-flip sweep's
corrupt_passed_as_decoded (stac_eval.bitflip): damaged access units that came out of the
decoder as good pictures, target 0.

Loss scenarios use the edge's best-effort subscription, so that a lost datagram is a lost
frame the edge must heal with a keyframe request; with the reliable default, DDS retransmits
and loss becomes delay. Delay with jitter needs the netem qdisc; where the kernel has none the
scenario is reported as skipped with that reason.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stac_eval.accounting import (
    after_robot_crash,
    counters_agree_with_topics,
    frame_accounting,
    robot_mask_check,
)
from stac_eval.bench_codec import default_video
from stac_eval.bitflip import sweep_video
from stac_eval.kernel_link import LinkSettings, netem_available
from stac_eval.ros.demo import find_launch_dir
from stac_eval.ros.graph_runner import (
    RSS_SAMPLE_PERIOD_S,
    FaultEvent,
    GraphRun,
    GraphRunConfig,
)
from stac_eval.ros.recorder_node import GraphRunResult

COUNTERS = (
    "frames_in", "frames_encoded", "frames_segmented", "frames_skipped", "frames_failed",
    "frames_pending", "frames_lost", "qp_maps", "qp_maps_rejected", "keyframe_requests",
)  # fmt: skip
ROGUE_TO_NODE = {"image": "stac_encoder", "encoded": "stac_segmenter"}
# Memory samples (one every RSS_SAMPLE_PERIOD_S) of a process's first WARMUP_S seconds are
# start-up (imports, the model, torch's allocator filling its caches), not growth.
WARMUP_S = 10.0
RSS_SERIES_STEP_S = 10.0  # the memory series kept in each scenario's figures
RESTARTS = ("start_edge", "start_robot")
NO_PERIODIC_IDR_FRAMES = 100_000  # encoder_node's largest gop_frames: hours at camera rates


@dataclass(frozen=True)
class Scenario:
    """One fault: how the graph runs, what happens when, and which netem features it needs."""

    name: str
    description: str
    overrides: dict = field(default_factory=dict)  # GraphRunConfig fields
    needs_netem: bool = False


def scenarios(duration_s: float, flood_s: float, clip_fps: float) -> list[Scenario]:
    """The scenarios of the reliability issue, with their timings for a run of duration_s."""
    restart_at, back_at = 0.3 * duration_s, 0.3 * duration_s + 1.0
    lossy = {"encoded_qos": "best_effort"}
    return [
        Scenario("baseline", "no fault: the reference for the others"),
        *(
            Scenario(
                f"loss_{pct}pct",
                f"{pct}% of the robot<->edge datagrams dropped (nftables), best-effort edge",
                {**lossy, "link": LinkSettings(loss=pct / 100)},
            )
            for pct in (1, 5, 20)
        ),
        Scenario(
            "rate_500kbit",
            "uplink capped at 500 kbit/s (htb, 0.5 s byte buffer); reliable edge",
            {"link": LinkSettings(rate_bps=500e3)},
        ),
        Scenario(
            "delay_100ms_jitter",
            "100 ms one-way delay with 20 ms jitter (netem)",
            {"link": LinkSettings(delay_s=0.1, jitter_s=0.02)},
            needs_netem=True,
        ),
        Scenario(
            "edge_restart",
            f"the edge process killed (SIGKILL) at {restart_at:.0f} s and started again at "
            f"{back_at:.0f} s; the robot streams on, with no periodic IDR (the new edge must "
            "ask for a keyframe: a GOP boundary arriving before the robot's service is matched "
            "would otherwise heal the stream by chance)",
            {
                "events": (FaultEvent(restart_at, "kill_edge"), FaultEvent(back_at, "start_edge")),
                "robot_gop_frames": NO_PERIODIC_IDR_FRAMES,
            },
        ),
        Scenario(
            "robot_restart",
            f"the robot's encoder killed at {restart_at:.0f} s and started again at "
            f"{back_at:.0f} s; the edge resyncs at its first keyframe",
            {"events": (FaultEvent(restart_at, "kill_robot"), FaultEvent(back_at, "start_robot"))},
        ),
        Scenario(
            "camera_flood",
            f"the camera at 10x its rate ({10 * clip_fps:.0f} Hz asked) for {flood_s:.0f} s",
            {"pace": "fixed", "rate_hz": 10 * clip_fps, "play_duration_s": flood_s},
        ),
        Scenario(
            "rogue_publisher",
            "malformed QPMap, EncodedFrame and Image messages on the graph's topics",
            {"events": (FaultEvent(1.0, "start_rogue"),), "rogue_duration_s": duration_s - 3.0},
        ),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, default=default_video(), help="clip, looped")
    parser.add_argument("--duration-s", type=float, default=30.0, help="per scenario")
    parser.add_argument("--flood-s", type=float, default=60.0, help="the camera flood")
    parser.add_argument("--scenarios", nargs="+", default=None, help="names (default: all)")
    parser.add_argument("--flips", type=int, default=1000, help="bit-flip sweep size")
    parser.add_argument(
        "--launch-dir", type=Path, default=None, help="launch files (default: the repository's)"
    )


def run(args: argparse.Namespace) -> dict:
    if not args.video.is_file():
        raise SystemExit(f"stac-bench faults: clip not found: {args.video}")
    fps = _clip_fps(args.video)
    chosen = scenarios(args.duration_s, args.flood_s, fps)
    if args.scenarios:
        unknown = set(args.scenarios) - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"stac-bench faults: unknown scenarios {sorted(unknown)}")
        chosen = [s for s in chosen if s.name in args.scenarios]
    base = dict(
        video_uri=str(args.video),
        launch_dir=args.launch_dir or find_launch_dir(),
        pace="recorded",
        play_duration_s=args.duration_s,
        record_bag=False,
        overlay_video=False,
    )
    results = {}
    netem = netem_available()
    for scenario in chosen:
        print(f"stac-bench faults: {scenario.name}: {scenario.description}", flush=True)
        if scenario.needs_netem and not netem:
            results[scenario.name] = {
                "skipped": "this kernel has no netem qdisc ('tc qdisc add ... netem': qdisc "
                "kind is unknown); delay and jitter cannot be emulated here",
                "description": scenario.description,
            }
            continue
        with tempfile.TemporaryDirectory(prefix=f"stac-fault-{scenario.name}-") as out_dir:
            config = GraphRunConfig(out_dir=Path(out_dir), **{**base, **scenario.overrides})
            result = GraphRun(config).run()
            figures = scenario_figures(scenario, result)
            if figures["crashed"]:
                logs_dir = Path(f"{args.out}.logs") / scenario.name
                figures["logs_kept"] = str(keep_logs(result, logs_dir))
                print(f"stac-bench faults: {scenario.name} crashed; logs in {logs_dir}")
            results[scenario.name] = figures
    sweep = sweep_video(video=args.video, flips=args.flips)
    out = {
        "clip": str(args.video),
        "scenarios": results,
        "corrupt_passed_as_decoded": sweep["corrupt_passed_as_decoded"],
        "bitflip_sweep": sweep,
    }
    _print_table(out)
    return out


def scenario_figures(scenario: Scenario, result: GraphRunResult) -> dict:
    """The figures of one scenario's run (see the module docstring)."""
    robot = summed_counters(result, "stac_encoder")
    edge = summed_counters(result, "stac_segmenter")
    if "encoder_node" in result.killed:
        robot = robot_counters_after_restart(result)
    rogue = result.rogue_sent
    for kind, node in ROGUE_TO_NODE.items():  # the rogue's messages are not camera frames
        counters = robot if node == "stac_encoder" else edge
        for name in ("frames_in", "frames_failed"):
            counters[name] -= rogue.get(kind, 0)
    accounting = frame_accounting(result.frames_published, robot, edge)
    check = robot_mask_check(result.source_stamps, result.robot_mask_sizes, result.robot_outages_ns)
    check["counters_agree"] = counters_agree_with_topics(check, accounting)
    logs = {name: path.read_text() for name, path in result.logs.items() if path.is_file()}
    return {
        "description": scenario.description,
        "frames_published": check["frames_published"],
        "frames_with_robot_mask": check["frames_with_robot_mask"],
        "frame_check": check,
        "frames_accounted": accounting["accounted"],
        "lost_on_link": accounting["lost_on_link"],
        "recovery_ms": recovery_ms(result, edge),
        "max_rss_mb": {n: round(max(v), 1) for n, v in result.rss_mb.items() if v},
        "rss_growth_mb": rss_growth_mb(result.rss_mb),
        "rss_mb_series": rss_series(result.rss_mb),
        "crashed": crashed(result, logs),
        "accounting": accounting,
        "keyframes": sum(1 for r in result.encoded if r.keyframe),
        "keyframe_requests": edge.get("keyframe_requests", 0),
        "qp_maps_applied": robot.get("qp_maps", 0),
        "qp_maps_rejected": robot.get("qp_maps_rejected", 0),
        "rogue_sent": rogue,
        "rejections_logged": rejection_kinds(logs),
        "link": result.link,
        "exit_codes": result.exit_codes,
        "exit_after_sigterm_s": result.exit_after_sigterm_s,
        "stacks_requested": result.stacks_requested,
        "killed": result.killed,
    }


def keep_logs(result: GraphRunResult, logs_dir: Path) -> Path:
    """Copy the processes' logs out of the run's scratch folder (which goes with the run),
    so that a scenario that crashed can be looked into afterwards."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    for name, path in result.logs.items():
        if path.is_file():
            shutil.copyfile(path, logs_dir / f"{name}.log")
    return logs_dir


def robot_counters_after_restart(result: GraphRunResult) -> dict:
    """The robot's counters when its encoder was killed and started again: the killed
    instance's last second died with it, so its access units are the ones the recorder saw
    before the stream's numbering restarted (after_robot_crash); the new instance's own
    counters are exact and are added as they are."""
    killed = _summed([m for m in result.retired_statistics if m.node_name == "stac_encoder"])
    current = result.statistics.get("stac_encoder")
    seqs = [record.frame_seq for record in result.encoded]
    restart = next((i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1]), len(seqs))
    robot = after_robot_crash(killed, restart)
    for name in COUNTERS:
        robot[name] = robot.get(name, 0) + (getattr(current, name) if current else 0)
    return robot


def summed_counters(result: GraphRunResult, node_name: str) -> dict:
    """A node's counters over every instance of the run (killed ones and the last), plus the
    largest recovery any of them measured."""
    instances = [m for m in result.retired_statistics if m.node_name == node_name]
    if node_name in result.statistics:
        instances.append(result.statistics[node_name])
    return _summed(instances)


def _summed(instances: list) -> dict:
    summed = {name: sum(getattr(m, name) for m in instances) for name in COUNTERS}
    summed["recovery_ms_max"] = max((m.recovery_ms_max for m in instances), default=0.0)
    return summed


def recovery_ms(result: GraphRunResult, edge: dict) -> float | None:
    """From a restart to the next mask; else the edge's longest outage-to-mask time."""
    restarts = [t for e, t in result.events_done.items() if e.action in RESTARTS]
    if restarts:
        after = [t for t in result.mask_arrival_s if t >= restarts[-1]]
        return round(1e3 * (after[0] - restarts[-1]), 1) if after else None
    return round(edge.get("recovery_ms_max", 0.0), 1)


def rss_growth_mb(samples: dict[str, list[float]]) -> dict[str, float]:
    """Per process: the median of the last quarter of its samples after warm-up minus the
    median of the first quarter (medians: the allocator's short swings are not growth)."""
    growth = {}
    for name, values in samples.items():
        settled = values[_samples_in(WARMUP_S) :]
        if len(settled) >= 4:
            quarter = len(settled) // 4
            late, early = np.median(settled[-quarter:]), np.median(settled[:quarter])
            growth[name] = round(float(late - early), 1)
    return growth


def rss_series(samples: dict[str, list[float]], step_s: float = RSS_SERIES_STEP_S) -> dict:
    """Per process: its resident memory every step_s seconds (the samples' median over each
    step, MiB), so that a trend can be told from the allocator's swings."""
    step = max(_samples_in(step_s), 1)
    return {
        name: [round(float(np.median(values[i : i + step])), 1)
               for i in range(0, len(values), step)]
        for name, values in samples.items()
        if values
    }  # fmt: skip


def _samples_in(seconds: float) -> int:
    """How many memory samples the runner takes in `seconds` (one every RSS_SAMPLE_PERIOD_S)."""
    return round(seconds / RSS_SAMPLE_PERIOD_S)


def crashed(result: GraphRunResult, logs: dict[str, str]) -> bool:
    """A process that exited with an error at the end (killed: it did not end within the
    runner's grace after SIGTERM), or logged a traceback (the processes the scenario killed
    on purpose excepted)."""
    if any(code != 0 for code in result.exit_codes.values()):
        return True
    return any("Traceback" in text for text in logs.values())


def rejection_kinds(logs: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per log, each kind of refusal and how often its first occurrence was logged (1 each)."""
    kinds = {}
    for name, text in logs.items():
        found = re.findall(r"\[([\w/]+): first occurrence", text)
        if found:
            kinds[name] = {kind: found.count(kind) for kind in sorted(set(found))}
    return kinds


def _clip_fps(video: Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    capture.release()
    return fps if 0 < fps < 1000 else 25.0


def _print_table(out: dict) -> None:
    print(f"{'scenario':<20}{'published':>10}{'robot mask':>11}{'accounted':>10}{'lost':>6}"
          f"{'recovery ms':>12}{'max RSS MB':>11}{'growth MB':>10}{'crashed':>8}")  # fmt: skip
    for name, figures in out["scenarios"].items():
        if "skipped" in figures:
            print(f"{name:<20}skipped: {figures['skipped'][:70]}")
            continue
        rss = max(figures["max_rss_mb"].values(), default=0.0)
        growth = max(figures["rss_growth_mb"].values(), default=0.0)
        print(
            f"{name:<20}{figures['frames_published']:>10}{figures['frames_with_robot_mask']:>11}"
            f"{figures['frames_accounted']:>10}"
            f"{figures['lost_on_link']:>6}{figures['recovery_ms']!s:>12}{rss:>11.0f}"
            f"{growth:>10.1f}{figures['crashed']!s:>8}"
        )
    print(f"bit flips: corrupt_passed_as_decoded = {out['corrupt_passed_as_decoded']}")
