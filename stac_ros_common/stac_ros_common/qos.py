"""The QoS profiles of STAC's topics, in one place so publishers and subscribers agree.

- camera: `sensor_data` (best effort, keep last 5) by default, like camera drivers publish;
  `reliable` (keep all) for replay, where every frame must be
  accounted for: a slow encoder then slows the player down instead of losing frames.
- encoded frames: the robot publishes reliable, keep last 30. A lost access unit breaks the
  H.264 reference chain until the next keyframe; 30 frames absorb about a second of stall at
  25 fps. The edge subscribes `reliable` by default (DDS retransmits lost datagrams, at the
  cost of head-of-line delay on a lossy link) or `best_effort` (a lost datagram is a lost frame;
  the edge asks the robot for a keyframe and recovers within a round trip).
- QP maps: reliable, keep last QP_MAP_DEPTH (10), transient local. Only the newest map is
  applied, but maps go out as deltas against the previous one (stac_sensitivity.feedback), so
  the robot must see every map of a chain: with keep last 1 a robot busy encoding lost the
  maps that arrived meanwhile and refused every delta until the next key map (9 of 37 maps in
  a loaded demo). The depth covers a whole chain at the default key_map_interval (10), so an
  encoder that (re)starts late also gets the last key map and the deltas after it.
- masks fed back to the robot (SegmentationMask): reliable, keep last MASK_FEEDBACK_DEPTH
  (10). Only the newest is held, but a referenced mask coding (stac_codec.mask_wire,
  near_lossless_ref, the default) codes each mask against the last one sent, so a mask lost
  from the robot's queue makes it refuse the masks after it until the next key mask (every
  mask_key_interval, default 8). Decoding a mask the robot then replaces costs about 1 ms.
- key-mask requests (robot to edge, std_msgs/Empty): reliable, keep last 1. A request says
  only "send the next mask alone"; one waiting is as good as several.
- the robot's mask of every camera frame and its age (robot_mask, robot_mask_age): reliable,
  keep last ROBOT_MASK_DEPTH (30), as the reliable camera. These are the robot's answer for
  each frame, and a reliable writer with keep last N overwrites what a slow reader has not
  acknowledged: with 5, a recorder (ros2 bag record, the evaluation's recorder) starved for
  200 ms while a restarted edge loaded its model missed 2 of 774 masks (a clean-clone CI run).
  30 frames absorb about a second of stall at 25 fps (at most 15 MB of 960x540 masks held).
- edge masks, overlays, heatmaps, statistics: reliable, keep last 5 (rviz subscribes
  reliable).
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
QP_MAP_DEPTH = 10
QP_MAP_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=QP_MAP_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
MASK_FEEDBACK_DEPTH = 10
MASK_FEEDBACK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=MASK_FEEDBACK_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
)
KEY_MASK_REQUEST_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
)

OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
)
ROBOT_MASK_DEPTH = 30
ROBOT_MASK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=ROBOT_MASK_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
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
