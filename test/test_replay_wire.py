"""The replay counts the bytes the live nodes count: the CDR length of each message (rclpy)."""

from __future__ import annotations

import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage
from std_srvs.srv import Trigger

from stac_eval.replay.wire import (
    JPEG_FORMAT,
    compressed_image_bytes,
    encoded_frame_bytes,
    keyframe_request_bytes,
    qp_map_bytes,
)
from stac_msgs.msg import EncodedFrame, QPMap


@pytest.mark.parametrize("size", [0, 1, 3, 7, 590, 20_001])
@pytest.mark.parametrize("frame_id", ["", "camera", "camera_optical_frame"])
def test_sizes_equal_rclpy_serialisation(size, frame_id):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = EncodedFrame(codec="h264", rate_control="crf", width=960, height=540, data=payload)
    frame.header.frame_id = frame_id
    assert encoded_frame_bytes(size, frame_id) == len(serialize_message(frame))
    qp_map = QPMap(map_seq=3, rows=34, cols=60, data=payload)
    qp_map.header.frame_id = frame_id
    assert qp_map_bytes(size, frame_id) == len(serialize_message(qp_map))
    image = CompressedImage(format=JPEG_FORMAT, data=payload)
    image.header.frame_id = frame_id
    assert compressed_image_bytes(size, frame_id) == len(serialize_message(image))


def test_keyframe_request_size_equals_rclpy_serialisation():
    assert keyframe_request_bytes() == len(serialize_message(Trigger.Request()))
