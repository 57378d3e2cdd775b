"""Running a Fast DDS Discovery Server for a fleet (the tests, `stac-bench fleet`).

Discovery beyond one multicast LAN: every participant is a client of one server (or several)
given by ROS_DISCOVERY_SERVER ("127.0.0.1:11811", a ';'-separated list by server id), and finds
the others through it instead of by multicast. With Discovery Server v2 a client learns only
the endpoints of topics it uses itself; a node that discovers robots through the ROS graph (an
edge with discover_robots) must be a super client (ROS_SUPER_CLIENT=TRUE).

On a ROS install the server is `fastdds discovery --server-id 0 --udp-address IP --udp-port
PORT`; the PyPI Fast DDS wheel ships the same binary as `fast-discovery-server`, whose
libraries live beside the virtual environment (its lib/ and site-packages/ros_fastrtps.libs),
so it needs LD_LIBRARY_PATH pointing there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SERVER_EXECUTABLE = "fast-discovery-server"


def server_environment(executable: str) -> dict[str, str]:
    """The environment the server binary runs in: LD_LIBRARY_PATH extended with the wheel's
    library directories when they exist (a ROS install needs nothing)."""
    prefix = Path(executable).resolve().parent.parent
    candidates = [prefix / "lib"]
    candidates += sorted(prefix.glob("lib/python3*/site-packages/ros_fastrtps.libs"))
    found = [str(path) for path in candidates if path.is_dir()]
    environment = dict(os.environ)
    current = environment.get("LD_LIBRARY_PATH")
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(found + ([current] if current else []))
    return environment


def find_server() -> str:
    """The discovery server binary: on PATH, or beside this Python (a venv's bin/)."""
    found = shutil.which(SERVER_EXECUTABLE) or shutil.which(
        SERVER_EXECUTABLE, path=str(Path(sys.executable).parent)
    )
    if found is None:
        raise FileNotFoundError(
            f"{SERVER_EXECUTABLE} not found: it comes with Fast DDS (the ros-fastrtps wheel, or "
            "`fastdds discovery` on a ROS install)"
        )
    return found


def client_environment(address: str, super_client: bool = False) -> dict[str, str]:
    """Environment variables that make a ROS 2 process a client of the server at address."""
    environment = {"ROS_DISCOVERY_SERVER": address}
    if super_client:
        environment["ROS_SUPER_CLIENT"] = "TRUE"
    return environment


@contextmanager
def discovery_server(host: str = "127.0.0.1", port: int = 11811, log_path: Path | None = None):
    """Run a discovery server (server id 0) while the block runs; yields its address
    (the value of ROS_DISCOVERY_SERVER). Raises RuntimeError if it does not come up."""
    executable = find_server()
    log = log_path.open("w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [executable, "-i", "0", "-l", host, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_environment(executable),
    )
    try:
        _wait_until_listening(process, port)
        yield f"{host}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()


def _wait_until_listening(process: subprocess.Popen, port: int, timeout_s: float = 10.0) -> None:
    """Until a UDP socket on `port` is open (/proc/net/udp), or the server has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the discovery server exited at start ({process.returncode})")
        if any(_udp_port_open(table, port) for table in ("/proc/net/udp", "/proc/net/udp6")):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the discovery server did not open UDP port {port} in {timeout_s} s")


def _udp_port_open(table: str, port: int) -> bool:
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return False
    return any(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in lines)
