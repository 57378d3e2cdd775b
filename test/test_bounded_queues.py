"""Queues and sets that live as long as a node stay bounded (defects of a long run)."""

from __future__ import annotations

import rclpy
from rclpy.qos import HistoryPolicy
from sensor_msgs.msg import Image

from stac_encoder.video_source_node import VideoSourceNode
from stac_msgs.msg import EncodedFrame
from stac_ros_common.qos import RELIABLE_CAMERA_QOS


def test_the_reliable_camera_subscription_keeps_a_bounded_history():
    """Keep-all would queue without bound behind a slow encoder (depth was ignored)."""
    assert RELIABLE_CAMERA_QOS.history is HistoryPolicy.KEEP_LAST
    assert 1 <= RELIABLE_CAMERA_QOS.depth <= 100


def test_the_consumed_pace_player_forgets_stamps_it_no_longer_waits_for(tmp_path):
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"")  # only the parameter must name a file; nothing is played here
    rclpy.init(args=["--ros-args", "-p", f"uri:={clip}", "-p", "pace:=consumed",
                     "-p", "consumed_timeout_s:=0.1"])  # fmt: skip
    try:
        node = VideoSourceNode()
        for second in range(1, 501):  # late answers of frames whose wait timed out
            encoded = EncodedFrame()
            encoded.header.stamp.sec = second
            node._on_encoded(encoded)
        waiting = Image()
        waiting.header.stamp.sec = 400
        node._await_consumed(waiting, 0)
        assert len(node._consumed_stamps) == 100  # only stamps newer than the one awaited
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
