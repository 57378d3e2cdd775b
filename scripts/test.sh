#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole pytest suite (what CI runs).
#   bash scripts/test.sh --fast [PYTEST ARGS]: the unit tests only, while you work: no DDS, no
#   browser, nothing marked slow (pyproject.toml's markers).
# DDS stays on loopback: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a test-own ROS_DOMAIN_ID
# (test/conftest.py), and the suite runs in a private network namespace where the machine allows.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

FAST=0
if [ "${1:-}" = "--fast" ]; then
  FAST=1
  shift
  set -- -m "not dds and not slow and not browser" "$@"
fi

bash scripts/setup.sh

# test/test_foxglove_browser.py plays the bags' /stac/video in a real browser (WebCodecs, as
# Foxglove and Lichtblick do): Debian's chromium, installed once when missing.
if [ "$FAST" = 0 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser playback check"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

# The colcon and venv scripts are not written for `set -u`.
set +u
# shellcheck disable=SC1091
source .venv/stac_env.sh
set -u

echo "[test] ruff"
ruff check .
ruff format --check .

echo "[test] pytest"
if unshare --net true 2>/dev/null; then
  exec unshare --net bash -c 'ip link set lo up && exec pytest "$@"' pytest "$@"
fi
echo "[test] no private network namespace here (needs root or user namespaces);" \
     "DDS is confined by ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST only"
exec pytest "$@"
