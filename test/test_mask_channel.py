"""The robot's mask channel against forged messages, in process (no DDS traffic): a
SegmentationMask with a valid checksum that declares a huge picture is refused before the
decoder allocates anything, and no exception of any kind leaves the callback.

Before this was fixed, a 34-byte forged mask made encoder_node allocate 268 MB, and a 522 KB
one killed it with a MemoryError out of its mask callback."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import rclpy

from stac_codec.mask_wire import (
    ENCODING_NAME,
    FLAG_REFERENCED,
    FLAGS_OFFSET,
    MASK_CODINGS,
    RLE_DEFLATE_ENCODING,
    MaskSender,
    decode_mask,
    encode_keep,
    encode_mask,
    encoding_of,
    mask_coding,
)
from stac_encoder.encoder_node import EncoderNode
from stac_msgs.msg import SegmentationMask
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.image_pixels import to_uint8_field

WIDTH, HEIGHT = 64, 48
HUGE_SIDE = 16384
MAX_RUN = (1 << 21) - 1  # the longest run three varint bytes hold


def _forged_huge_mask() -> bytes:
    """A CRC-valid wire mask whose runs really cover 16384x16384 pixels: 34-odd bytes that
    decode to 268 MB."""
    pixels = HUGE_SIDE * HUGE_SIDE
    runs = [MAX_RUN] * (pixels // MAX_RUN) + [pixels % MAX_RUN]
    varints = b"".join(
        bytes([(r & 0x7F) | 0x80, ((r >> 7) & 0x7F) | 0x80, r >> 14]) if r >= 1 << 14
        else bytes([(r & 0x7F) | 0x80, r >> 7])
        for r in runs
    )  # fmt: skip
    body = struct.pack(">BHHI", 1, HUGE_SIDE, HUGE_SIDE, len(runs))
    body += zlib.compress(bytes(len(runs)) + varints, 9)
    return body + struct.pack(">I", zlib.crc32(body))


def _mask_message(
    data: bytes, width: int, height: int, source_frame_seq: int = 1, encoding: str | None = None
):
    msg = SegmentationMask(
        source_frame_seq=source_frame_seq,
        width=width,
        height=height,
        encoding=encoding or encoding_of(data),
        num_classes=11,
    )
    msg.data = to_uint8_field(data)
    return msg


@pytest.fixture
def robot():
    rclpy.init(args=["--ros-args", "-r", "__node:=mask_channel_test_robot"])
    node = EncoderNode()
    frame = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    node._on_image(numpy_to_image(frame, "rgb8"))  # the robot now holds 64x48 frames
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _rejected(node) -> dict[str, int]:
    return node._rejections.counts()


@pytest.mark.parametrize("declared", ["huge", "frame_size"])
def test_a_forged_huge_mask_is_refused_before_anything_is_allocated(robot, declared):
    data = _forged_huge_mask()
    assert len(data) < 200
    side = (HUGE_SIDE, HUGE_SIDE) if declared == "huge" else (WIDTH, HEIGHT)
    tracemalloc.start()
    try:
        robot._on_mask(_mask_message(data, *side))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 8 * 2**20, f"the forged mask made the robot allocate {peak_bytes} B"
    assert robot.statistics.counters.masks_rejected == 1
    assert robot.statistics.counters.masks_received == 0
    kind = "mask/size" if declared == "huge" else "mask/damaged"
    assert _rejected(robot) == {kind: 1}


def test_a_mask_before_any_camera_frame_is_refused():
    rclpy.init(args=["--ros-args", "-r", "__node:=mask_channel_test_fresh"])
    try:
        node = EncoderNode()
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        node._on_mask(_mask_message(encode_mask(mask), WIDTH, HEIGHT))
        assert node._rejections.counts() == {"mask/no_frame": 1}
        node.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_no_exception_of_any_kind_leaves_the_mask_callback(robot, monkeypatch):
    def out_of_memory(*_args, **_kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(robot.loop, "submit_mask", out_of_memory)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    robot._on_mask(_mask_message(encode_mask(mask), WIDTH, HEIGHT))
    robot._on_mask(_mask_message(encode_mask(mask), WIDTH, HEIGHT))
    assert _rejected(robot) == {"mask/internal": 2}
    assert robot.statistics.counters.masks_rejected == 2


def test_a_good_mask_of_the_frame_size_is_still_adopted(robot):
    mask = np.full((HEIGHT, WIDTH), 3, np.uint8)
    robot._on_mask(_mask_message(encode_mask(mask), WIDTH, HEIGHT))
    assert robot.statistics.counters.masks_received == 1
    assert _rejected(robot) == {}


@pytest.mark.parametrize("coding", sorted(MASK_CODINGS))
def test_the_robot_takes_every_coding_the_edge_may_choose(robot, monkeypatch, coding):
    mask = np.full((HEIGHT, WIDTH), 3, np.uint8)
    mask[10:30, 5:40] = 1
    mask[20:24, 50:53] = 9
    adopted = []
    submit = robot.loop.submit_mask
    monkeypatch.setattr(
        robot.loop, "submit_mask", lambda ids, seq: adopted.append(ids) or submit(ids, seq)
    )
    data = encode_mask(mask, coding)
    robot._on_mask(_mask_message(data, WIDTH, HEIGHT))
    assert robot.statistics.counters.masks_received == 1
    assert _rejected(robot) == {}
    np.testing.assert_array_equal(adopted[0], decode_mask(data, max_pixels=mask.size))
    if MASK_CODINGS[coding].lossless:
        np.testing.assert_array_equal(adopted[0], mask)


def test_a_mask_whose_data_is_not_its_declared_encoding_is_refused(robot):
    data = encode_mask(np.zeros((HEIGHT, WIDTH), np.uint8), "lossless")
    robot._on_mask(_mask_message(data, WIDTH, HEIGHT, encoding=RLE_DEFLATE_ENCODING))
    robot._on_mask(_mask_message(data, WIDTH, HEIGHT, encoding="png"))
    assert _rejected(robot) == {"mask/damaged": 1, "mask/encoding": 1}
    assert encoding_of(data) == ENCODING_NAME


def test_a_keep_is_taken_as_an_answer_and_the_mask_held_goes_on(robot, monkeypatch):
    mask = np.full((HEIGHT, WIDTH), 3, np.uint8)
    robot._on_mask(_mask_message(encode_mask(mask), WIDTH, HEIGHT))
    held = robot.loop.submit_mask
    kept, adopted = [], []
    monkeypatch.setattr(robot.loop, "mask_kept", kept.append)
    monkeypatch.setattr(
        robot.loop, "submit_mask", lambda ids, seq: adopted.append(seq) or held(ids, seq)
    )
    robot._on_mask(_mask_message(encode_keep(WIDTH, HEIGHT), WIDTH, HEIGHT, source_frame_seq=1))
    assert kept == [1] and adopted == []
    assert robot.statistics.counters.masks_received == 2
    assert _rejected(robot) == {}
    robot._on_mask(_mask_message(encode_keep(WIDTH + 1, HEIGHT), WIDTH + 1, HEIGHT))
    assert _rejected(robot) == {"mask/size": 1}  # a keep of another size is refused as a mask is


@pytest.mark.parametrize("coding", ["near_lossless_ref", "near_lossless_keyref"])
def test_a_mask_coded_against_a_mask_the_robot_missed_is_refused_until_a_key_mask(
    robot, monkeypatch, coding
):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 4, (HEIGHT // 4, WIDTH // 4)).astype(np.uint8)
    base = base.repeat(4, axis=0).repeat(4, axis=1)  # blocks: costly alone, cheap as before
    masks = []
    for step in range(6):
        mask = base.copy()
        mask[20:24, 40 + step : 44 + step] = 9
        masks.append(mask)
    sender = MaskSender(mask_coding(coding, key_interval=4))
    wire = [sender.encode(mask) for mask in masks]
    referenced = [bool(data[FLAGS_OFFSET] & FLAG_REFERENCED) for data in wire]
    assert referenced == [False, True, True, True, False, True]  # key masks 0 and 4
    adopted = []
    submit = robot.loop.submit_mask
    monkeypatch.setattr(
        robot.loop, "submit_mask", lambda ids, seq: adopted.append(seq) or submit(ids, seq)
    )
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for index, data in enumerate(wire):  # one camera frame (seq index + 1) and its mask
        if index:
            robot._on_image(numpy_to_image(frame, "rgb8"))
        if index != 1:  # the robot's keep-last queue dropped mask 1
            robot._on_mask(_mask_message(data, WIDTH, HEIGHT, source_frame_seq=index + 1))
    if coding == "near_lossless_ref":  # masks 2 and 3 name masks 1 and 2
        assert _rejected(robot) == {"mask/reference_mismatch": 2}
        assert adopted == [1, 5, 6]
    else:  # every mask names the key mask 0 or 4
        assert _rejected(robot) == {}
        assert adopted == [1, 3, 4, 5, 6]
    assert robot.statistics.counters.masks_rejected == len(wire) - 1 - len(adopted)


def test_a_referenced_mask_before_any_reference_is_refused(robot):
    sender = MaskSender("near_lossless_ref")
    mask = np.full((HEIGHT, WIDTH), 3, np.uint8)
    mask[::4, ::3] = 5
    sender.encode(mask)  # the robot never got this key mask
    data = sender.encode(mask)
    assert data[FLAGS_OFFSET] & FLAG_REFERENCED
    robot._on_mask(_mask_message(data, WIDTH, HEIGHT))
    robot._on_mask(_mask_message(data, WIDTH, HEIGHT))
    assert _rejected(robot) == {"mask/no_reference": 2}
