"""stac_msgs messages survive rclpy (CDR) serialization with every field intact."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

from conftest import REPO_ROOT
from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import decode_qp_map, encode_qp_map
from stac_msgs.msg import EncodedFrame, QPMap
from stac_ros_common.image_pixels import field_as_numpy, to_uint8_field

BANK = (-10, -6, -3, 0, 3, 6, 10, 12)


def _header() -> Header:
    return Header(stamp=Time(sec=1_700_000_123, nanosec=456_789_012), frame_id="camera_optical")


def test_encoded_frame_round_trip():
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8)
    msg = EncodedFrame(
        header=_header(),
        frame_seq=2**40 + 7,
        codec="h264",
        width=481,
        height=359,
        keyframe=True,
        qp_map_seq=12,
        rate_control="crf",
        base_quality=27.5,
        data=to_uint8_field(payload),
    )
    back = deserialize_message(serialize_message(msg), EncodedFrame)
    assert back.header == msg.header
    assert (back.frame_seq, back.codec, back.width, back.height) == (2**40 + 7, "h264", 481, 359)
    assert back.keyframe is True
    assert back.qp_map_seq == 12
    assert (back.rate_control, back.base_quality) == ("crf", 27.5)
    np.testing.assert_array_equal(field_as_numpy(back.data), payload)


def test_qp_map_round_trip():
    level_map = QPLevelMap(np.arange(23 * 30, dtype=np.uint8).reshape(23, 30) % 8, BANK, -2)
    msg = QPMap(
        header=_header(),
        session_id=2**32 - 1,
        map_seq=3,
        reference_map_seq=2,
        source_frame_seq=99,
        source_stamp=Time(sec=5, nanosec=6),
        cols=30,
        rows=23,
        levels=8,
        max_abs_offset_qp=12,
        budget_shift_qp=-2,
        aq_strength=0.5,
        data=to_uint8_field(encode_qp_map(level_map)),
    )
    back = deserialize_message(serialize_message(msg), QPMap)
    assert back.header == msg.header
    assert (back.session_id, back.map_seq, back.reference_map_seq) == (2**32 - 1, 3, 2)
    assert back.source_frame_seq == 99
    assert back.source_stamp == Time(sec=5, nanosec=6)
    assert (back.cols, back.rows, back.levels, back.max_abs_offset_qp) == (30, 23, 8, 12)
    assert (back.budget_shift_qp, back.aq_strength) == (-2, 0.5)
    decoded = decode_qp_map(field_as_numpy(back.data).tobytes())
    np.testing.assert_array_equal(decoded.offsets_qp, level_map.offsets_qp)


def test_message_definitions_document_every_field():
    """Every block of fields in the .msg files carries a comment: the interface is the docs."""
    for path in sorted((REPO_ROOT / "stac_msgs" / "msg").glob("*.msg")):
        blocks = path.read_text().split("\n\n")
        for block in blocks:
            lines = [line for line in block.splitlines() if line.strip()]
            fields = [line for line in lines if not line.startswith("#")]
            assert not fields or any(line.startswith("#") for line in lines), (
                f"{path.name}: fields {fields} have no comment"
            )
