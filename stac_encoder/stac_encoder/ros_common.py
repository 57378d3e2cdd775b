"""What every STAC node shares: typed parameter declaration, QoS profiles, statistics
publishing and the spin/shutdown idiom. The edge packages depend on stac_encoder anyway (its
decoder), so the shared ROS glue lives here.

QoS, and why:
- camera: `sensor_data` (best effort, keep last 5) by default, like camera drivers publish;
  `reliable` (keep all) for replay, where every frame must be accounted for: a slow encoder
  then slows the player down instead of losing frames.
- encoded frames: reliable, keep last 30. A lost access unit breaks the H.264 reference
  chain until the next keyframe; 30 frames absorb about a second of stall at 25 fps.
- QP maps: reliable, keep last 1, transient local: only the newest map matters, and an
  encoder that (re)starts late still gets it.
- masks, overlays, heatmaps, statistics: reliable, keep last 5 (rviz subscribes reliable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from stac_encoder.statistics import NodeStatistics
from stac_msgs.msg import Statistics

ENCODED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.RELIABLE
)
QP_MAP_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
)
RELIABLE_CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL, depth=1, reliability=ReliabilityPolicy.RELIABLE
)
STATISTICS_TOPIC = "/stac/statistics"


def camera_qos(kind: str) -> QoSProfile:
    """QoS for subscribing or publishing camera images: 'sensor_data' or 'reliable'."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    if kind == "reliable":
        return RELIABLE_CAMERA_QOS
    raise ValueError(f"camera_qos must be 'sensor_data' or 'reliable', got '{kind}'")


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default (its type is the parameter's type), description, bounds."""

    name: str
    default: Any
    description: str
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        descriptor = ParameterDescriptor(description=text, read_only=True)
        bounded = self.min_value is not None and self.max_value is not None
        if bounded and isinstance(self.default, int) and not isinstance(self.default, bool):
            descriptor.integer_range = [
                IntegerRange(from_value=int(self.min_value), to_value=int(self.max_value), step=0)
            ]
        elif bounded and isinstance(self.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(
                    from_value=float(self.min_value), to_value=float(self.max_value), step=0.0
                )
            ]
        return descriptor


def declare_parameters(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter (ranges enforced by rclpy) and return their values by name.

    A value outside `choices` raises ValueError naming the parameter.
    """
    values = {}
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
        value = node.get_parameter(spec.name).value
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {spec.name}='{value}' is not one of {spec.choices}")
        values[spec.name] = value
    return values


class StatisticsReporter:
    """Publishes a node's statistics on /stac/statistics and logs them, once per period."""

    def __init__(
        self, node: Node, statistics: NodeStatistics, role: str, period_s: float = 1.0
    ) -> None:
        self._node, self._statistics, self._role = node, statistics, role
        self._publisher = node.create_publisher(Statistics, STATISTICS_TOPIC, OUTPUT_QOS)
        self._timer = node.create_timer(period_s, self.report)

    def report(self) -> None:
        snapshot = self._statistics.snapshot(time.monotonic())
        msg = Statistics(node_name=self._node.get_name(), role=self._role, **snapshot.as_dict())
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(msg)
        self._node.get_logger().info(snapshot.summary())


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """Init, spin until SIGINT/SIGTERM, and shut down cleanly (the Jazzy idiom)."""
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            statistics = getattr(node, "statistics", None)
            if isinstance(statistics, NodeStatistics):
                # stdout, not the logger: rosout is gone once SIGTERM shut the context down
                print(
                    f"[{node.get_name()}] final: {statistics.snapshot(time.monotonic()).summary()}",
                    flush=True,
                )
            node.destroy_node()
        rclpy.try_shutdown()
