"""A rogue publisher for fault injection: malformed messages on the graph's own topics.

Anything on the DDS domain can publish anything (SROS2 aside). This node sends, in turn, broken
EncodedFrames (garbage bytes, sizes of 0 or 65535, empty data, absurd frame numbers), QPMaps
(garbage wire bytes, lying sizes, a delta against a map nobody has, offsets of -51 everywhere
under a bogus sequence number) and camera Images (unsupported encodings, 1x1, a lying row
step, a picture wider than H.264 allows, data shorter than declared). On SIGINT/SIGTERM it
publishes for `duration_s`, waits until the subscribers have received everything, and prints
how many of each kind it sent (`rogue sent: encoded=N qp_map=M image=K`), so a fault scenario
can check that the nodes refused every one and still account for every real frame.

    python -m stac_eval.ros.rogue_node --ros-args -p rate_hz:=5.0 -p duration_s:=10.0 \\
        -r encoded:=/stac/encoded -r qp_map:=/stac/qp_map -r image:=/camera/image_raw
"""

from __future__ import annotations

import itertools
import secrets
import time

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import encode_qp_map
from stac_msgs.msg import EncodedFrame, QPMap
from stac_ros_common.image_pixels import to_uint8_field
from stac_ros_common.node_runner import enable_stack_dumps
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS, QP_MAP_QOS, RELIABLE_CAMERA_QOS

PARAMETERS = (
    ParameterSpec("rate_hz", 5.0, "Malformed messages per second on each topic.", 0.1, 1000.0),
    ParameterSpec(
        "width", 480, "The real stream's width, for units of a plausible size.", 1, 16384
    ),
    ParameterSpec("height", 270, "The real stream's height.", 1, 16384),
    ParameterSpec("duration_s", 10.0, "Publish for this long, then exit.", 0.1, 1e6),
    *(
        ParameterSpec(
            f"{topic}_subscribers",
            1,
            f"Send nothing until this many subscribers of {topic} "
            "have matched (every one the graph has, so that sent = received).",
            1,
            100,
        )
        for topic in ("encoded", "qp_map", "image")
    ),
)


def _encoded_frames(width: int, height: int):
    """An endless cycle of broken EncodedFrames."""
    garbage = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    cases = [
        (garbage, width, height, 2**63),  # not H.264 at all, the stream's size
        (b"\x00\x00\x00\x01\x65" + garbage[:500], width, height, 7),  # an "IDR" of noise
        (garbage, 0, 0, 1),  # a size of nothing
        (garbage, 65535, 65535, 2**64 - 1),  # absurd size and frame number
        (b"", width, height, 3),  # no data
    ]
    for data, w, h, frame_seq in itertools.cycle(cases):
        msg = EncodedFrame(frame_seq=frame_seq, codec="h264", width=w, height=h, keyframe=True)
        msg.data = to_uint8_field(data)
        yield msg


def _qp_maps(width: int, height: int):
    """An endless cycle of broken QPMaps."""
    rows, cols = -(-height // 16), -(-width // 16)
    all_finest = QPLevelMap(np.zeros((rows, cols), np.uint8), (-51, 0))  # -51 everywhere
    session = secrets.randbits(32)
    cases = [
        (b"\xff" * 300, rows, cols, 0, 2**64 - 1),  # not the wire form
        (encode_qp_map(all_finest), 65535, 65535, 0, 5),  # a header that lies about size
        (encode_qp_map(all_finest, all_finest), rows, cols, 41, 6),  # a delta of nothing held
        (encode_qp_map(all_finest), rows, cols, 0, 2**64 - 1),  # a bit-rate bomb, bogus seq
    ]
    for data, r, c, reference, map_seq in itertools.cycle(cases):
        msg = QPMap(
            session_id=session, map_seq=map_seq, reference_map_seq=reference,
            source_frame_seq=1, rows=r, cols=c, levels=2, max_abs_offset_qp=51,
        )  # fmt: skip
        msg.data = to_uint8_field(data)
        yield msg


def _images():
    """An endless cycle of broken camera Images."""
    cases = [
        ("16UC1", 64, 48, 128, 64 * 48 * 2),  # an encoding the robot does not take
        ("rgb8", 1, 1, 3, 3),  # too small to encode
        ("rgb8", 64, 48, 100, 64 * 48 * 3),  # a step shorter than a row
        ("rgb8", 16385, 2, 16385 * 3, 16385 * 3 * 2),  # wider than H.264 allows
        ("bgr8", 640, 480, 640 * 3, 1000),  # far less data than declared
    ]
    for encoding, width, height, step, size in itertools.cycle(cases):
        msg = Image(encoding=encoding, width=width, height=height, step=step)
        msg.data = to_uint8_field(bytes(size))
        yield msg


class RogueNode(Node):
    def __init__(self) -> None:
        super().__init__("stac_rogue")
        self.params = declare_parameters(self, PARAMETERS)
        width, height = self.params["width"], self.params["height"]
        self.sent = {"encoded": 0, "qp_map": 0, "image": 0}
        self._streams = {
            "encoded": (self.create_publisher(EncodedFrame, "encoded", ENCODED_QOS),
                        _encoded_frames(width, height)),
            "qp_map": (self.create_publisher(QPMap, "qp_map", QP_MAP_QOS),
                       _qp_maps(width, height)),
            "image": (self.create_publisher(Image, "image", RELIABLE_CAMERA_QOS), _images()),
        }  # fmt: skip
        self._timer = self.create_timer(1.0 / self.params["rate_hz"], self._send)
        self._timer.cancel()  # started once every topic has a subscriber

    def wait_for_subscribers(self, timeout_s: float) -> None:
        """Send nothing until each topic has all its subscribers (a message sent before DDS
        has matched a reader is never delivered to it, and would be counted as sent)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            publisher.get_subscription_count() < self.params[f"{kind}_subscribers"]
            for kind, (publisher, _) in self._streams.items()
        ):
            rclpy.spin_once(self, timeout_sec=0.05)
        self._timer.reset()

    def flush(self) -> None:
        """Wait until the subscribers have what was sent, so `sent` is what they received."""
        for publisher, _ in self._streams.values():
            publisher.wait_for_all_acked(Duration(seconds=2))

    def _send(self) -> None:
        for kind, (publisher, messages) in self._streams.items():
            msg = next(messages)
            msg.header.stamp = self.get_clock().now().to_msg()
            publisher.publish(msg)
            self.sent[kind] += 1


def main(args: list[str] | None = None) -> None:
    enable_stack_dumps()
    rclpy.init(args=args)
    node = None
    try:
        node = RogueNode()
        node.wait_for_subscribers(timeout_s=30.0)
        deadline = time.monotonic() + node.params["duration_s"]
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        node.flush()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            counts = " ".join(f"{kind}={count}" for kind, count in node.sent.items())
            print(f"rogue sent: {counts}", flush=True)
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
