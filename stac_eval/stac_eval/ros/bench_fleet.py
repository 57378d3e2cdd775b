"""`stac-bench fleet`: N robots and one edge, then two edges with one killed half way.

Every robot is two processes, as `local.launch.py namespace:=rK` starts them: a video source
(the clip scaled to small frames, looped, at a fixed rate, frame_id rK_camera) and the
encoder; the edge is one `edge_container` serving robots [r1..rN] (one model, one batching
worker). All are the installed executables with the launch files' --ros-args
(stac_eval.launch_args), over Fast DDS on loopback; run it inside a private network
namespace (`unshare --net`, `ip link set lo up`). This process watches every robot's topics:

- per robot: frames its camera published, frames segmented (the edge's statistics on the
  robot's stac/statistics), every frame accounted for (segmented + skipped + failed + lost on
  the edge, + failed or held on the robot), masks at the robot (capture-to-arrival latency);
- cross_talk: masks or QP maps on a robot's topics whose frame_id is another robot's or whose
  camera stamp is not one of that robot's frames (must be 0);
- jain_fairness of the per-robot segmented fps, their total, the edge's peak resident
  memory, whether it batched (its heartbeat's largest batch > 1);
- discovery: time from starting the robots' encoders until every robot and the edge are
  matched (seen from here: the robot's stream and the edge's masks each with a publisher and
  a subscriber at the other end), with multicast and with a Fast DDS Discovery Server;
- failover: two edges, each declared for half the robots and standing in for the other; one
  is killed (SIGKILL) half way; per robot of the killed edge, the time from the kill to the
  first mask of a frame captured after it (only the stand-in can have made it);
- batch: frames per second of the edge's batched forward (the path edge_container runs, one
  forward per batch of one picture size) against batch size, on --device (a GPU where there
  is one; this part needs no ROS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.node import Node

from stac_edge_segmenter.engines import DEFAULT_ENGINE, ENGINE_NAMES
from stac_eval.bench_codec import default_video
from stac_eval.discovery_server import discovery_server
from stac_eval.fleet_metrics import jain_fairness
from stac_eval.launch_args import launch_environment, ros_args
from stac_eval.ros.demo import find_launch_dir
from stac_eval.ros.graph_runner import (
    _executable,
    _process_peak_rss_mb,
    _process_rss_mb,
    exited_processes,
    start_up_failures,
)
from stac_msgs.msg import EdgeHeartbeat, EncodedFrame, QPMap, SegmentationMask, Statistics
from stac_ros_common.qos import (
    EDGE_HEARTBEAT_QOS,
    EDGE_HEARTBEAT_TOPIC,
    ENCODED_QOS,
    MASK_FEEDBACK_QOS,
    OUTPUT_QOS,
    QP_MAP_QOS,
)

EDGE_NICENESS = 10  # as stac-bench live: robots and edge are different machines in a fleet
SETTLE_S = 3.0  # counters still for this long: the run has drained
PARTS = ("runs", "discovery", "failover", "batch")
BATCH_SIZES = (1, 2, 4, 8, 16)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--video",
        type=Path,
        default=default_video(),
        help="clip every robot plays, scaled and looped (default: the dashcam clip)",
    )
    parser.add_argument(
        "--robots",
        default="1,2,4,8",
        help="fleet sizes to run on one edge, comma-separated",
    )
    parser.add_argument("--width", type=int, default=480, help="robot frame width, px")
    parser.add_argument("--height", type=int, default=270, help="robot frame height, px")
    parser.add_argument("--fps", type=float, default=5.0, help="each robot's camera rate")
    parser.add_argument("--duration-s", type=float, default=30.0, help="playback per run")
    parser.add_argument(
        "--failover-robots",
        type=int,
        default=4,
        help="robots in the two-edge failover run (half on each edge); 0 = no failover run",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=2, help="torch threads of each edge process"
    )
    parser.add_argument(
        "--launch-dir", type=Path, default=None, help="launch files (default: the repository's)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"what to run, comma-separated: {', '.join(PARTS)}",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="keep every process's log here")
    parser.add_argument(
        "--device", default="", help="batch part: torch device (empty: CUDA if any, else CPU)"
    )
    parser.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        choices=ENGINE_NAMES,
        help="the edges' inference engine (and the batch part's)",
    )
    parser.add_argument(
        "--max-batch-robots",
        type=int,
        default=0,
        help="the edge's max_batch_robots (0: its default by device, 1 on a CPU)",
    )


@dataclass
class RobotRecord:
    """What this process saw of one robot."""

    name: str
    encoded_stamps: set[int] = field(default_factory=set)
    mask_arrivals: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, stamp)
    mask_latency_ms: list[float] = field(default_factory=list)
    cross_talk: list[str] = field(default_factory=list)
    statistics: dict[str, Statistics] = field(default_factory=dict)

    @property
    def frame_id(self) -> str:
        return f"{self.name}_camera"


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class FleetWatcher:
    """An rclpy node in this process on every robot's topics and the fleet's heartbeats."""

    def __init__(self) -> None:
        self.node: Node = rclpy.create_node("stac_fleet_bench")
        self.robots: dict[str, RobotRecord] = {}
        self.heartbeats: dict[str, EdgeHeartbeat] = {}
        self.node.create_subscription(
            EdgeHeartbeat, EDGE_HEARTBEAT_TOPIC, self._on_heartbeat, EDGE_HEARTBEAT_QOS
        )

    def _on_heartbeat(self, msg: EdgeHeartbeat) -> None:
        self.heartbeats[msg.edge_name] = msg

    def add_robot(self, name: str) -> RobotRecord:
        record = self.robots[name] = RobotRecord(name)
        ns = f"/{name}/stac"
        node = self.node
        node.create_subscription(
            EncodedFrame,
            f"{ns}/encoded",
            lambda msg: record.encoded_stamps.add(_stamp_ns(msg.header.stamp)),
            ENCODED_QOS,
        )
        node.create_subscription(
            SegmentationMask, f"{ns}/mask_feedback", lambda m: self._on_mask(record, m),
            MASK_FEEDBACK_QOS,
        )  # fmt: skip
        node.create_subscription(
            QPMap, f"{ns}/qp_map", lambda m: self._on_map(record, m), QP_MAP_QOS
        )
        node.create_subscription(
            Statistics,
            f"{ns}/statistics",
            lambda m: record.statistics.__setitem__(m.node_name, m),
            OUTPUT_QOS,
        )
        return record

    def _check_source(self, record: RobotRecord, kind: str, frame_id: str, stamp: int) -> None:
        """A mask or map at this robot of a frame that is not this robot's is cross-talk."""
        if frame_id != record.frame_id or stamp not in record.encoded_stamps:
            record.cross_talk.append(f"{kind} of {frame_id} @{stamp}")

    def _on_mask(self, record: RobotRecord, msg: SegmentationMask) -> None:
        stamp = _stamp_ns(msg.header.stamp)
        now_ns = self.node.get_clock().now().nanoseconds
        record.mask_arrivals.append((time.monotonic(), stamp))
        record.mask_latency_ms.append((now_ns - stamp) * 1e-6)
        self._check_source(record, "mask", msg.header.frame_id, stamp)

    def _on_map(self, record: RobotRecord, msg: QPMap) -> None:
        self._check_source(record, "map", msg.header.frame_id, _stamp_ns(msg.source_stamp))

    def spin_until(self, condition, timeout_s: float, tick=None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if tick is not None:
                tick()
            if condition():
                return True
        return False

    def matched(self, robot: str) -> bool:
        """The robot's stream and the edge's masks both have a publisher and a subscriber
        besides this node: robot and edge are matched."""
        count = self.node
        encoded, masks = f"/{robot}/stac/encoded", f"/{robot}/stac/mask_feedback"
        return (
            count.count_publishers(encoded) >= 1
            and count.count_subscribers(encoded) >= 2
            and count.count_publishers(masks) >= 1
            and count.count_subscribers(masks) >= 2
        )

    def close(self) -> None:
        self.node.destroy_node()


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    robots: tuple[str, ...]
    stand_in_for: tuple[str, ...] = ()


class FleetRun:
    """Processes of one run: edges, robots' encoders and cameras; all stopped by `stop`."""

    def __init__(self, args: argparse.Namespace, clip: Path, log_dir: Path, environment=None):
        self.args, self.clip, self.log_dir = args, clip, log_dir
        self.launch_dir = args.launch_dir or find_launch_dir()
        self.environment = environment or {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.rss_mb: dict[str, list[float]] = {}

    def _start(self, name: str, package: str, executable: str, args, environment=None, nice=0):
        prefix = ["nice", "-n", str(nice)] if nice else []
        log = (self.log_dir / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            [*prefix, _executable(package, executable), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.environment, **(environment or {})},
        )

    def start_edge(self, edge: EdgeSpec) -> None:
        launch = self.launch_dir / "edge.launch.py"
        arguments = {
            "robots": f"[{', '.join(edge.robots)}]",
            "stand_in_for": f"[{', '.join(edge.stand_in_for)}]",
            **self._discovery_argument(),
        }
        args = ros_args(launch, "edge_container", **arguments)
        args += ["-p", f"edge_name:={edge.name}", "-p", f"torch_threads:={self.args.torch_threads}"]
        args += ["-p", f"max_batch_robots:={self.args.max_batch_robots}"]
        args += ["-p", f"engine:={self.args.engine}"]
        args += ["-p", "publish_overlay:=false", "-p", "publish_heatmap:=false"]
        environment = launch_environment(launch, **arguments)
        self._start(edge.name, "stac_sensitivity", "edge_container", args, environment,
                    EDGE_NICENESS)  # fmt: skip

    def _discovery_argument(self) -> dict[str, str]:
        server = self.environment.get("ROS_DISCOVERY_SERVER")
        return {"discovery_server": server} if server else {}

    def start_encoder(self, robot: str) -> None:
        args = ros_args(
            self.launch_dir / "robot.launch.py",
            "encoder_node",
            namespace=robot,
            camera_qos="reliable",
        )
        args += ["-p", "publish_robot_overlay:=false", "-p", f"fps:={self.args.fps}"]
        self._start(f"{robot}_encoder", "stac_encoder", "encoder_node", args)

    def start_camera(self, robot: str) -> None:
        args = ros_args(
            self.launch_dir / "local.launch.py",
            "video_source_node",
            namespace=robot,
            video_uri=str(self.clip),
        )
        args += ["-p", "pace:=fixed", "-p", f"rate_hz:={self.args.fps}", "-p", "loop:=true"]
        args += ["-p", f"duration_s:={self.args.duration_s}", "-p", f"frame_id:={robot}_camera"]
        self._start(f"{robot}_camera", "stac_encoder", "video_source_node", args)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def sample_memory(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.rss_mb.setdefault(name, []).append(_process_rss_mb(process.pid))

    def peak_rss_mb(self, name: str) -> float:
        return _process_peak_rss_mb(self.processes[name].pid)

    def frames_published(self, robot: str) -> int:
        log = (self.log_dir / f"{robot}_camera.log").read_text()
        found = re.search(r"published (\d+) frames", log)
        return int(found.group(1)) if found else 0

    def cameras_done(self) -> bool:
        return all(
            process.poll() is not None
            for name, process in self.processes.items()
            if name.endswith("_camera")
        )

    def stop(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


def robot_names(count: int) -> list[str]:
    return [f"r{index}" for index in range(1, count + 1)]


def small_clip(video: Path, out_dir: Path, width: int, height: int, frames: int = 150) -> Path:
    """The first `frames` frames of the clip at width x height (MJPG), every robot's camera."""
    capture = cv2.VideoCapture(str(video))
    path = out_dir / "fleet_clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    written = 0
    while written < frames:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
        written += 1
    writer.release()
    capture.release()
    if not written:
        raise SystemExit(f"stac-bench fleet: cannot read {video}")
    return path


def _wait_for_edges(
    watcher: FleetWatcher, run: FleetRun, edges: list[EdgeSpec], timeout_s: float
) -> None:
    """Until every edge beats; an edge that exits first stops the wait with its last log line
    (a bad parameter, a missing model) instead of the timeout."""
    names = {edge.name for edge in edges}
    watcher.spin_until(
        lambda: names <= set(watcher.heartbeats) or exited_processes(run.processes), timeout_s
    )
    if exited_processes(run.processes):
        raise RuntimeError(start_up_failures(run.processes, run.log_dir))
    if not names <= set(watcher.heartbeats):
        raise RuntimeError(f"edges did not come up: {sorted(names - set(watcher.heartbeats))}")


def _wait_linked(watcher: FleetWatcher, robots: list[str], timeout_s: float) -> None:
    """Until both ends of every robot report hearing the other (link_peers)."""

    def linked() -> bool:
        return all(
            all(
                node in watcher.robots[r].statistics
                and watcher.robots[r].statistics[node].link_peers >= 1
                for node in ("stac_encoder", "stac_segmenter")
            )
            for r in robots
        )

    if not watcher.spin_until(linked, timeout_s):
        raise RuntimeError(f"robots and edge never matched: {robots}")


def _drain(watcher: FleetWatcher, robots: list[str], timeout_s: float = 120.0) -> None:
    """Until every robot's edge has nothing pending and the counters stay still."""
    last = [None, time.monotonic()]

    def settled() -> bool:
        counters = []
        for robot in robots:
            statistics = watcher.robots[robot].statistics
            segmenter, encoder = statistics.get("stac_segmenter"), statistics.get("stac_encoder")
            if segmenter is None or encoder is None or segmenter.frames_pending:
                return False
            counters.append((encoder.frames_in, segmenter.frames_in, segmenter.frames_segmented))
        if counters != last[0]:
            last[:] = [counters, time.monotonic()]
        return time.monotonic() - last[1] > SETTLE_S

    watcher.spin_until(settled, timeout_s)


def _robot_result(record: RobotRecord, published: int, duration_s: float) -> dict:
    segmenter = record.statistics["stac_segmenter"]
    encoder = record.statistics["stac_encoder"]
    accounted = (
        segmenter.frames_segmented + segmenter.frames_skipped + segmenter.frames_failed
        + segmenter.frames_lost + encoder.frames_failed + encoder.frames_held
    )  # fmt: skip
    latency = np.asarray(record.mask_latency_ms)
    return {
        "segmented_fps": round(segmenter.frames_segmented / duration_s, 3),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 1) if latency.size else None,
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 1) if latency.size else None,
        "frames_published": published,
        "frames_accounted": int(accounted),
        "frames_segmented": int(segmenter.frames_segmented),
        "frames_skipped": int(segmenter.frames_skipped),
        "frames_lost": int(segmenter.frames_lost),
        "qp_maps": int(encoder.qp_maps),
    }


def run_fleet(args, clip: Path, log_dir: Path, count: int) -> dict:
    """N robots on one edge, `duration_s` of playback."""
    robots = robot_names(count)
    edge = EdgeSpec("edge", tuple(robots))
    run = FleetRun(args, clip, log_dir)
    watcher = FleetWatcher()
    try:
        for robot in robots:
            watcher.add_robot(robot)
        run.start_edge(edge)
        _wait_for_edges(watcher, run, [edge], 180.0)
        for robot in robots:
            run.start_encoder(robot)
        _wait_linked(watcher, robots, 180.0)
        for robot in robots:
            run.start_camera(robot)
        next_sample = [0.0]

        def sample() -> None:
            if time.monotonic() >= next_sample[0]:
                run.sample_memory()
                next_sample[0] = time.monotonic() + 1.0

        watcher.spin_until(run.cameras_done, args.duration_s + 120.0, sample)
        _drain(watcher, robots)
        watcher.spin_until(lambda: False, 1.2)  # the last statistics
        edge_rss = run.peak_rss_mb(edge.name)
        heartbeat = watcher.heartbeats[edge.name]
        per_robot = {
            robot: _robot_result(watcher.robots[robot], run.frames_published(robot),
                                 args.duration_s)
            for robot in robots
        }  # fmt: skip
    finally:
        exit_codes = run.stop()
        watcher.close()
    fps = [result["segmented_fps"] for result in per_robot.values()]
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "per_robot": per_robot,
        "jain_fairness": round(jain_fairness(fps), 4),
        "total_segmented_fps": round(sum(fps), 3),
        "edge_rss_mb": round(edge_rss, 1),
        "cross_talk": sum(len(watcher.robots[r].cross_talk) for r in robots),
        "cross_talk_examples": [c for r in robots for c in watcher.robots[r].cross_talk][:5],
        "batched": bool(heartbeat.largest_batch > 1),
        "largest_batch": int(heartbeat.largest_batch),
        "mean_batch": round(heartbeat.batched_frames / max(heartbeat.batches, 1), 2),
        "exit_codes": exit_codes,
    }


def measure_discovery(args, clip: Path, log_dir: Path, count: int, server: str | None) -> dict:
    """Seconds from starting the robots' encoders until every robot and the edge match
    (`until_matched_s`, process start-up included), and the longest time from a robot's
    stream first showing in the graph to its match with the edge (`matching_s`)."""
    environment = {"ROS_DISCOVERY_SERVER": server} if server else {}
    saved = {key: os.environ.get(key) for key in ("ROS_DISCOVERY_SERVER", "ROS_SUPER_CLIENT")}
    # this process is a client too, a super client: it must see the other ends' endpoints
    os.environ.update({**environment, "ROS_SUPER_CLIENT": "TRUE"} if server else {})
    rclpy.init()
    robots = robot_names(count)
    edge = EdgeSpec("edge", tuple(robots))
    run = FleetRun(args, clip, log_dir, environment)
    watcher = FleetWatcher()
    seen, matched = {}, {}

    def track() -> None:
        now = time.monotonic()
        for robot in robots:
            if robot not in seen and watcher.node.count_publishers(f"/{robot}/stac/encoded"):
                seen[robot] = now
            if robot not in matched and watcher.matched(robot):
                matched[robot] = now

    try:
        for robot in robots:
            watcher.add_robot(robot)
        run.start_edge(edge)
        _wait_for_edges(watcher, run, [edge], 180.0)
        started = time.monotonic()
        for robot in robots:
            run.start_encoder(robot)
        if not watcher.spin_until(lambda: len(matched) == len(robots), 120.0, track):
            raise RuntimeError("robots and edge never matched")
        return {
            "until_matched_s": round(max(matched.values()) - started, 2),
            "matching_s": round(max(matched[r] - seen.get(r, matched[r]) for r in robots), 2),
        }
    finally:
        run.stop()
        watcher.close()
        rclpy.try_shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_frame_time(watcher: FleetWatcher, robots: list[str], timeout_s: float = 120.0) -> float:
    """When the first camera frame of every robot had been encoded (the cameras take a
    while to start): playback time counts from here."""
    if not watcher.spin_until(lambda: all(watcher.robots[r].encoded_stamps for r in robots),
                              timeout_s):  # fmt: skip
        raise RuntimeError("a robot's camera never started")
    return time.monotonic()


def run_failover(args, clip: Path, log_dir: Path, count: int) -> dict:
    """Two edges, half the robots each, each standing in for the other; edge_a is killed
    half way through the playback."""
    robots = robot_names(count)
    half = count // 2 or 1
    edges = [
        EdgeSpec("edge_a", tuple(robots[:half]), ("edge_b",)),
        EdgeSpec("edge_b", tuple(robots[half:]), ("edge_a",)),
    ]
    run = FleetRun(args, clip, log_dir)
    watcher = FleetWatcher()
    try:
        for robot in robots:
            watcher.add_robot(robot)
        for edge in edges:
            run.start_edge(edge)
        _wait_for_edges(watcher, run, edges, 180.0)
        for robot in robots:
            run.start_encoder(robot)
        _wait_linked(watcher, robots, 180.0)
        for robot in robots:
            run.start_camera(robot)
        playing = _first_frame_time(watcher, robots)
        # half way through the playback, once every robot is being served (masks back)
        if not watcher.spin_until(
            lambda: all(watcher.robots[r].mask_arrivals for r in robots), args.duration_s
        ):
            raise RuntimeError("not every robot got a mask before the failover")
        watcher.spin_until(lambda: False, args.duration_s / 2 - (time.monotonic() - playing))
        killed_at = time.monotonic()
        killed_at_ns = watcher.node.get_clock().now().nanoseconds
        run.kill("edge_a")
        watcher.spin_until(run.cameras_done, args.duration_s + 60.0)
        taken_over = set(watcher.heartbeats["edge_b"].robots)
        failover_s = {}
        for robot in edges[0].robots:
            after = [t for t, stamp in watcher.robots[robot].mask_arrivals if stamp > killed_at_ns]
            failover_s[robot] = round(min(after) - killed_at, 2) if after else None
    finally:
        run.stop()
        watcher.close()
    return {
        "robots": robots,
        "edges": {edge.name: list(edge.robots) for edge in edges},
        "killed": "edge_a",
        "stand_in": "edge_b",
        "stand_in_serves_after": sorted(taken_over),
        "how_known": "edge heartbeat (stac_msgs/EdgeHeartbeat on /stac/fleet/edges every "
        "0.25 s; missing for edge_timeout_s = 1.0 s: the stand-in takes the dead edge's robots)",
        "failover_s": failover_s,
    }


def run(args: argparse.Namespace) -> dict:
    if not args.video.is_file():
        raise SystemExit(f"stac-bench fleet: clip not found: {args.video}")
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        raise SystemExit(f"stac-bench fleet: --parts takes {', '.join(PARTS)}")
    counts = sorted({int(n) for n in args.robots.split(",")})
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="stac-fleet-") as tmp:
        tmp_dir = args.log_dir or Path(tmp)
        clip = small_clip(args.video, Path(tmp), args.width, args.height)

        def log_dir(name: str) -> Path:
            path = tmp_dir / name
            path.mkdir(parents=True, exist_ok=True)
            return path

        runs = {}
        for count in counts if "runs" in parts else []:
            runs[str(count)] = _with_rclpy(run_fleet, args, clip, log_dir(f"n{count}"), count)
            _print_run(count, runs[str(count)])
        failover = None
        if "failover" in parts:
            failover = _with_rclpy(
                run_failover, args, clip, log_dir("failover"), args.failover_robots
            )
            print(f"failover: {failover['failover_s']}")
        batch = None
        if "batch" in parts:
            batch = batch_throughput(clip, args.device, args.torch_threads, args.engine)
            print(f"batched forward, frames/s by batch size: {batch['frames_per_s']}")
        # Last: once this process has been a discovery-server client, Fast DDS keeps that
        # setting for its later participants (seen here: multicast peers no longer heard).
        discovery = None
        if "discovery" in parts:
            discovery = {"robots": counts[-1]}
            discovery["multicast"] = measure_discovery(
                args, clip, log_dir("discovery_multicast"), counts[-1], None
            )
            with discovery_server(log_path=log_dir("discovery_server") / "server.log") as server:
                discovery["discovery_server"] = measure_discovery(
                    args, clip, log_dir("discovery_server"), counts[-1], server
                )
            print(f"discovery of {counts[-1]} robots: {discovery}")
    return {
        "setup": {
            "clip": str(args.video),
            "frame_size": f"{args.width}x{args.height}",
            "camera_fps_per_robot": args.fps,
            "duration_s": args.duration_s,
            "processes_per_robot": ["video_source_node", "encoder_node"],
            "edge": f"edge_container (one model, batched forward on {args.engine}), "
            f"torch_threads {args.torch_threads}, nice {EDGE_NICENESS}",
            "cpu_count": os.cpu_count(),
            "max_batch_robots": args.max_batch_robots or "the edge's default (1 on a CPU)",
            "load_average_1min_at_start": load_at_start,
        },
        "runs": runs,
        "edge_rss_mb_per_added_robot": _memory_slope(runs),
        "discovery": discovery,
        "failover": failover,
        "failover_s": None if failover is None else failover["failover_s"],
        "batch_throughput": batch,
    }


def _with_rclpy(function, *args):
    rclpy.init()
    try:
        return function(*args)
    finally:
        rclpy.try_shutdown()


def batch_throughput(
    clip: Path, device: str, torch_threads: int, engine_name: str, repeats: int = 5
) -> dict:
    """The edge's batched forward (the engine edge_container runs) on the clip's frames, by
    batch size: frames per second and CPU time per frame (medians over `repeats` forwards
    after one warm-up), and this process's peak resident memory after each size (sizes run in
    increasing order, so its growth is what the larger batch needed)."""
    import resource

    import torch

    from stac_edge_segmenter.engines import create_engine
    from stac_edge_segmenter.loading import load_model

    torch.set_num_threads(torch_threads)
    model = load_model(None, device or None)
    choice = create_engine(model, engine_name, torch_threads)
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < max(BATCH_SIZES):
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    result = {
        "device": str(model.device),
        "engine": engine_name,
        "engine_fallback": choice.fallback_reason,
        "threads": torch_threads,
        "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
        "frames_per_s": {},
        "cpu_ms_per_frame": {},  # this process's CPU time: steadier than wall time on a
        "peak_rss_mb": {},  # shared machine
    }
    for size in BATCH_SIZES:
        images = np.stack([frames[i % len(frames)] for i in range(size)])
        choice.engine.segment_batch(images)  # warm-up
        times, cpu_times = [], []
        for _ in range(repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            choice.engine.segment_batch(images)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
        result["frames_per_s"][str(size)] = round(size / float(np.median(times)), 2)
        result["cpu_ms_per_frame"][str(size)] = round(1e3 * float(np.median(cpu_times)) / size, 1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_rss_mb"][str(size)] = round(peak, 1)
    return result


def _memory_slope(runs: dict) -> float | None:
    """Least-squares growth of the edge's peak resident memory per added robot, MiB."""
    if len(runs) < 2:
        return None
    counts = np.array([int(n) for n in runs], dtype=float)
    rss = np.array([result["edge_rss_mb"] for result in runs.values()])
    return round(float(np.polyfit(counts, rss, 1)[0]), 1)


def _print_run(count: int, result: dict) -> None:
    print(
        f"N={count}: total {result['total_segmented_fps']} fps, Jain {result['jain_fairness']}, "
        f"edge {result['edge_rss_mb']} MiB, cross-talk {result['cross_talk']}, "
        f"batched {result['batched']} (largest {result['largest_batch']})"
    )
    for robot, r in result["per_robot"].items():
        print(
            f"  {robot}: {r['segmented_fps']} fps, latency {r['latency_ms_p50']} / "
            f"{r['latency_ms_p95']} ms, published {r['frames_published']}, accounted "
            f"{r['frames_accounted']}"
        )
