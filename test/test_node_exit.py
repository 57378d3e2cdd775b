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
