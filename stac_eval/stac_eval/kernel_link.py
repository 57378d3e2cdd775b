"""A real, kernel-emulated link between the robot and the edge processes on one machine.

The live graph runs inside a private network namespace (`unshare --net`), where this process
is root and owns the loopback device. Robot and edge talk Fast DDS over UDP on lo; this module
puts the Linux kernel between them:

* Which packets are the link: each side's DDS participant gets a fixed participant id (a Fast
  DDS XML profile), so its unicast ports are known (RTPS port mapping: 7400 + 250 * domain +
  10 + 2 * id for metatraffic, + 11 for user data). The edge runs UDP only (its profile
  replaces the builtin transports by one UDPv4 transport; the pinned Fast DDS 2.14 ignores
  FASTDDS_BUILTIN_TRANSPORTS), so everything between robot and edge crosses lo as UDP;
  the camera player and the demo's recorder keep shared memory with the robot, so only traffic
  to the edge's ports is uplink and traffic to the robot's ports is downlink.
* Rate: an htb class on lo for the uplink ports, at `rate_bps`, with a byte FIFO of
  `queue_s` seconds of the rate (a router's buffer; what does not fit is dropped).
* Loss: nftables rules in the output hook drop that share of the UDP datagrams to each side's
  ports (`numgen random mod 10000 < loss * 10000`).
* Delay: only with the netem qdisc, which many kernels have but not all (this machine's does
  not: "qdisc kind is unknown"). Where netem is missing the delay is reported as unavailable,
  never approximated.

Shared memory bypasses every qdisc and firewall; forcing UDP on the edge is what makes the link
real. Plain Python: the commands are `tc` (iproute2) and `nft` (nftables).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from stac_eval.replay.link import LinkConfig

PORT_BASE = 7400
DOMAIN_GAIN = 250
PARTICIPANT_GAIN = 2
METATRAFFIC_UNICAST_OFFSET = 10
USER_UNICAST_OFFSET = 11
ROBOT_PARTICIPANT_ID = 20
EDGE_PARTICIPANT_ID = 30
NFT_TABLE = "stac_link"
DEVICE = "lo"


class KernelLinkError(RuntimeError):
    """The link cannot be set up here (no root, no tc/nft, a rule the kernel refuses)."""


def participant_ports(domain_id: int, participant_id: int) -> tuple[int, int]:
    """(metatraffic, user data) unicast UDP ports of a DDS participant (RTPS 2.x mapping)."""
    base = PORT_BASE + DOMAIN_GAIN * domain_id + PARTICIPANT_GAIN * participant_id
    return base + METATRAFFIC_UNICAST_OFFSET, base + USER_UNICAST_OFFSET


def fastdds_profile(participant_id: int, udp_only: bool) -> str:
    """A Fast DDS XML profile giving every participant of a process this participant id, and
    with `udp_only` no shared-memory transport (only a UDPv4 one)."""
    transports, rtps_transports = "", ""
    if udp_only:
        transports = """  <transport_descriptors>
    <transport_descriptor>
      <transport_id>stac_udp</transport_id>
      <type>UDPv4</type>
    </transport_descriptor>
  </transport_descriptors>
"""
        rtps_transports = """      <userTransports>
        <transport_id>stac_udp</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
"""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
{transports}  <participant profile_name="stac_link_{participant_id}" is_default_profile="true">
    <rtps>
      <participantID>{participant_id}</participantID>
{rtps_transports}    </rtps>
  </participant>
</profiles>
"""


@dataclass(frozen=True)
class LinkSettings:
    """rate_bps: uplink capacity (0 = unlimited); loss: share of datagrams dropped each way;
    delay_s: one-way delay each way (needs netem); queue_s: uplink buffer in seconds of rate."""

    rate_bps: float = 0.0
    loss: float = 0.0
    delay_s: float = 0.0
    queue_s: float = 0.5
    jitter_s: float = 0.0  # with netem: the delay varies by up to this much

    def __post_init__(self) -> None:
        if self.rate_bps < 0 or not 0.0 <= self.loss < 1.0 or min(self.delay_s, self.jitter_s) < 0:
            raise ValueError(f"invalid link settings {self}")
        if self.queue_s <= 0:
            raise ValueError(f"queue_s must be > 0, got {self.queue_s}")


def settings_from_spec(spec: str) -> LinkSettings:
    """LinkSettings from the `--link` syntax the replay also reads ('rate=2mbit,loss=1%,
    delay=40ms'); LinkSpecError (a ValueError) on a bad specification."""
    config = LinkConfig.parse(spec)
    return LinkSettings(rate_bps=config.rate_bps, loss=config.loss, delay_s=config.delay_s)


@dataclass
class KernelLink:
    """Applies LinkSettings between the robot's and the edge's participants on lo."""

    settings: LinkSettings
    domain_id: int
    run: object = subprocess.run  # injectable for tests that only look at the commands
    applied: list[list[str]] = field(default_factory=list)
    delay_applied: bool = False

    @property
    def uplink_ports(self) -> tuple[int, int]:
        return participant_ports(self.domain_id, EDGE_PARTICIPANT_ID)

    @property
    def downlink_ports(self) -> tuple[int, int]:
        return participant_ports(self.domain_id, ROBOT_PARTICIPANT_ID)

    def process_environment(self, side: str, profile_dir: Path) -> dict[str, str]:
        """Environment for the robot's or the edge's process: fixed participant id, and UDP
        only on the edge (so robot <-> edge traffic crosses lo)."""
        participant_id = {"robot": ROBOT_PARTICIPANT_ID, "edge": EDGE_PARTICIPANT_ID}[side]
        profile = profile_dir / f"fastdds_{side}.xml"
        profile.write_text(fastdds_profile(participant_id, udp_only=side == "edge"))
        return {"FASTRTPS_DEFAULT_PROFILES_FILE": str(profile)}

    def apply(self) -> None:
        """Install the qdiscs and rules; raises KernelLinkError with the tool's message."""
        for tool in ("tc", "nft"):
            if shutil.which(tool) is None:
                raise KernelLinkError(f"'{tool}' is not installed (iproute2 / nftables)")
        self.remove()
        settings = self.settings
        if settings.delay_s > 0:
            self.delay_applied = netem_available(self.run)
        if settings.rate_bps > 0 or self.delay_applied:
            self._shape()
        if settings.loss > 0:
            self._drop()

    def _shape(self) -> None:
        """htb on lo: class 1:10 = uplink (rate, buffer, delay), 1:20 = downlink (delay),
        default 1:30 unlimited."""
        rate = self.settings.rate_bps
        self._tc("qdisc", "add", "dev", DEVICE, "root", "handle", "1:", "htb", "default", "30")
        self._tc_class("1:30", 0)
        self._tc_class("1:10", rate)
        self._tc_class("1:20", 0)
        for classid, handle in (("1:10", "10:"), ("1:20", "20:")):
            if self.delay_applied:
                delay = [f"{1e3 * self.settings.delay_s:.3f}ms"]
                if self.settings.jitter_s:
                    delay.append(f"{1e3 * self.settings.jitter_s:.3f}ms")
                self._tc("qdisc", "add", "dev", DEVICE, "parent", classid, "handle", handle,
                         "netem", "delay", *delay, "limit", "100000")  # fmt: skip
            elif classid == "1:10" and rate > 0:
                limit = max(int(rate / 8 * self.settings.queue_s), 65536)
                self._tc("qdisc", "add", "dev", DEVICE, "parent", classid, "handle", handle,
                         "bfifo", "limit", str(limit))  # fmt: skip
        for classid, ports in (("1:10", self.uplink_ports), ("1:20", self.downlink_ports)):
            for port in ports:
                self._tc("filter", "add", "dev", DEVICE, "parent", "1:", "protocol", "ip",
                         "prio", "1", "u32", "match", "ip", "dport", str(port), "0xffff",
                         "flowid", classid)  # fmt: skip

    def _tc_class(self, classid: str, rate_bps: float) -> None:
        rate = f"{int(rate_bps)}bit" if rate_bps > 0 else "10gbit"
        self._tc("class", "add", "dev", DEVICE, "parent", "1:", "classid", classid, "htb",
                 "rate", rate, "ceil", rate, "burst", "64k")  # fmt: skip

    def _drop(self) -> None:
        threshold = round(self.settings.loss * 10000)
        ports = ", ".join(str(p) for p in (*self.uplink_ports, *self.downlink_ports))
        rules = (
            f"add table inet {NFT_TABLE}\n"
            f"add chain inet {NFT_TABLE} output {{ type filter hook output priority 0 ; }}\n"
            f"add rule inet {NFT_TABLE} output udp dport {{ {ports} }} "
            f"numgen random mod 10000 < {threshold} counter drop\n"
        )
        self._execute(["nft", "-f", "-"], rules)

    def dropped_packets(self) -> int:
        """Datagrams the loss rule has dropped so far (0 when no loss is set)."""
        if self.settings.loss <= 0:
            return 0
        result = self.run(
            ["nft", "list", "table", "inet", NFT_TABLE], capture_output=True, text=True
        )
        for line in result.stdout.splitlines():
            if "counter packets" in line:
                return int(line.split("counter packets")[1].split()[0])
        return 0

    def remove(self) -> None:
        """Take every qdisc and rule of ours away (harmless when there are none)."""
        self.run(["tc", "qdisc", "del", "dev", DEVICE, "root"], capture_output=True, text=True)
        self.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True, text=True)

    def describe(self) -> dict:
        """The link as applied, for reports."""
        settings = self.settings
        return {
            "rate_bps": settings.rate_bps or None,
            "loss": settings.loss,
            "delay_ms": 1e3 * settings.delay_s if self.delay_applied else None,
            "delay": (
                "applied (netem)"
                if self.delay_applied
                else "unavailable: this kernel has no netem qdisc"
                if settings.delay_s > 0
                else "none"
            ),
            "uplink_buffer_s": settings.queue_s if settings.rate_bps else None,
            "uplink_ports": list(self.uplink_ports),
            "downlink_ports": list(self.downlink_ports),
            "transport": "UDPv4 between robot and edge (edge without shared memory)",
        }

    def _tc(self, *args: str) -> None:
        self._execute(["tc", *args])

    def _execute(self, command: list[str], stdin: str | None = None) -> None:
        result = self.run(command, input=stdin, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelLinkError(f"{' '.join(command)}: {result.stderr.strip()}")
        self.applied.append(command)

    def __enter__(self) -> KernelLink:
        self.apply()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def netem_available(run=subprocess.run) -> bool:
    """Whether this kernel has the netem qdisc (tried on a throwaway dummy-free probe: a root
    netem qdisc on lo, removed at once)."""
    probe = run(
        ["tc", "qdisc", "add", "dev", DEVICE, "root", "handle", "9:", "netem", "delay", "0ms"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return False
    run(["tc", "qdisc", "del", "dev", DEVICE, "root"], capture_output=True, text=True)
    return True
