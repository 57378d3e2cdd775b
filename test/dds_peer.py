"""A publisher or subscriber process for the two-process Fast DDS test (run by the test).

python dds_peer.py pub  TOPIC COUNT SIZE_BYTES
python dds_peer.py sub  TOPIC COUNT TIMEOUT_S   -> prints one JSON line with what arrived
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from stac_msgs.msg import EncodedFrame
from stac_ros_common.image_pixels import field_as_numpy, to_uint8_field

QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1, reliability=ReliabilityPolicy.RELIABLE)


def payload(seq: int, size_bytes: int) -> np.ndarray:
    """Content that depends on the sequence number, so a mixed-up message is detected."""
    return ((np.arange(size_bytes, dtype=np.uint32) * 31 + seq) % 251).astype(np.uint8)


def publish(topic: str, count: int, size_bytes: int) -> None:
    node = rclpy.create_node("dds_peer_pub")
    pub = node.create_publisher(EncodedFrame, topic, QOS)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("no subscriber matched within 30 s")
        rclpy.spin_once(node, timeout_sec=0.05)
    for seq in range(1, count + 1):
        msg = EncodedFrame(frame_seq=seq, codec="h264", width=640, height=480)
        msg.data = to_uint8_field(payload(seq, size_bytes))
        pub.publish(msg)
    if not pub.wait_for_all_acked(rclpy.duration.Duration(seconds=30)):
        raise SystemExit("not every message was acknowledged within 30 s")
    node.destroy_node()


def subscribe(topic: str, count: int, timeout_s: float) -> None:
    node = rclpy.create_node("dds_peer_sub")
    received: list[int] = []
    intact: list[bool] = []

    def on_frame(msg: EncodedFrame) -> None:
        received.append(msg.frame_seq)
        data = field_as_numpy(msg.data)
        intact.append(np.array_equal(data, payload(msg.frame_seq, data.size)))

    node.create_subscription(EncodedFrame, topic, on_frame, QOS)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({"received": received, "intact": all(intact)}), flush=True)
    node.destroy_node()


def main() -> None:
    mode, topic, count, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rclpy.init()
    try:
        if mode == "pub":
            publish(topic, count, int(last))
        else:
            subscribe(topic, count, float(last))
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
