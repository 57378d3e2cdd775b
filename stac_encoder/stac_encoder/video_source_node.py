"""`video_source_node`: publishes sensor_msgs/Image from a video file, a camera or a rosbag2.

A camera stand-in for replay and demos (like image_tools' cam2image). Pacing:
- `recorded`: at the rate the frames were recorded (file fps, bag timestamps);
- `fixed`: at `rate_hz`;
- `consumed`: the next frame as soon as the encoder has published the previous one (it waits
  for the EncodedFrame carrying the same stamp on `encoded`, at most `consumed_timeout_s`),
  so a replay runs as fast as the robot side can go and loses nothing.
The header stamp is the publish time (the capture time of a live camera). With
`exit_at_end` the node exits once the last frame is acknowledged, like `ros2 bag play`.
"""

from __future__ import annotations

import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image

from stac_encoder.frame_sources import SourceError, SourceStats, read_frames
from stac_msgs.msg import EncodedFrame
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.node_runner import enable_stack_dumps
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS, camera_qos

# Every topic of the node, by the name it creates (remap as needed).
ENDPOINTS = {
    "image": "The frames (rgb8), stamped with the publish time; QoS set by camera_qos.",
    "encoded": "Pace 'consumed' only: the encoder's output, to know when a frame was taken.",
}

PARAMETERS = (
    ParameterSpec(
        "uri",
        "",
        "Video file, rosbag2 (directory, .mcap or .db3) or camera ('camera:0', '/dev/video0').",
    ),
    ParameterSpec("bag_topic", "", "Image topic to read from a bag; empty = the first one."),
    ParameterSpec(
        "pace", "recorded", "How fast to publish.", choices=("recorded", "fixed", "consumed")
    ),
    ParameterSpec("rate_hz", 10.0, "Publish rate for pace 'fixed', in Hz.", 0.1, 1000.0),
    ParameterSpec(
        "consumed_timeout_s",
        5.0,
        "Pace 'consumed': longest wait for the encoder before the next frame, in seconds.",
        0.1,
        600.0,
    ),
    ParameterSpec("max_frames", 0, "Stop after this many frames; 0 = all.", 0, 10_000_000),
    ParameterSpec("loop", False, "Start over at the end of a file or bag."),
    ParameterSpec(
        "duration_s",
        0.0,
        "Stop publishing after this many seconds (with loop: a stream of that length); 0 = "
        "no limit.",
        0.0,
        1e7,
    ),
    ParameterSpec("exit_at_end", True, "Exit once the last frame is published and acknowledged."),
    ParameterSpec("frame_id", "camera", "frame_id written into every image header."),
    ParameterSpec(
        "camera_qos", "reliable", "QoS of the image topic.", choices=("sensor_data", "reliable")
    ),
    ParameterSpec(
        "wait_for_subscriber_s",
        10.0,
        "Wait up to this long for a subscriber before the first frame, in seconds.",
        0.0,
        600.0,
    ),
    ParameterSpec(
        "min_subscribers",
        1,
        "How many subscribers of the image topic to wait for (e.g. the robot and a recorder "
        "that must see every frame), at most wait_for_subscriber_s.",
        1,
        1000,
    ),
)


class VideoSourceNode(Node):
    def __init__(self) -> None:
        super().__init__("video_source")
        self.params = declare_parameters(self, PARAMETERS)
        if not self.params["uri"]:
            raise ValueError("parameter 'uri' is required (a video file, bag or camera)")
        self._publisher = self.create_publisher(
            Image, "image", camera_qos(self.params["camera_qos"])
        )
        self._consumed_stamps: set[tuple[int, int]] = set()
        if self.params["pace"] == "consumed":
            self.create_subscription(EncodedFrame, "encoded", self._on_encoded, ENCODED_QOS)
        self.published = 0
        self._started = time.monotonic()

    def _on_encoded(self, msg: EncodedFrame) -> None:
        if self.params["pace"] == "consumed":
            self._consumed_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def _spin_until(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            rclpy.spin_once(self, timeout_sec=min(remaining, 0.05))
        return True

    def _wait_until(self, due_s: float) -> None:
        while (remaining := due_s - time.monotonic()) > 0:
            rclpy.spin_once(self, timeout_sec=min(remaining, 0.05))

    def play(self) -> None:
        """Publish every frame at the chosen pace (repeating with `loop`)."""
        self._spin_until(
            lambda: self._publisher.get_subscription_count() >= self.params["min_subscribers"],
            self.params["wait_for_subscriber_s"],
        )
        self._started = time.monotonic()
        while not self._time_is_up():
            self._play_once()
            if not self.params["loop"]:
                break
        self._publisher.wait_for_all_acked(Duration(seconds=5))
        self.get_logger().info(f"published {self.published} frames from {self.params['uri']}")

    def _play_once(self) -> None:
        pace, start = self.params["pace"], time.monotonic()
        stats = SourceStats()
        try:
            self._publish_frames(pace, start, stats)
        finally:
            for reason, count in stats.skip_reasons.items():
                self.get_logger().warning(f"skipped {count} messages of the source: {reason}")

    def _time_is_up(self) -> bool:
        duration_s = self.params["duration_s"]
        return bool(duration_s) and time.monotonic() - self._started >= duration_s

    def _publish_frames(self, pace: str, start: float, stats: SourceStats) -> None:
        for frame in read_frames(
            self.params["uri"], self.params["bag_topic"], self.params["max_frames"], stats
        ):
            if self._time_is_up():
                return
            if pace == "recorded":
                self._wait_until(start + frame.offset_s)
            elif pace == "fixed":
                self._wait_until(start + frame.index / self.params["rate_hz"])
            msg = numpy_to_image(frame.image, "rgb8")
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.params["frame_id"]
            self._publisher.publish(msg)
            self.published += 1
            if pace == "consumed":
                self._await_consumed(msg, frame.index)

    def _await_consumed(self, msg: Image, index: int) -> None:
        """Wait until the encoder has published this frame (at most consumed_timeout_s), then
        forget its stamp and every older one, so late arrivals of timed-out frames cannot
        pile up."""
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if not self._spin_until(
            lambda: key in self._consumed_stamps, self.params["consumed_timeout_s"]
        ):
            self.get_logger().warning(f"frame {index} not consumed in time")
        self._consumed_stamps = {k for k in self._consumed_stamps if k > key}


def main(args: list[str] | None = None) -> None:
    enable_stack_dumps()
    rclpy.init(args=args)
    node = None
    try:
        node = VideoSourceNode()
        node.play()
        if not node.params["exit_at_end"]:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (SourceError, ValueError) as error:
        print(f"video_source: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
