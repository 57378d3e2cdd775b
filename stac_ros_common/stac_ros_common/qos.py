"""The QoS profiles of STAC's topics, in one place so publishers and subscribers agree.

- camera: `sensor_data` (best effort, keep last 5) by default, like camera drivers publish;
  `reliable` (keep all) for replay, where every frame must be
  accounted for: a slow encoder then slows the player down instead of losing frames.
- encoded frames: the robot publishes reliable, keep last 30. A lost access unit breaks the
  H.264 reference chain until the next keyframe; 30 frames absorb about a second of stall at
  25 fps. The edge subscribes `reliable` by default (DDS retransmits lost datagrams, at the
  cost of head-of-line delay on a lossy link) or `best_effort` (a lost datagram is a lost frame;
  the edge asks the robot for a keyframe and recovers within a round trip).
- QP maps: reliable, keep last 1, transient local: only the newest map matters, and an
  encoder that (re)starts late still gets it.
- masks fed back to the robot (SegmentationMask): reliable, keep last 2: only the newest
  matters to the robot, and a mask that is late is replaced by the next one.
- masks, overlays, heatmaps, statistics: reliable, keep last 5 (rviz subscribes reliable).
- edge heartbeats (fleet): best effort, keep last 10: a late heartbeat is worth nothing, and
  a stand-in edge judges another edge by whether heartbeats keep arriving.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

ENCODED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.RELIABLE
)
QP_MAP_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
MASK_FEEDBACK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE
)
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
)
RELIABLE_CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.RELIABLE
)
ENCODED_BEST_EFFORT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.BEST_EFFORT
)
EDGE_HEARTBEAT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT
)
CAMERA_QOS_KINDS = ("sensor_data", "reliable")
ENCODED_QOS_KINDS = ("reliable", "best_effort")
# Relative: each node reports inside its own namespace, so every robot (and the edge nodes
# serving it) has its own statistics topic, /<robot>/stac/statistics (/stac/statistics at root).
STATISTICS_TOPIC = "stac/statistics"
# Absolute: one topic for the whole fleet, where every edge container announces itself.
EDGE_HEARTBEAT_TOPIC = "/stac/fleet/edges"


def camera_qos(kind: str) -> QoSProfile:
    """QoS for subscribing or publishing camera images: 'sensor_data' or 'reliable'."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    if kind == "reliable":
        return RELIABLE_CAMERA_QOS
    raise ValueError(f"camera_qos must be one of {CAMERA_QOS_KINDS}, got '{kind}'")


def encoded_qos(kind: str) -> QoSProfile:
    """QoS for subscribing the encoded stream: 'reliable' or 'best_effort'."""
    if kind == "reliable":
        return ENCODED_QOS
    if kind == "best_effort":
        return ENCODED_BEST_EFFORT_QOS
    raise ValueError(f"encoded_qos must be one of {ENCODED_QOS_KINDS}, got '{kind}'")
