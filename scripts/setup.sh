#!/usr/bin/env bash
# Idempotent set-up of the STAC workspace on a Debian/Ubuntu machine without a ROS install:
#   1. system tools (cmake, a C++ compiler, Python's headers, iproute2, nftables) via apt when
#      missing;
#   2. .venv with the pinned ROS 2 Jazzy wheels, torch (CPU), PyAV, OpenCV, rosbags, ...;
#   3. colcon build of the workspace (stac_msgs and the Python packages, symlinked; a
#      test-only foxglove_msgs where no real one is installed);
#   4. .venv/stac_env.sh, the environment file to source.
# Steps 2 and 3 are skipped when their inputs hash to the stamp of the last successful run,
# so a second run with nothing changed takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PACKAGES=(stac_msgs stac_codec stac_ros_common stac_encoder stac_edge_segmenter stac_sensitivity stac_training stac_eval)
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }

hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 is required (the ROS 2 Jazzy wheels are built for cp311);" \
       "install python3.11 and python3.11-venv" >&2
  return 1
}

install_system_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nft >/dev/null || missing+=(nftables)  # loss on the emulated robot-edge link
  # Python's headers: stac_codec builds its mask coder (a C++ extension)
  local python
  python=$(find_python)
  "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
    missing+=("$(basename "$python")-dev")
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing system packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" python3-venv
}

# The wheels' exported CMake files name the include dirs of the machine that built them;
# point them at this interpreter's (a no-op once done).
patch_wheel_cmake_paths() {
  local py_inc np_inc
  py_inc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_inc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } |
    xargs -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g"
}

setup_venv() {
  local stamp="$VENV/.stac_pip_stamp" want
  want=$(hash_files requirements.txt constraints.txt scripts/setup.sh)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "virtual environment up to date"
    return 0
  fi
  local python
  python=$(find_python)
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$python" -m venv "$VENV"; }
  log "installing pinned packages (first run: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt -c constraints.txt
  patch_wheel_cmake_paths
  echo "$want" >"$stamp"
}

# foxglove_msgs (the edge's live `video` topic) is not in the PyPI wheels: where no real one
# is installed, a TEST-ONLY stand-in holding CompressedVideo (Foxglove's published schema) is
# built into the workspace, so the live video can be tested. A real foxglove_msgs (a ROS
# install, ros-jazzy-foxglove-msgs) always wins.
FOXGLOVE_STAND_IN=test/interfaces/foxglove_msgs

needs_foxglove_stand_in() {
  local where
  where=$("$VENV/bin/python" -c 'import foxglove_msgs, os; print(os.path.dirname(foxglove_msgs.__file__))' \
            2>/dev/null) || return 0
  [[ "$where" == "$ROOT/install/"* || "$where" == "$ROOT/build/"* ]]
}

build_workspace() {
  local stamp="$VENV/.stac_build_stamp" want inputs paths=("${PACKAGES[@]}")
  if needs_foxglove_stand_in; then
    paths+=("$FOXGLOVE_STAND_IN")
  fi
  inputs=$(find "${paths[@]}" \( -name package.xml -o -name setup.py -o -name setup.cfg \
             -o -name CMakeLists.txt -o -name '*.msg' -o -name '*.cpp' \) -not -path '*/build/*' | sort)
  # shellcheck disable=SC2086
  want=$(hash_files $inputs "$VENV/.stac_pip_stamp")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f install/setup.bash ]; then
    log "workspace build up to date"
    return 0
  fi
  log "colcon build"
  (
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    export AMENT_PREFIX_PATH="$VENV"
    colcon build --symlink-install --base-paths "${paths[@]}" \
      --event-handlers console_cohesion- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
  )
  echo "$want" >"$stamp"
}

write_env_file() {
  cat >"$VENV/stac_env.sh" <<EOF
# Source me: the STAC workspace environment (virtual environment + colcon install space).
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
source "$ROOT/install/setup.bash"
# User-facing commands (stac-train, stac-bench, stac-demo) and the nodes' executables
# (encoder_node, edge_container, ...: what ros2 run would start) live in the lib dirs.
for package in ${PACKAGES[*]}; do
  if [ -d "$ROOT/install/\$package/lib/\$package" ]; then
    export PATH="$ROOT/install/\$package/lib/\$package:\$PATH"
  fi
done
# DDS stays on this machine unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
EOF
}

install_system_tools
setup_venv
build_workspace
write_env_file
log "ready: source .venv/stac_env.sh"
