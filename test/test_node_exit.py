"""A node executable's exit while a worker thread is still inside torch: the interpreter's
finalization would stop that daemon thread with pthread_exit inside C++ frames, which aborts
the process (seen: edge_container exiting -6 under SIGTERM while a niced map pass was
running on a busy machine). leave_unfinished_workers ends such a process cleanly instead."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    import torch
    from stac_ros_common.node_runner import leave_unfinished_workers

    weights = torch.randn(400, 400)

    def map_pass_forever():
        while True:
            weights.mm(weights)

    if sys.argv[1] == "busy":
        threading.Thread(target=map_pass_forever, name="maps", daemon=True).start()
        time.sleep(0.3)
    leave_unfinished_workers()
    print("finalized normally", flush=True)
    """
)


def run_exit_script(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120
    )


def test_a_worker_still_inside_torch_does_not_abort_the_exit():
    result = run_exit_script("busy")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unfinished work abandoned in: maps" in result.stdout
    assert "terminate called" not in result.stderr


def test_without_busy_workers_the_process_finalizes_as_usual():
    result = run_exit_script("idle")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "finalized normally"


FAILING_NODE_SCRIPT = textwrap.dedent(
    """
    import threading, time
    import torch
    from stac_ros_common.node_runner import run_node

    weights = torch.randn(400, 400)

    def map_pass_forever():
        while True:
            weights.mm(weights)

    threading.Thread(target=map_pass_forever, name="maps", daemon=True).start()
    time.sleep(0.3)

    def make_node():
        raise ValueError("bad parameter")

    run_node(make_node, args=[])
    """
)


def test_a_node_that_fails_while_a_worker_is_busy_exits_1_with_its_traceback(monkeypatch):
    """Without this the traceback is followed by 'terminate called without an active
    exception' and the process aborts (exit -6): the failure's own exit code is lost."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    result = subprocess.run(
        [sys.executable, "-c", FAILING_NODE_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.count("ValueError: bad parameter") == 1
    # the error is the last line: a launcher reports a dead node's last log line
    assert result.stderr.strip().splitlines()[-1] == "ValueError: bad parameter"
    assert "terminate called" not in result.stderr
    assert "unfinished work abandoned in: maps" in result.stdout
