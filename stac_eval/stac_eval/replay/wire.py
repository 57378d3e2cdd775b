"""Bytes each message takes on the link: the CDR serialisation, as the live statistics count it.

The live nodes count `len(serialize_message(msg))` (stac_ros_common.wire_size); this module is
ROS-free, so it computes the same length from the message layout (XCDR1, little endian,
4-byte encapsulation header, each primitive aligned to its size from the end of that header).
test_replay_wire.py checks every function against rclpy's serialisation.

- H.264 methods send stac_msgs/EncodedFrame (the STAC robot; ffmpeg_image_transport's
  FFMPEGPacket has the same shape: header, size, flags and the access unit);
- JPEG sends sensor_msgs/CompressedImage (compressed_image_transport);
- maps come back as stac_msgs/QPMap, keyframe requests as std_srvs/Trigger requests, masks as
  stac_msgs/SegmentationMask in the mask coder's wire form (`sent_mask`: the one place where
  the replay and stac-bench temporal price a mask sent back, in the segmenter's default
  `mask_coding`, and take the mask the robot decodes from it).
"""

from __future__ import annotations

import numpy as np

from stac_codec.mask_wire import (
    DEFAULT_MASK_CODING,
    ENCODING_NAME,
    MaskSender,
    encode_mask_and_decoded,
    mask_coding,
)

ENCAPSULATION_BYTES = 4
FRAME_ID = "camera"
H264_CODEC = "h264"
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"  # what compressed_image_transport writes for rgb8


class _Cdr:
    """Running length of a CDR body (offsets counted after the encapsulation header)."""

    def __init__(self) -> None:
        self.offset = 0

    def primitive(self, size: int) -> _Cdr:
        self.offset += (-self.offset) % size
        self.offset += size
        return self

    def string(self, text: str) -> _Cdr:
        self.primitive(4)
        self.offset += len(text.encode()) + 1  # characters and the terminating NUL
        return self

    def octets(self, count: int) -> _Cdr:
        self.primitive(4)
        self.offset += count
        return self

    def header(self, frame_id: str) -> _Cdr:
        return self.primitive(4).primitive(4).string(frame_id)  # stamp sec, nanosec

    def total(self) -> int:
        return ENCAPSULATION_BYTES + self.offset


def encoded_frame_bytes(
    data_bytes: int, frame_id: str = FRAME_ID, rate_control: str = "crf"
) -> int:
    """Serialized size of a stac_msgs/EncodedFrame carrying `data_bytes` of H.264."""
    cdr = _Cdr().header(frame_id).primitive(8).string(H264_CODEC)  # frame_seq, codec
    cdr.primitive(4).primitive(4).primitive(1)  # width, height, keyframe
    cdr.primitive(8).string(rate_control).primitive(4)  # qp_map_seq, rate_control, base_quality
    return cdr.octets(data_bytes).total()


def qp_map_bytes(data_bytes: int, frame_id: str = FRAME_ID) -> int:
    """Serialized size of a stac_msgs/QPMap carrying `data_bytes` of wire-form map."""
    cdr = _Cdr().header(frame_id).primitive(4)  # session_id
    cdr.primitive(8).primitive(8).primitive(8)  # map_seq, reference_map_seq, source_frame_seq
    cdr.primitive(4).primitive(4)  # source_stamp
    cdr.primitive(2).primitive(2).primitive(2)  # cols, rows, levels
    cdr.primitive(1).primitive(1).primitive(4)  # max_abs_offset_qp, budget_shift_qp, aq_strength
    return cdr.octets(data_bytes).total()


def compressed_image_bytes(
    data_bytes: int, frame_id: str = FRAME_ID, image_format: str = JPEG_FORMAT
) -> int:
    """Serialized size of a sensor_msgs/CompressedImage carrying `data_bytes`."""
    return _Cdr().header(frame_id).string(image_format).octets(data_bytes).total()


def keyframe_request_bytes() -> int:
    """Serialized size of a std_srvs/Trigger request (no fields: CDR pads one octet)."""
    return _Cdr().primitive(1).total() + 3  # the body is padded to 4 octets


def segmentation_mask_bytes(
    data_bytes: int, frame_id: str = FRAME_ID, encoding: str = ENCODING_NAME
) -> int:
    """Serialized size of a stac_msgs/SegmentationMask carrying `data_bytes` of coded mask."""
    cdr = _Cdr().header(frame_id).primitive(8)  # source_frame_seq
    cdr.primitive(4).primitive(4).string(encoding).primitive(2)  # width, height, num_classes
    return cdr.octets(data_bytes).total()


def sent_mask(
    class_ids: np.ndarray,
    coding: str = DEFAULT_MASK_CODING,
    frame_id: str = FRAME_ID,
    sender: MaskSender | None = None,
) -> tuple[int, np.ndarray | None]:
    """What sending `class_ids` (HxW uint8) back to the robot costs, the SegmentationMask
    message with the mask in `coding` (stac_codec.mask_wire), and the mask the robot decodes
    from it (the same mask unless the coding is lossy). With `sender` (the edge's state for
    one robot, as the segmenter holds it) its coding is used instead, and a gated coding may
    send a keep: the robot then gets None (it goes on with the mask it holds)."""
    if sender is None:
        chosen = mask_coding(coding)
        data, decoded = encode_mask_and_decoded(class_ids, chosen)
    else:
        chosen = sender.coding
        data, decoded = sender.encode_and_decoded(class_ids)
    return segmentation_mask_bytes(len(data), frame_id, chosen.encoding), decoded
