"""Shared fixtures: the data directory, DDS confined to this machine for every test, and the
one run of the real ROS graph whose results and bag several test modules check.

The environment is set at import time so that child processes started by tests inherit it.
`scripts/run_tests.sh` additionally runs the whole suite in a private network namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_FRAMES = 30
GRAPH_FRAME_SIZE = (480, 270)
DATA_DIR = Path(os.environ.get("STAC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A test-own domain (override with STAC_TEST_DOMAIN_ID); 0-101 and 215-232 are valid for Fast DDS.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("STAC_TEST_DOMAIN_ID", str(40 + os.getpid() % 50))


def pytest_configure(config):
    """Torch on one thread in the test process: the tests' tensors are small, and on a shared
    machine a second intra-op thread mostly spins (test_sensitivity: 1.2 CPU s on one thread,
    4-10 on two, under load). Nodes the tests start set their own (torch_threads)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data, or skip: the data is never copied into the repository."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (set STAC_DATA_DIR to its location)")
    return DATA_DIR


@pytest.fixture(scope="session")
def graph_clip(data_dir, tmp_path_factory) -> Path:
    """GRAPH_FRAMES frames of the dashcam clip at GRAPH_FRAME_SIZE (MJPEG), small enough for CI."""
    import cv2

    capture = cv2.VideoCapture(str(data_dir / "video" / "solidWhiteRight.mp4"))
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, GRAPH_FRAME_SIZE)
    for _ in range(GRAPH_FRAMES):
        ok, frame = capture.read()
        assert ok
        writer.write(cv2.resize(frame, GRAPH_FRAME_SIZE, interpolation=cv2.INTER_AREA))
    writer.release()
    capture.release()
    return path


@pytest.fixture(scope="session")
def graph_run(graph_clip, tmp_path_factory):
    """(GraphRunResult, output dir with bag/, overlay.mp4, logs/) of one run of the installed
    nodes over DDS on graph_clip. Session-scoped: test_graph_e2e.py and
    test_foxglove_browser.py share it, because the run is the slow part of the suite.
    Imported here, not at the top, so tests without ROS do not load rclpy."""
    from stac_eval.ros.graph_runner import GraphRun, GraphRunConfig

    out_dir = tmp_path_factory.mktemp("graph")
    config = GraphRunConfig(
        video_uri=str(graph_clip),
        out_dir=out_dir,
        launch_dir=REPO_ROOT / "launch",
        pace="fixed",
        rate_hz=6.0,
        torch_threads=1,
        startup_timeout_s=120.0,
        drain_timeout_s=120.0,
    )
    return GraphRun(config).run(), out_dir
