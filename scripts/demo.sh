#!/usr/bin/env bash
# The main job: set up (idempotent), then run robot and edge nodes as separate processes over
# DDS on loopback, on the default clip (vtest.avi from Debian's opencv-doc, installed if
# missing) or on any file/bag/camera given with --video. Arguments go to `stac-demo`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

bash scripts/setup.sh

DEFAULT_VIDEO=/usr/share/doc/opencv-doc/examples/data/vtest.avi
if [[ " $* " != *" --video "* ]] && [ ! -f "$DEFAULT_VIDEO" ]; then
  echo "[demo] installing opencv-doc for the default clip (vtest.avi)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq opencv-doc
fi

set +u
# shellcheck disable=SC1091
source .venv/stac_env.sh
set -u
# DDS stays on this machine: a private network namespace where allowed, else LOCALHOST range.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
if unshare --net true 2>/dev/null; then
  exec unshare --net bash -c 'ip link set lo up && exec stac-demo "$@"' stac-demo "$@"
fi
exec stac-demo "$@"
