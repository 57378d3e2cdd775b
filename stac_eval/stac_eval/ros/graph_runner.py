"""Run the whole STAC graph on a clip: robot and edge nodes as separate processes over DDS.

The nodes are the installed executables, started with the --ros-args the launch files give
them (`stac_eval.launch_args`), so what runs here is what `ros2 launch` runs. An in-process
recorder node (`stac_eval.ros.recorder_node`) watches every topic, writes the bag and the
overlay video, and keeps what the report needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import rclpy
from ament_index_python.packages import get_package_prefix

from stac_eval.kernel_link import KernelLink, KernelLinkError, LinkSettings
from stac_eval.launch_args import ros_args
from stac_eval.progress import progress_bar
from stac_eval.ros.recorder_node import GraphRecorder, GraphRunResult
from stac_ros_common.node_runner import STACK_DUMP_SIGNAL

# How the edge runs: executable -> package. "container": both edge nodes in one process
# (one decoder, one model); "separate": one process each, as on two machines.
EDGE_PROCESSES = {
    "container": {"edge_container": "stac_sensitivity"},
    "separate": {"segmenter_node": "stac_edge_segmenter", "sensitivity_node": "stac_sensitivity"},
}
EDGE_EXECUTABLES = {name for processes in EDGE_PROCESSES.values() for name in processes}
NODE_NAMES = ("stac_segmenter", "stac_sensitivity", "stac_encoder")
# The frame_id the video source writes into every frame: the recorder counts the camera
# topic's messages that carry it as the source's frames (a rogue publisher's are not).
SOURCE_FRAME_ID = "camera"


FAULT_ACTIONS = ("kill_edge", "start_edge", "kill_robot", "start_robot", "start_rogue")
# The nodes of each side's processes (their statistics retire when the process is killed).
SIDE_NODES = {"edge": ("stac_segmenter", "stac_sensitivity"), "robot": ("stac_encoder",)}
RSS_SAMPLE_PERIOD_S = 1.0
SHUTDOWN_GRACE_S = 30.0  # from SIGTERM to SIGKILL, for all processes together
STACK_DUMP_WAIT_S = 2.0  # from asking a process that outlived the grace for its stacks to SIGKILL


@dataclass(frozen=True)
class FaultEvent:
    """`action` (one of FAULT_ACTIONS) at `at_s` seconds after playback starts."""

    at_s: float
    action: str

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS or self.at_s < 0:
            raise ValueError(f"bad fault event {self}; actions: {FAULT_ACTIONS}")


@dataclass(frozen=True)
class GraphRunConfig:
    """What to play and how; crf / budget_shift_qp / period_frames are the launch arguments."""

    video_uri: str
    out_dir: Path
    launch_dir: Path
    pace: str = "recorded"
    rate_hz: float = 10.0
    max_frames: int = 0
    crf: float = 28.0
    mode: str = "stream"  # the robot's mode: stream or keyframe
    budget_shift_qp: int = 0
    period_frames: int = 5
    # The robot's gop_frames parameter (None: the launch file's). A GOP longer than the run
    # leaves the keyframe request as the only way back into a stream joined mid-GOP.
    robot_gop_frames: int | None = None
    edge_process: str = "container"
    encoded_qos: str = "reliable"  # the edge's subscription: reliable or best_effort
    # torch threads per edge process; None: two in all (2 for the container, 1 per node)
    torch_threads: int | None = None
    edge_engine: str | None = None  # the segmenter's inference engine; None: its default
    # Robot and edge are separate machines in a deployment; on one machine the edge's model
    # passes would starve the robot side, so the edge nodes run at this niceness.
    edge_niceness: int = 10
    record_bag: bool = True
    overlay_video: bool = True
    startup_timeout_s: float = 180.0
    drain_timeout_s: float = 120.0
    # A kernel-emulated link between robot and edge (stac_eval.kernel_link); needs a private
    # network namespace, as scripts/demo.sh and the tests provide.
    link: LinkSettings | None = None
    # Fault injection (stac_eval.ros.bench_faults): events at seconds after playback starts,
    # a playback of this many seconds (the clip looped; 0 = the clip once), the rogue
    # publisher's message rate and how long it runs once started.
    events: tuple[FaultEvent, ...] = ()
    play_duration_s: float = 0.0
    rogue_rate_hz: float = 5.0
    rogue_duration_s: float = 10.0

    def __post_init__(self) -> None:
        if self.edge_process not in EDGE_PROCESSES:
            raise ValueError(f"edge_process must be one of {sorted(EDGE_PROCESSES)}")

    @property
    def edge_torch_threads(self) -> int:
        """Threads per edge process: as given, else two in all."""
        if self.torch_threads is not None:
            return self.torch_threads
        return 2 // len(EDGE_PROCESSES[self.edge_process])


class GraphStartError(RuntimeError):
    """The graph never came up: a node exited during start-up or stayed silent past the
    start-up timeout. The message names the nodes and where their logs are."""


def require_private_namespace() -> None:
    """Refuse to touch qdiscs and firewall rules unless this network namespace has nothing
    but the loopback device (so a link setting can never shape or block real traffic)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]  # this namespace's devices
    devices = sorted(line.split(":")[0].strip() for line in lines)
    if devices != ["lo"]:
        raise KernelLinkError(
            f"a kernel link needs a private network namespace with only lo (found {devices}); "
            "run it through scripts/demo.sh or `unshare --net` as root"
        )


def last_log_line(log_path: Path) -> str:
    """The last non-blank line of a node's log (a Python traceback ends with the error), or
    an empty string when the log is missing or empty."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def exited_processes(processes: dict[str, subprocess.Popen]) -> list[str]:
    """The names of the processes that have already exited."""
    return [name for name, process in processes.items() if process.poll() is not None]


def start_up_failures(processes: dict[str, subprocess.Popen], log_dir: Path) -> str:
    """What each process that exited during start-up said last (its log, NAME.log in
    log_dir), with its exit code: a bad parameter or a missing model file, reported at once
    instead of after the start-up timeout."""
    return "; ".join(
        f"{name} exited with code {processes[name].returncode} during start-up: "
        f"{last_log_line(log_dir / f'{name}.log')} ({log_dir / f'{name}.log'})"
        for name in exited_processes(processes)
    )


def _process_rss_mb(pid: int) -> float:
    """Resident memory of a live process now (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def _process_peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a live process (VmHWM in /proc/<pid>/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmHWM for process {pid}")


def _process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _executable(package: str, name: str) -> str:
    return str(Path(get_package_prefix(package)) / "lib" / package / name)


class GraphRun:
    """Starts the nodes, plays the clip, waits until every frame is accounted for, stops."""

    def __init__(self, config: GraphRunConfig) -> None:
        self.config = config
        self.result = GraphRunResult()
        self._processes: dict[str, subprocess.Popen] = {}
        self._link: KernelLink | None = None
        self._side_starts: dict[str, list[tuple[str, str, list[str]]]] = {}
        self._next_rss_sample_s = 0.0
        self._robot_killed_ns: int | None = None
        config.out_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = config.out_dir / "logs"
        self._log_dir.mkdir(exist_ok=True)

    def _start(
        self,
        package: str,
        executable: str,
        args: list[str],
        niceness: int = 0,
        side: str | None = None,
    ) -> subprocess.Popen:
        """Start an installed executable; `side` ("robot" or "edge") puts it on its end of
        the kernel link when there is one."""
        log_path = self._log_dir / f"{executable}.log"
        self.result.logs[executable] = log_path
        prefix = ["nice", "-n", str(niceness)] if niceness else []
        environment = None
        if self._link is not None and side is not None:
            environment = {**os.environ, **self._link.process_environment(side, self._log_dir)}
        process = subprocess.Popen(
            [*prefix, _executable(package, executable), *args],
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self._processes[executable] = process
        return process

    def _node_args(self, launch_file: str, executable: str, **overrides) -> list[str]:
        args = ros_args(self.config.launch_dir / launch_file, executable, **overrides)
        if executable in EDGE_EXECUTABLES:
            args += ["-p", f"torch_threads:={self.config.edge_torch_threads}"]
            args += ["-p", f"encoded_qos:={self.config.encoded_qos}"]
            if self.config.edge_engine:
                args += ["-p", f"engine:={self.config.edge_engine}"]
        return args

    def run(self) -> GraphRunResult:
        config = self.config
        if config.link is not None:
            self._link = KernelLink(config.link, int(os.environ.get("ROS_DOMAIN_ID", "0")))
            require_private_namespace()
            # Inside a namespace that has only lo, the subnet is this machine; LOCALHOST would
            # make rmw_fastrtps put everyone on shared memory, past the emulated link.
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
            self._link.apply()
            self.result.link = self._link.describe()
        rclpy.init()
        recorder = GraphRecorder(
            self.result,
            config.out_dir,
            config.record_bag,
            config.overlay_video,
            camera_topic=self._camera_topic(),
            camera_frame_id=SOURCE_FRAME_ID,
        )
        started = time.monotonic()
        try:
            self._start_nodes()
            expected = set(NODE_NAMES)
            recorder.spin_until(
                lambda: (
                    expected <= set(self.result.statistics) or exited_processes(self._processes)
                ),
                config.startup_timeout_s,
            )
            if exited_processes(self._processes):
                raise GraphStartError(start_up_failures(self._processes, self._log_dir))
            if not expected <= set(self.result.statistics):
                missing = expected - set(self.result.statistics)
                raise GraphStartError(
                    f"nodes did not come up: {sorted(missing)}; see {self._log_dir}"
                )
            self._wait_for_discovery(recorder)
            self.result.cpu_at_play_s = self._cpu_of_live_processes()
            source = self._start_source()
            self._play(recorder, source)
            self._drain(recorder)
        finally:
            self._stop_all()
            self.result.wall_s = time.monotonic() - started
            recorder.close()
            rclpy.try_shutdown()
            if self._link is not None:
                self.result.link["dropped_datagrams"] = self._link.dropped_packets()
                self._link.remove()
        return self.result

    def _wait_for_discovery(self, recorder: GraphRecorder) -> None:
        """Play only once every node hears the other end of the link (link_peers >= 1): over
        a lossy kernel link, discovery messages are lost too, and a camera that starts before
        the edge has matched the robot's stream loses its first frames to discovery, not to
        the link's loss."""

        def unmatched() -> list[str]:
            return [
                name
                for name, statistics in self.result.statistics.items()
                if name in NODE_NAMES and statistics.link_peers < 1
            ]

        if not recorder.spin_until(lambda: not unmatched(), self.config.startup_timeout_s):
            raise RuntimeError(
                f"nodes never heard the other end of the link: {unmatched()}; see {self._log_dir}"
            )

    def _start_nodes(self) -> None:
        config = self.config
        self._side_starts["edge"] = [
            (
                package,
                executable,
                self._node_args(
                    "edge.launch.py",
                    executable,
                    budget_shift_qp=str(config.budget_shift_qp),
                    period_frames=str(config.period_frames),
                ),
            )
            for executable, package in EDGE_PROCESSES[config.edge_process].items()
        ]
        robot_args = self._node_args(
            "robot.launch.py",
            "encoder_node",
            crf=str(config.crf),
            camera_qos="reliable",
            mode=config.mode,
        )
        if config.robot_gop_frames is not None:
            robot_args += ["-p", f"gop_frames:={config.robot_gop_frames}"]
        self._side_starts["robot"] = [("stac_encoder", "encoder_node", robot_args)]
        self._start_side("edge")
        self._start_side("robot")

    def _start_side(self, side: str) -> None:
        niceness = self.config.edge_niceness if side == "edge" else 0
        for package, executable, args in self._side_starts[side]:
            self._start(package, executable, args, niceness=niceness, side=side)

    def _kill_side(self, side: str, recorder: GraphRecorder) -> None:
        """SIGKILL a side's processes (a crash, not a shutdown); their nodes' last statistics
        retire into result.retired_statistics so the accounting keeps what they counted."""
        for _, executable, _ in self._side_starts[side]:
            process = self._processes.pop(executable)
            process.kill()
            self.result.killed[executable] = process.wait()
            samples = self.result.rss_mb.pop(executable, [])
            self.result.rss_mb[f"{executable} (killed)"] = samples
        recorder.spin_until(lambda: False, 0.3)  # statistics already in flight arrive
        for name in SIDE_NODES[side]:
            if name in self.result.statistics:
                self.result.retired_statistics.append(self.result.statistics.pop(name))

    def _start_rogue(self, recorder: GraphRecorder) -> None:
        """Start the rogue publisher; it sends nothing until every subscriber of its topics
        that the graph has now (nodes and recorder) has matched it, so what it counts as sent
        is what they received."""
        config = self.config
        log_path = self._log_dir / "rogue_node.log"
        self.result.logs["rogue_node"] = log_path
        width, height = self.result.mask_size or (480, 270)
        topics = {"encoded": "/stac/encoded", "qp_map": "/stac/qp_map"}
        topics["image"] = self._camera_topic()
        args = [
            "--ros-args", "-p", f"rate_hz:={config.rogue_rate_hz}",
            "-p", f"duration_s:={config.rogue_duration_s}",
            "-p", f"width:={width}", "-p", f"height:={height}",
        ]  # fmt: skip
        for name, topic in topics.items():
            subscribers = max(recorder.node.count_subscribers(topic), 1)
            args += ["-r", f"{name}:={topic}", "-p", f"{name}_subscribers:={subscribers}"]
        self._processes["rogue_node"] = subprocess.Popen(
            [sys.executable, "-m", "stac_eval.ros.rogue_node", *args],
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
        )

    def _finish_rogue(self) -> None:
        """Wait for the rogue publisher to end by itself and read what it sent."""
        process = self._processes.pop("rogue_node")
        try:
            process.wait(timeout=self.config.rogue_duration_s + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        sent = re.search(r"rogue sent: (.*)", self.result.logs["rogue_node"].read_text())
        if sent:
            for item in sent.group(1).split():
                kind, count = item.split("=")
                self.result.rogue_sent[kind] = self.result.rogue_sent.get(kind, 0) + int(count)

    def _camera_topic(self) -> str:
        remaps = ros_args(self.config.launch_dir / "robot.launch.py", "encoder_node")
        return next(a.split(":=")[1] for a in remaps if a.startswith("image:="))

    def _apply_due_events(self, recorder: GraphRecorder, play_started_s: float) -> None:
        elapsed_s = time.monotonic() - play_started_s
        self.result.play_started_s = play_started_s
        for event in self.config.events:
            if event in self.result.events_done or event.at_s > elapsed_s:
                continue
            self.result.events_done[event] = time.monotonic()
            self._note_robot_outage(event.action)
            side = event.action.split("_", 1)[1]
            if event.action.startswith("kill"):
                self._kill_side(side, recorder)
            elif event.action == "start_rogue":
                self._start_rogue(recorder)
            else:
                self._start_side(side)

    def _note_robot_outage(self, action: str) -> None:
        """A robot killed and started again, in the stamps' clock (system time, ns)."""
        if action == "kill_robot":
            self._robot_killed_ns = time.time_ns()
        elif action == "start_robot" and self._robot_killed_ns is not None:
            self.result.robot_outages_ns.append((self._robot_killed_ns, time.time_ns()))
            self._robot_killed_ns = None

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if now < self._next_rss_sample_s:
            return
        self._next_rss_sample_s = now + RSS_SAMPLE_PERIOD_S
        for name, process in self._processes.items():
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.result.rss_mb.setdefault(name, []).append(_process_rss_mb(process.pid))

    def _start_source(self) -> subprocess.Popen:
        config = self.config
        args = self._node_args("local.launch.py", "video_source_node", video_uri=config.video_uri)
        args += ["-p", f"pace:={config.pace}", "-p", f"rate_hz:={config.rate_hz}"]
        args += ["-p", f"max_frames:={config.max_frames}", "-p", f"frame_id:={SOURCE_FRAME_ID}"]
        # the robot and the recorder: the recorder must see every frame from the first
        args += ["-p", "min_subscribers:=2"]
        if config.play_duration_s:
            args += ["-p", "loop:=true", "-p", f"duration_s:={config.play_duration_s}"]
        return self._start("stac_encoder", "video_source_node", args)

    def _play(self, recorder: GraphRecorder, source: subprocess.Popen) -> None:
        play_started_s = time.monotonic()
        with progress_bar(desc="frames encoded", unit="frame") as bar:

            def tick() -> None:
                self._apply_due_events(recorder, play_started_s)
                self._sample_memory()
                bar.update(len(self.result.encoded) - bar.n)
                seg = self.result.statistics.get("stac_segmenter")
                if seg is not None:
                    bar.set_postfix(
                        segmented=seg.frames_segmented,
                        skipped=seg.frames_skipped,
                        maps=len(self.result.qp_map_bytes),
                        refresh=False,  # redraw at the bar's own interval, not every tick
                    )

            recorder.spin_until(lambda: source.poll() is not None, 24 * 3600, tick)
        log = self.result.logs["video_source_node"]
        if source.returncode != 0:
            raise RuntimeError(f"the video source failed (exit {source.returncode}); see {log}")
        published = re.search(r"published (\d+) frames", log.read_text())
        self.result.frames_published = int(published.group(1)) if published else None

    def _drain(self, recorder: GraphRecorder) -> None:
        """Wait until the edge has dealt with every frame that reached it (its map passes
        included: a map pass runs beside segmentation and may still be on its way when the
        last mask is) and the counters are still: the report then tells whether that is every
        frame the source published.
        Done at once when every encoded frame is either in or seen lost and every mask is
        here; else (frames lost after the edge's last one, a robot that missed camera frames,
        masks a restarted edge published before the recorder heard it) after 3 quiet seconds."""
        quiet_since = [time.monotonic(), None]

        def settled() -> bool:
            seg = self.result.statistics.get("stac_segmenter")
            enc = self.result.statistics.get("stac_encoder")
            if seg is None or enc is None:
                return False
            counters = (enc.frames_in, enc.frames_encoded, seg.frames_in, seg.frames_pending)
            if counters != quiet_since[1]:
                quiet_since[:] = [time.monotonic(), counters]
            complete = (
                enc.frames_in == self.result.frames_published
                and seg.frames_in + seg.frames_lost == enc.frames_encoded
            )
            quiet_s = time.monotonic() - quiet_since[0]
            masks_here = len(self.result.mask_files) >= seg.frames_segmented
            maps = self.result.statistics.get("stac_sensitivity")
            idle = seg.frames_pending == 0 and (maps is None or maps.frames_pending == 0)
            return idle and ((complete and masks_here) or quiet_s > 3.0)

        recorder.spin_until(settled, self.config.drain_timeout_s)
        # one more statistics period, so the final counters are the ones recorded
        recorder.spin_until(lambda: False, 1.2)

    def _cpu_of_live_processes(self) -> dict[str, float]:
        cpu = {}
        for name, process in self._processes.items():
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    cpu[name] = _process_cpu_s(process.pid)
        return cpu

    def _stop_all(self) -> None:
        if self._robot_killed_ns is not None:  # killed and never started again
            self.result.robot_outages_ns.append((self._robot_killed_ns, time.time_ns()))
            self._robot_killed_ns = None
        if "rogue_node" in self._processes:
            self._finish_rogue()
        self.result.cpu_s = self._cpu_of_live_processes()
        for name, process in self._processes.items():
            if process.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.result.peak_rss_mb[name] = _process_peak_rss_mb(process.pid)
        self._end_processes()

    def _end_processes(self) -> None:
        """SIGTERM to every process, SIGKILL to those not ended SHUTDOWN_GRACE_S later, after
        asking each of those for its threads' stacks (STACK_DUMP_SIGNAL: a node writes them to
        its log; the names are kept in `stacks_requested`); each one's exit code and how long
        it took to end (0 for one that had ended before)."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        sigterm_s = time.monotonic()
        pending = dict(self._processes)
        while True:
            for name, process in list(pending.items()):
                if process.poll() is not None:
                    self._note_exit(name, process.returncode, sigterm_s)
                    del pending[name]
            if not pending or time.monotonic() >= sigterm_s + SHUTDOWN_GRACE_S:
                break
            time.sleep(0.05)
        for name, process in pending.items():
            print(
                f"{name} did not end within {SHUTDOWN_GRACE_S:.0f} s of SIGTERM: asking for "
                f"its stacks ({self.result.logs.get(name, 'no log')}), then SIGKILL",
                flush=True,
            )
            self.result.stacks_requested.append(name)
            process.send_signal(STACK_DUMP_SIGNAL)
        if pending:
            time.sleep(STACK_DUMP_WAIT_S)
        for name, process in pending.items():
            process.kill()
            self._note_exit(name, process.wait(), sigterm_s)

    def _note_exit(self, name: str, code: int, sigterm_s: float) -> None:
        self.result.exit_codes[name] = code
        self.result.exit_after_sigterm_s[name] = round(time.monotonic() - sigterm_s, 2)
