"""The replay counts the bytes the live nodes count: the CDR length of each message (rclpy)."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage
from std_srvs.srv import Trigger

from stac_codec.mask_wire import (
    ENCODING_NAME,
    MASK_CODINGS,
    MaskSender,
    encode_keep,
    encode_mask_and_decoded,
)
from stac_eval.replay.wire import (
    JPEG_FORMAT,
    compressed_image_bytes,
    encoded_frame_bytes,
    keyframe_request_bytes,
    qp_map_bytes,
    segmentation_mask_bytes,
    sent_mask,
)
from stac_msgs.msg import EncodedFrame, QPMap, SegmentationMask


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
    mask = SegmentationMask(encoding="stac_mask_v2", width=960, height=540, data=payload)
    mask.header.frame_id = frame_id
    assert segmentation_mask_bytes(size, frame_id) == len(serialize_message(mask))


@pytest.mark.parametrize("coding", sorted(MASK_CODINGS))
def test_a_mask_costs_its_coded_message(coding):
    class_ids = np.zeros((54, 96), np.uint8)
    class_ids[20:, :] = 3
    class_ids[30:40, 10:12] = 5
    coded, decoded = encode_mask_and_decoded(class_ids, coding)
    message = SegmentationMask(
        encoding=MASK_CODINGS[coding].encoding, width=96, height=54, data=coded
    )
    message.header.frame_id = "camera"
    size_bytes, received = sent_mask(class_ids, coding)
    assert size_bytes == len(serialize_message(message))
    np.testing.assert_array_equal(received, decoded)


def test_keyframe_request_size_equals_rclpy_serialisation():
    assert keyframe_request_bytes() == len(serialize_message(Trigger.Request()))


def test_a_gated_sender_prices_a_keep_as_its_message_and_gives_the_robot_none():
    class_ids = np.zeros((54, 96), np.uint8)
    class_ids[20:, :] = 3
    sender = MaskSender("near_lossless_gated")
    first_bytes, first = sent_mask(class_ids, sender=sender)
    np.testing.assert_array_equal(first, class_ids)
    keep_bytes, kept = sent_mask(class_ids, sender=sender)
    assert kept is None
    message = SegmentationMask(
        encoding=ENCODING_NAME, width=96, height=54, data=encode_keep(96, 54)
    )
    message.header.frame_id = "camera"
    assert keep_bytes == len(serialize_message(message)) < first_bytes
