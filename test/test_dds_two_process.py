"""Two separate processes exchange EncodedFrame messages over Fast DDS (loopback only)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PEER = Path(__file__).with_name("dds_peer.py")


@pytest.mark.dds
def test_100_frames_of_200_kb_arrive_complete_and_in_order(python_exe):
    count, size_bytes = 100, 200_000
    topic = "/stac_test/encoded"
    sub = subprocess.Popen(
        [python_exe, str(PEER), "sub", topic, str(count), "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sub.stdout.readline().strip() == "ready"
        pub = subprocess.run(
            [python_exe, str(PEER), "pub", topic, str(count), str(size_bytes)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=90)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["received"] == list(range(1, count + 1))
    assert result["intact"]
