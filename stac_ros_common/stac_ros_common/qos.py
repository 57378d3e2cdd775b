"""The QoS profiles of STAC's topics, in one place so publishers and subscribers agree.

- camera: `sensor_data` (best effort, keep last 5) by default, like camera drivers publish;
  `reliable` (keep all) for replay, where every frame must be
  accounted for: a slow encoder then slows the player down instead of losing frames.
- encoded frames: reliable, keep last 30. A lost access unit breaks the H.264 reference
  chain until the next keyframe; 30 frames absorb about a second of stall at 25 fps.
- QP maps: reliable, keep last 1, transient local: only the newest map matters, and an
  encoder that (re)starts late still gets it.
- masks, overlays, heatmaps, statistics: reliable, keep last 5 (rviz subscribes reliable).
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
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
)
RELIABLE_CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_ALL, depth=1, reliability=ReliabilityPolicy.RELIABLE
)
CAMERA_QOS_KINDS = ("sensor_data", "reliable")
STATISTICS_TOPIC = "/stac/statistics"


def camera_qos(kind: str) -> QoSProfile:
    """QoS for subscribing or publishing camera images: 'sensor_data' or 'reliable'."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    if kind == "reliable":
        return RELIABLE_CAMERA_QOS
    raise ValueError(f"camera_qos must be one of {CAMERA_QOS_KINDS}, got '{kind}'")
