"""Running a node: the spin/shutdown idiom of Jazzy, and the once-a-second statistics."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from stac_msgs.msg import Statistics
from stac_ros_common.qos import OUTPUT_QOS, STATISTICS_TOPIC
from stac_ros_common.statistics import NodeStatistics

# `kill -USR1 PID` makes a node write every thread's Python stack to stderr (its log) and
# go on: what a node that hangs is doing, without a debugger (the graph runner asks a node that
# outlives its shutdown grace before it kills it).
STACK_DUMP_SIGNAL = signal.SIGUSR1

# The topic every node publishes through its StatisticsReporter.
ENDPOINTS = {
    STATISTICS_TOPIC: "The node's Statistics (frame accounting, link bits/s, latency, "
    "recovery), once a second.",
}


class StatisticsReporter:
    """Publishes a node's statistics on stac/statistics (inside the node's namespace: one
    topic per robot) and logs them, once per period.

    `link_channels` count the endpoints matched at the far end of each of the node's channels
    across the robot-edge link; their minimum is reported as link_peers, so a tool (or a user)
    can tell when discovery over a slow or lossy link has finished before it starts a camera.
    """

    def __init__(
        self,
        node: Node,
        statistics: NodeStatistics,
        role: str,
        period_s: float = 1.0,
        link_channels: Sequence[Callable[[], int]] = (),
    ) -> None:
        self._node, self._statistics, self._role = node, statistics, role
        self._link_channels = tuple(link_channels)
        self._publisher = node.create_publisher(Statistics, STATISTICS_TOPIC, OUTPUT_QOS)
        self._timer = node.create_timer(period_s, self.report)

    def report(self) -> None:
        snapshot = self._statistics.snapshot(time.monotonic())
        if self._link_channels:
            peers = min(channel() for channel in self._link_channels)
            snapshot = dataclasses.replace(snapshot, link_peers=peers)
        msg = Statistics(node_name=self._node.get_name(), role=self._role, **snapshot.as_dict())
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(msg)
        self._node.get_logger().info(snapshot.summary())


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def print_final_statistics(node: Node) -> None:
    """The node's final frame accounting on stdout (rosout is gone once SIGTERM shut the
    context down)."""
    statistics = getattr(node, "statistics", None)
    if isinstance(statistics, NodeStatistics):
        summary = statistics.snapshot(time.monotonic()).summary()
        print(f"[{node.get_fully_qualified_name()}] final: {summary}", flush=True)


def close_node(node: Node) -> None:
    """Call the node's own close() (workers, publishers), report, destroy."""
    close = getattr(node, "close", None)
    if close is not None:
        close()
    print_final_statistics(node)
    node.destroy_node()


def spin_until_shutdown(spin: Callable[[], None]) -> None:
    """Run `spin` (rclpy.spin, or an executor's) until SIGINT/SIGTERM. A signal that shuts the
    context down while the executor is building its wait set surfaces as RCLError ("the
    given context is not valid") instead of ExternalShutdownException: that is the same
    shutdown, not a failure."""
    try:
        spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:  # rclpy's RCLError is one; rclpy exports it from no public module
        if rclpy.ok():
            raise


def enable_stack_dumps() -> None:
    """STACK_DUMP_SIGNAL writes every thread's Python stack to stderr and the process goes on
    (Python's faulthandler: it works while a thread is stuck in C code, GIL held or not)."""
    faulthandler.register(STACK_DUMP_SIGNAL, file=sys.stderr, all_threads=True)


def _exit_if_workers_busy(code: int, last_words: Callable[[], None] = lambda: None) -> None:
    """End the process now, with `code`, when a daemon worker thread is still alive: say which,
    then `last_words` (they stay the log's last lines), without finalizing the interpreter."""
    busy = [t.name for t in threading.enumerate() if t.daemon and t.is_alive()]
    if not busy:
        return
    print(f"exiting with unfinished work abandoned in: {', '.join(busy)}", flush=True)
    last_words()
    sys.stderr.flush()
    os._exit(code)


def leave_unfinished_workers() -> None:
    """The last step of a node executable: when a worker thread is still busy after its close
    stopped waiting (a niced map pass on a busy machine can take many seconds), end the process
    here, without finalizing the interpreter. Finalization would stop that daemon thread inside
    torch or rcl with pthread_exit, which C++ turns into std::terminate: exit code -6 instead of
    0, for a pass whose result nobody would receive any more."""
    _exit_if_workers_busy(0)


@contextlib.contextmanager
def ending_cleanly() -> Iterator[None]:
    """A node executable's body: on a normal end, `leave_unfinished_workers`; when an
    exception escapes (a bad parameter at start, a bug) while a worker is alive, exit code 1
    with the traceback as the log's last lines (what a launcher shows of a dead node) instead
    of the abort finalization would turn it into (exit -6, the traceback followed by
    'terminate called without an active exception'). STACK_DUMP_SIGNAL dumps the threads'
    stacks meanwhile (`enable_stack_dumps`)."""
    enable_stack_dumps()
    try:
        yield
    except Exception:
        _exit_if_workers_busy(1, traceback.print_exc)
        raise
    leave_unfinished_workers()


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """Init, spin until SIGINT/SIGTERM, and shut down cleanly (the Jazzy idiom)."""
    with ending_cleanly():
        rclpy.init(args=args)
        node = None
        try:
            node = make_node()
            spin_until_shutdown(lambda: rclpy.spin(node))
        except KeyboardInterrupt:  # during start-up
            pass
        finally:
            if node is not None:
                close_node(node)
            rclpy.try_shutdown()
