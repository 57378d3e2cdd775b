"""docs/reference.md, read from the nodes themselves: every topic, service, QoS and parameter.

Each node of the suite is built in this process (discovery off: nothing goes on the network)
and asked what it created: its publishers, subscriptions, services and clients with their
message types and QoS profiles, and its declared parameters. Descriptions come from the node
modules (`ENDPOINTS`, `PARAMETERS`). An endpoint without a description, a description without
an endpoint, or a declared parameter without a spec is an error, so the page cannot drift from
the code: `test/test_reference.py` regenerates it and compares it with the committed file.

    python -m stac_eval.ros.reference --out docs/reference.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from stac_edge_segmenter import segmenter_node
from stac_encoder import encoder_node, video_source_node
from stac_ros_common import node_runner
from stac_ros_common.parameter_spec import ParameterSpec
from stac_sensitivity import edge_container, sensitivity_node

ENDPOINT_NOUNS = {
    "publishes": "publisher",
    "subscribes": "subscription",
    "service": "service",
    "client": "client",
}
# Parameters every rclpy node declares by itself.
ROS_OWN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


@dataclass(frozen=True)
class Endpoint:
    """One topic or service of a node, as the node created it."""

    kind: str  # publishes, subscribes, service, client
    name: str  # as the node created it (relative, private ~/ or absolute)
    type_name: str  # e.g. sensor_msgs/msg/Image
    qos: str
    description: str


@dataclass(frozen=True)
class NodeReference:
    """What one node offers, for the page."""

    executable: str  # `package executable`
    node_name: str
    endpoints: tuple[Endpoint, ...]
    parameters: tuple[ParameterSpec, ...]


@dataclass(frozen=True)
class NodeSource:
    """How to build a node for the page: executable, factory, its module's tables."""

    executable: str
    build: Callable[[], Node]
    descriptions: dict[str, str]
    parameters: tuple[ParameterSpec, ...]


SOURCES = (
    NodeSource(
        "stac_encoder encoder_node",
        lambda: encoder_node.EncoderNode(),
        encoder_node.ENDPOINTS,
        encoder_node.PARAMETERS,
    ),
    NodeSource(
        "stac_encoder video_source_node",
        lambda: video_source_node.VideoSourceNode(),
        video_source_node.ENDPOINTS,
        video_source_node.PARAMETERS,
    ),
    NodeSource(
        "stac_edge_segmenter segmenter_node",
        lambda: segmenter_node.SegmenterNode(),
        segmenter_node.ENDPOINTS,
        segmenter_node.PARAMETERS,
    ),
    NodeSource(
        "stac_sensitivity sensitivity_node",
        lambda: sensitivity_node.SensitivityNode(),
        sensitivity_node.ENDPOINTS,
        sensitivity_node.PARAMETERS,
    ),
)
CONTAINER_EXECUTABLE = "stac_sensitivity edge_container"
# The container's own node (the edge in the fleet); its other nodes are those above.
EDGE_SOURCE = NodeSource(
    CONTAINER_EXECUTABLE, lambda: None, edge_container.ENDPOINTS, edge_container.PARAMETERS
)
# Arguments the nodes need to start at all (the video source refuses to run without a uri);
# video_source:pace:=consumed shows the subscription that pace adds.
NODE_ARGUMENTS = [
    "--ros-args",
    "-p",
    "video_source:uri:=camera:0",
    "-p",
    "video_source:pace:=consumed",
]


def type_name(cls: type) -> str:
    """'sensor_msgs/msg/Image' for a generated message or service class."""
    package = cls.__module__.split(".")[0]
    kind = cls.__module__.split(".")[1]
    return f"{package}/{kind}/{cls.__name__}"


def describe_qos(profile: QoSProfile) -> str:
    """A QoS profile in words: 'reliable, keep last 30, transient local'."""
    reliability = {
        ReliabilityPolicy.RELIABLE: "reliable",
        ReliabilityPolicy.BEST_EFFORT: "best effort",
    }.get(profile.reliability, profile.reliability.name.lower())
    if profile.history == HistoryPolicy.KEEP_LAST:
        history = f"keep last {profile.depth}"
    else:
        history = profile.history.name.lower().replace("_", " ")
    parts = [reliability, history]
    if profile.durability == DurabilityPolicy.TRANSIENT_LOCAL:
        parts.append("transient local")
    return ", ".join(parts)


def node_endpoints(
    node: Node, descriptions: dict[str, str], every_described: bool = True
) -> tuple[Endpoint, ...]:
    """Every endpoint the node created, described. Raises on an endpoint without a description
    and, with every_described, on a description of an endpoint the node did not create."""
    found = []
    for publisher in node.publishers:
        found.append(("publishes", publisher.topic, publisher.msg_type, publisher.qos_profile))
    for subscription in node.subscriptions:
        found.append(
            ("subscribes", subscription.topic, subscription.msg_type, subscription.qos_profile)
        )
    for service in node.services:
        found.append(("service", service.srv_name, service.srv_type, service.qos_profile))
    for client in node.clients:
        found.append(("client", client.srv_name, client.srv_type, client.qos_profile))
    own = [entry for entry in found if not _is_ros_own(node, entry[1])]
    table = {**node_runner.ENDPOINTS, **descriptions}
    missing = sorted({name for _, name, _, _ in own} - set(table))
    if missing:
        raise ValueError(f"{node.get_name()}: no description in ENDPOINTS for {missing}")
    stray = sorted(set(descriptions) - {name for _, name, _, _ in own})
    if stray and every_described:
        raise ValueError(f"{node.get_name()}: ENDPOINTS describes {stray}, which it never creates")
    return tuple(
        Endpoint(kind, name, type_name(cls), _qos_text(kind, profile), table[name])
        for kind, name, cls, profile in own
    )


def _qos_text(kind: str, profile: QoSProfile) -> str:
    return describe_qos(profile) if kind in ("publishes", "subscribes") else "services default"


def _is_ros_own(node: Node, name: str) -> bool:
    """/rosout, /parameter_events and the parameter and type-description services."""
    if name in ("/rosout", "/parameter_events"):
        return True
    prefix = f"{node.get_name()}/"
    own_services = ("parameter", "get_type_description")
    return name.startswith(prefix) and any(word in name[len(prefix) :] for word in own_services)


def node_parameters(node: Node, specs: tuple[ParameterSpec, ...]) -> tuple[ParameterSpec, ...]:
    """The specs, checked against what the node declared."""
    declared = set(node.get_parameters_by_prefix("")) - ROS_OWN_PARAMETERS
    spec_names = {spec.name for spec in specs}
    if declared != spec_names:
        raise ValueError(
            f"{node.get_name()}: declared parameters without a spec "
            f"{sorted(declared - spec_names)}, specs never declared {sorted(spec_names - declared)}"
        )
    return specs


@contextlib.contextmanager
def offline_ros(arguments: list[str]) -> Iterator[None]:
    """rclpy initialised with discovery off (nothing leaves the process), then shut down."""
    previous = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"
    rclpy.init(args=arguments)
    try:
        yield
    finally:
        rclpy.try_shutdown()
        if previous is None:
            os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE")
        else:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = previous


def collect() -> tuple[list[NodeReference], list[NodeReference]]:
    """Build every node of the suite and read what it offers: the separate executables, and
    the nodes of the edge container."""
    with offline_ros(NODE_ARGUMENTS):
        references = [_read(source.executable, source.build(), source) for source in SOURCES]
        tables = {ref.node_name: source for ref, source in zip(references, SOURCES, strict=True)}
        tables[EDGE_SOURCE_NAME] = EDGE_SOURCE
        edge = edge_container.EdgeNode(SingleThreadedExecutor(), NODE_ARGUMENTS)
        try:
            contained = [
                _reference(CONTAINER_EXECUTABLE, node, tables[node.get_name()], False)
                for node in edge.nodes
            ]
        finally:
            _close(edge)  # and the robot's nodes it runs
    return references, contained


EDGE_SOURCE_NAME = "stac_edge"


def _read(
    executable: str, node: Node, source: NodeSource, every_described: bool = True
) -> NodeReference:
    """The node's reference; the node is closed afterwards."""
    try:
        return _reference(executable, node, source, every_described)
    finally:
        _close(node)


def _reference(
    executable: str, node: Node, source: NodeSource, every_described: bool = True
) -> NodeReference:
    return NodeReference(
        executable,
        node.get_name(),
        node_endpoints(node, source.descriptions, every_described),
        node_parameters(node, source.parameters),
    )


def _close(node: Node) -> None:
    close = getattr(node, "close", None)
    if close is not None:
        close()
    node.destroy_node()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _parameter_row(spec: ParameterSpec) -> str:
    default = spec.default
    if isinstance(default, str):
        default = f'"{default}"'
    elif isinstance(default, bool):
        default = str(default).lower()
    kind = type(spec.default).__name__
    bounds = f"{spec.min_value:g} to {spec.max_value:g}" if spec.bounded else ""
    if spec.choices:
        bounds = ", ".join(spec.choices)
    description = spec.description + ("" if spec.read_only else " **Run-time settable.**")
    return f"| `{spec.name}` | {kind} | `{default}` | {_cell(bounds)} | {_cell(description)} |"


HEADER = """# Reference: nodes, topics, services, QoS, parameters

Generated from the nodes themselves by `python -m stac_eval.ros.reference --out
docs/reference.md` (each node is built with discovery off and asked what it created);
`test/test_reference.py` fails when this page and the code differ. Names are as each node
creates them: relative ones resolve in the node's namespace and are remapped by the launch
files; `~/` names are private to the node. Every parameter is read once at start unless it
says it can be changed at run time (`ros2 param set`); `ros2 param describe` shows the same
descriptions and ranges.
"""


def render(references: list[NodeReference], contained: list[NodeReference]) -> str:
    lines = [HEADER]
    for reference in references:
        lines += [f"## `{reference.executable}` (node `{reference.node_name}`)", ""]
        lines += _tables(reference)
    lines += _render_container(references, contained)
    return "\n".join(lines)


def _tables(reference: NodeReference) -> list[str]:
    """A node's endpoints and parameters, as two tables."""
    lines = ["| name | kind | type | QoS | what |", "|---|---|---|---|---|"]
    for endpoint in reference.endpoints:
        lines.append(
            f"| `{endpoint.name}` | {endpoint.kind} | `{endpoint.type_name}` | "
            f"{endpoint.qos} | {_cell(endpoint.description)} |"
        )
    lines += ["", "| parameter | type | default | range | what |", "|---|---|---|---|---|"]
    lines += [_parameter_row(spec) for spec in reference.parameters]
    lines.append("")
    return lines


def _render_container(references: list[NodeReference], contained: list[NodeReference]) -> list[str]:
    """The container's nodes, as differences from the same nodes run on their own."""
    alone = {reference.node_name: reference for reference in references}
    lines = [
        f"## `{CONTAINER_EXECUTABLE}`",
        "",
        "The whole edge in one process (`launch/edge.launch.py`'s default): one model and one "
        "batching worker for any number of robots, and for each robot it serves the two edge "
        "nodes, in the robot's namespace (its own namespace when `robots` is empty):",
        "",
    ]
    for reference in contained:
        own = alone.get(reference.node_name)
        if own is None:  # the container's own node
            continue
        missing = [e for e in own.endpoints if e not in reference.endpoints]
        extra = [e for e in reference.endpoints if e not in own.endpoints]
        changes = [f"without the {ENDPOINT_NOUNS[e.kind]} `{e.name}`" for e in missing]
        changes += [f"with the {ENDPOINT_NOUNS[e.kind]} `{e.name}` ({e.qos})" for e in extra]
        same = "as on its own" + (f", {', '.join(changes)}" if changes else "")
        lines.append(f"- node `{reference.node_name}`: topics, services and parameters {same}.")
    lines.append("")
    for reference in contained:
        if reference.node_name not in alone:
            lines += [f"### node `{reference.node_name}`", "", *_tables(reference)]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    args = parser.parse_args(argv)
    text = render(*collect())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
