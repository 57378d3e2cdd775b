"""The robot's two feedback channels over Fast DDS (loopback, in process), while the robot is
busy: QP maps go out as a key map and deltas against the previous map, masks (the default
near_lossless_ref coding) each against the last mask sent, so a robot that is busy while
several arrive must still get every one of them. With the subscriptions' old keep-last
histories (1 for maps, 2 for masks) it got only the newest, coded against messages it never
saw, and refused the rest of the chain until the next key (9 of 37 maps in a loaded demo)."""

from __future__ import annotations

import time

import numpy as np
import pytest

WIDTH, HEIGHT = 64, 48  # 4 x 3 macroblocks
CHAIN = 6  # messages that arrive while the robot is busy: one key, then references
LEVELS_QP = (-4, 0, 4)


def test_each_history_holds_a_whole_chain_at_the_default_key_intervals():
    """The depths are constants in stac_ros_common (which cannot import the nodes); they must
    cover the chain between two keys at the nodes' default key intervals, or a robot that
    (re)starts late, or is busy, loses part of a chain."""
    from stac_edge_segmenter.segmenter_node import PARAMETERS as SEGMENTER_PARAMETERS
    from stac_ros_common.qos import MASK_FEEDBACK_DEPTH, QP_MAP_DEPTH
    from stac_sensitivity.sensitivity_node import PARAMETERS as SENSITIVITY_PARAMETERS

    def default(parameters, name):
        return next(spec.default for spec in parameters if spec.name == name)

    assert default(SENSITIVITY_PARAMETERS, "key_map_interval") <= QP_MAP_DEPTH
    assert default(SEGMENTER_PARAMETERS, "mask_key_interval") <= MASK_FEEDBACK_DEPTH


def _spin_until(executor, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.05)
    return condition()


@pytest.fixture
def channel():
    """(robot, edge node, executor spinning the edge only, header): the robot has encoded
    CHAIN camera frames (seq 1..CHAIN) and is not spinning, as if busy encoding."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Header

    from stac_encoder.encoder_node import EncoderNode
    from stac_ros_common.image_conversion import numpy_to_image

    rclpy.init(args=["--ros-args", "-r", "__node:=feedback_channel_test_robot"])
    robot = EncoderNode()
    edge = rclpy.create_node("feedback_channel_test_edge")
    executor = SingleThreadedExecutor()
    executor.add_node(edge)
    header = Header(frame_id="camera")
    header.stamp.sec = 1
    frame = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    for _ in range(CHAIN):
        robot._on_image(numpy_to_image(frame, "rgb8", header))
    try:
        yield robot, edge, executor, header
    finally:
        executor.shutdown()
        robot.destroy_node()
        edge.destroy_node()
        rclpy.try_shutdown()


def _publish_while_busy(executor, publisher, messages) -> None:
    assert _spin_until(executor, lambda: publisher.get_subscription_count() > 0, 10.0)
    for msg in messages:
        publisher.publish(msg)
    time.sleep(0.5)  # delivered into the robot's history while it does not spin


@pytest.mark.dds
def test_qp_maps_that_arrive_while_the_robot_is_busy_are_all_decoded(channel):
    from stac_codec.qp_map import QPLevelMap
    from stac_edge_segmenter.edge_decoding import DecodedFrame
    from stac_msgs.msg import QPMap
    from stac_ros_common.qos import QP_MAP_QOS
    from stac_sensitivity.feedback import FeedbackConfig, FeedbackEncoder
    from stac_sensitivity.sensitivity_node import qp_map_message

    robot, edge, executor, header = channel
    rng = np.random.default_rng(5)
    feedback = FeedbackEncoder(FeedbackConfig(hysteresis_levels=0, key_interval_maps=100))
    sent = [feedback.encode(QPLevelMap(rng.integers(0, 3, (3, 4)).astype(np.uint8), LEVELS_QP))
            for _ in range(CHAIN)]  # fmt: skip
    assert sent[0].is_key and not any(one.is_key for one in sent[1:])
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    messages = []
    for seq, one in enumerate(sent, start=1):
        msg = qp_map_message(one, DecodedFrame(header, seq, image), aq_strength=0.0)
        msg.header.stamp = header.stamp
        messages.append(msg)
    _publish_while_busy(executor, edge.create_publisher(QPMap, "qp_map", QP_MAP_QOS), messages)

    executor.add_node(robot)
    counters = robot.statistics.counters
    assert _spin_until(executor, lambda: counters.qp_maps == CHAIN, 10.0), (
        f"{counters.qp_maps} of {CHAIN} maps taken, refused: {robot._rejections.counts()}"
    )
    assert counters.qp_maps_rejected == 0
    np.testing.assert_array_equal(robot.encoder._pending_map.offsets, sent[-1].level_map.offsets_qp)


def _referenced_chain(header, length: int) -> list:
    """A key mask and length - 1 masks each coded against the one before (camera frames
    1..length), as the edge's segmenter sends them."""
    from stac_codec.mask_wire import MaskSender, mask_coding
    from stac_edge_segmenter.edge_decoding import DecodedFrame
    from stac_edge_segmenter.segmenter_node import mask_feedback_message

    base = np.random.default_rng(1).integers(0, 4, (HEIGHT // 4, WIDTH // 4)).astype(np.uint8)
    base = base.repeat(4, axis=0).repeat(4, axis=1)  # blocks: costly alone, cheap as before
    sender = MaskSender(mask_coding("near_lossless_ref", key_interval=100))
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    messages = []
    for seq in range(1, length + 1):
        mask = base.copy()
        mask[20:24, 40 + seq : 44 + seq] = 9
        messages.append(mask_feedback_message(mask, DecodedFrame(header, seq, image), 11, sender))
    return messages


def _is_referenced(msg) -> bool:
    from stac_codec.mask_wire import FLAG_REFERENCED, FLAGS_OFFSET

    return bool(bytes(msg.data)[FLAGS_OFFSET] & FLAG_REFERENCED)


@pytest.mark.dds
def test_referenced_masks_that_arrive_while_the_robot_is_busy_are_all_decoded(channel):
    from stac_msgs.msg import SegmentationMask
    from stac_ros_common.qos import MASK_FEEDBACK_QOS

    robot, edge, executor, header = channel
    messages = _referenced_chain(header, CHAIN)
    flags = [_is_referenced(msg) for msg in messages]
    assert not flags[0] and all(flags[1:])  # one key mask, then each against the one before
    publisher = edge.create_publisher(SegmentationMask, "mask_feedback", MASK_FEEDBACK_QOS)
    _publish_while_busy(executor, publisher, messages)

    executor.add_node(robot)
    counters = robot.statistics.counters
    assert _spin_until(executor, lambda: counters.masks_received == CHAIN, 10.0), (
        f"{counters.masks_received} of {CHAIN} masks taken, refused: {robot._rejections.counts()}"
    )
    assert counters.masks_rejected == 0
    assert counters.key_mask_requests == 0  # nothing missed, nothing asked for


@pytest.mark.dds
def test_a_robot_that_missed_a_mask_asks_the_edge_for_a_key_mask_once_per_interval(channel):
    """Masks 2 and 3 never reach the robot: 4 and 5 name references it lacks and are refused;
    the robot asks for a key mask once (the second refusal falls inside
    key_mask_request_interval_s) instead of waiting for the edge's next key."""
    from std_msgs.msg import Empty

    from stac_msgs.msg import SegmentationMask
    from stac_ros_common.qos import KEY_MASK_REQUEST_QOS, MASK_FEEDBACK_QOS

    robot, edge, executor, header = channel
    messages = _referenced_chain(header, 5)
    requests = []
    edge.create_subscription(Empty, "key_mask_request", requests.append, KEY_MASK_REQUEST_QOS)
    publisher = edge.create_publisher(SegmentationMask, "mask_feedback", MASK_FEEDBACK_QOS)
    _publish_while_busy(executor, publisher, [messages[0], messages[3], messages[4]])

    executor.add_node(robot)
    counters = robot.statistics.counters
    assert _spin_until(executor, lambda: counters.masks_rejected == 2 and requests, 10.0), (
        f"refused {robot._rejections.counts()}, requests heard {len(requests)}"
    )
    executor.spin_once(timeout_sec=0.3)
    assert counters.masks_received == 1
    assert counters.key_mask_requests == len(requests) == 1
    refused = robot._rejections.counts()  # a reference the robot does not hold
    assert sum(refused.values()) == 2
    assert set(refused) <= {"mask/no_reference", "mask/reference_mismatch"}, refused


class _NoInference:
    """The segmenter's worker slot, unused here: frames are finished by hand (as the edge
    container's worker does, finish_frame with each frame's class ids)."""

    def submit(self, frame):
        return None

    def close(self):
        return None


@pytest.mark.dds
def test_the_segmenter_answers_a_key_mask_request_with_a_mask_coded_alone():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Empty, Header

    from stac_edge_segmenter.edge_decoding import DecodedFrame
    from stac_edge_segmenter.loading import load_model
    from stac_edge_segmenter.segmenter_node import SegmenterNode
    from stac_msgs.msg import SegmentationMask
    from stac_ros_common.qos import KEY_MASK_REQUEST_QOS, MASK_FEEDBACK_QOS

    rclpy.init(args=["--ros-args", "-p", "mask_coding:=near_lossless_ref"])
    segmenter = SegmenterNode(model=load_model(), worker=_NoInference())
    robot = rclpy.create_node("key_mask_test_robot")
    executor = SingleThreadedExecutor()
    executor.add_node(segmenter)
    executor.add_node(robot)
    try:
        received = []
        robot.create_subscription(
            SegmentationMask, "mask_feedback", received.append, MASK_FEEDBACK_QOS
        )
        request = robot.create_publisher(Empty, "key_mask_request", KEY_MASK_REQUEST_QOS)
        assert _spin_until(executor, lambda: request.get_subscription_count() > 0, 10.0)
        header = Header(frame_id="camera")
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[8:40, 8:40] = 3

        def finish(seq: int) -> None:
            mask[20:24, 40 + seq : 44 + seq] = 9
            segmenter.finish_frame(DecodedFrame(header, seq, image), mask.copy())

        finish(1)
        finish(2)
        request.publish(Empty())
        counters = segmenter.statistics.counters
        assert _spin_until(executor, lambda: counters.key_mask_requests == 1, 10.0)
        finish(3)
        finish(4)
        assert _spin_until(executor, lambda: len(received) == 4, 10.0)
        assert [_is_referenced(msg) for msg in received] == [False, True, False, True]
    finally:
        executor.shutdown()
        segmenter.close()
        segmenter.destroy_node()
        robot.destroy_node()
        rclpy.try_shutdown()
