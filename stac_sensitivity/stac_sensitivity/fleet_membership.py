"""Which robots an edge serves in a fleet of robots and edges.

Plain Python (no ROS): the edge container feeds it what it is told (its `robots` and
`stand_in_for` parameters), what it finds (robots whose encoded stream is in the ROS graph) and
what the other edges announce (their heartbeats on the fleet topic), and asks it which robots
to serve now. An edge serves:

1. the robots it is told to serve;
2. the robots of every edge it stands in for whose heartbeat has stopped for `edge_timeout_s`
   (the robots of that edge's last heartbeat, unless another live edge serves them: two
   stand-ins for one edge split nothing twice), until that edge announces itself again. An
   edge is taken for dead only when it looks so at two updates in a row: after a stretch in
   which this edge itself was busy, its first update can come before the heartbeats that
   waited meanwhile were read (rclpy runs due timers before subscriptions);
3. with discovery on, every robot found in the graph (a publisher seen within
   `robot_timeout_s`) that no live edge was told to serve and no other live edge serves; when
   two edges took one robot at once, the one whose name sorts first keeps it.

Robot names are namespaces: "r1" and "/r1" are the robot launched with namespace:=r1, "/" the
robot in the root namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def robot_namespace(name: str) -> str:
    """The absolute namespace of a robot name ("r1", "/r1", "fleet/r1/"); "/" for the root.
    ValueError for a name ROS would not accept as a namespace."""
    if not isinstance(name, str):
        raise ValueError(f"a robot name must be a string, got {name!r}")
    tokens = [token for token in name.strip().strip("/").split("/")]
    if tokens == [""]:
        return "/"
    for token in tokens:
        if not _TOKEN.fullmatch(token):
            raise ValueError(
                f"robot name {name!r} is not a ROS namespace: each part must start with a "
                "letter or '_' and hold only letters, digits and '_'"
            )
    return "/" + "/".join(tokens)


def robot_namespaces(names: Iterable[str]) -> tuple[str, ...]:
    """Namespaces of a list of robot names, duplicates dropped, order kept."""
    return tuple(dict.fromkeys(robot_namespace(name) for name in names))


@dataclass(frozen=True)
class EdgeAnnouncement:
    """The last heartbeat heard from another edge."""

    edge: str
    robots: tuple[str, ...]
    declared_robots: tuple[str, ...]
    heard_s: float


class FleetMembership:
    """See the module docstring. Times are seconds on one monotonic clock."""

    def __init__(
        self,
        edge_name: str,
        edge_timeout_s: float = 1.0,
        robot_timeout_s: float = 2.0,
        discover: bool = False,
    ) -> None:
        if edge_timeout_s <= 0 or robot_timeout_s <= 0:
            raise ValueError("edge_timeout_s and robot_timeout_s must be positive")
        self.edge_name = edge_name
        self.edge_timeout_s, self.robot_timeout_s = edge_timeout_s, robot_timeout_s
        self.discover = discover
        self.declared: tuple[str, ...] = ()
        self.stand_in_for: tuple[str, ...] = ()
        self._edges: dict[str, EdgeAnnouncement] = {}
        self._found: dict[str, float] = {}  # robot -> when last seen publishing
        self._silent: set[str] = set()  # stood-in-for edges silent at the last update
        self._dead: tuple[str, ...] = ()

    def declare(self, robots: Iterable[str]) -> None:
        self.declared = robot_namespaces(robots)

    def stand_in(self, edges: Iterable[str]) -> None:
        self.stand_in_for = tuple(dict.fromkeys(edges))

    def heard(
        self, edge: str, robots: Iterable[str], declared: Iterable[str], now_s: float
    ) -> None:
        """Another edge's heartbeat (our own, echoed back, is ignored)."""
        if edge == self.edge_name:
            return
        self._edges[edge] = EdgeAnnouncement(
            edge, robot_namespaces(robots), robot_namespaces(declared), now_s
        )

    def found(self, robots: Iterable[str], now_s: float) -> None:
        """Robots seen publishing their stream in the graph now."""
        for robot in robots:
            self._found[robot_namespace(robot)] = now_s

    def live_edges(self, now_s: float) -> dict[str, EdgeAnnouncement]:
        return {
            name: edge
            for name, edge in self._edges.items()
            if now_s - edge.heard_s <= self.edge_timeout_s
        }

    def dead_edges(self) -> tuple[str, ...]:
        """Edges this one stands in for found silent at the last two updates."""
        return self._dead

    def _update_dead(self, now_s: float) -> None:
        live = self.live_edges(now_s)
        silent = {e for e in self.stand_in_for if e in self._edges and e not in live}
        self._dead = tuple(e for e in self.stand_in_for if e in silent and e in self._silent)
        self._silent = silent

    def served(self, now_s: float, serving: Iterable[str] = ()) -> tuple[str, ...]:
        """The robots to serve now (`serving`: those served until now), declared first; one
        call is one update (see the module docstring)."""
        self._update_dead(now_s)
        serving = set(serving)
        robots = dict.fromkeys(self.declared)
        orphans = [r for edge in self._dead for r in self._edges[edge].robots]
        for robot in self._unclaimed(now_s, orphans, serving):
            robots.setdefault(robot)
        if self.discover:
            present = [r for r, seen in self._found.items() if now_s - seen <= self.robot_timeout_s]
            for robot in self._unclaimed(now_s, sorted(present), serving):
                robots.setdefault(robot)
        return tuple(robots)

    def _unclaimed(self, now_s: float, robots: list[str], serving: set[str]) -> list[str]:
        """Of robots this edge may take (found, or a dead edge's), those no other live edge
        was told to serve or serves already; of two edges that took one at once, the one
        whose name sorts first keeps it (two stand-ins for one edge, two discovering edges)."""
        live = self.live_edges(now_s).values()
        return [
            robot
            for robot in robots
            if not any(robot in edge.declared_robots for edge in live)
            and not any(
                robot in edge.robots and (robot not in serving or edge.edge < self.edge_name)
                for edge in live
            )
        ]
