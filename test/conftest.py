"""Shared fixtures: the data directory, and DDS confined to this machine for every test.

The environment is set at import time so that child processes started by tests inherit it.
`scripts/run_tests.sh` additionally runs the whole suite in a private network namespace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("STAC_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A test-own domain (override with STAC_TEST_DOMAIN_ID); 0-101 and 215-232 are valid for Fast DDS.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("STAC_TEST_DOMAIN_ID", str(40 + os.getpid() % 50))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data, or skip: the data is never copied into the repository."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR} (set STAC_DATA_DIR to its location)")
    return DATA_DIR


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
