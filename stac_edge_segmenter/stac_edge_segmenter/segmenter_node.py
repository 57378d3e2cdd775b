"""`segmenter_node` (edge): H.264 from the robot in, class-id masks and overlays out.

Topics:
  encoded  stac_msgs/EncodedFrame  in
  mask     sensor_msgs/Image mono8 out  class id per pixel, header = the camera frame's
  overlay  sensor_msgs/Image rgb8  out  mask colours over the decoded frame, for rviz

Every access unit is decoded in the subscription callback (P-frames need their references);
inference runs in a worker thread on the newest decoded frame only. A decoded frame that a
newer one replaces before inference reaches it is counted as skipped: no backlog builds up
when the model is slower than the camera. In the edge container a `SegmentationHook` (the
sensitivity node) shares the decoder and the model: frames it wants get its pass instead of
a plain forward, and their mask comes from that pass.
"""

from __future__ import annotations

import time

from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image

from stac_edge_segmenter.edge_decoding import DecodedFrame, EncodedStreamDecoder
from stac_edge_segmenter.model_parameters import MODEL_PARAMETERS, load_model_from
from stac_edge_segmenter.overlay import mask_overlay
from stac_edge_segmenter.segmentation_hook import SegmentationHook
from stac_msgs.msg import EncodedFrame
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.newest_item_worker import NewestItemWorker
from stac_ros_common.node_runner import StatisticsReporter, run_node, stamp_to_s
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS, OUTPUT_QOS
from stac_ros_common.statistics import NodeStatistics
from stac_ros_common.wire_size import serialized_size_bytes

PARAMETERS = (
    *MODEL_PARAMETERS,
    ParameterSpec("overlay_alpha", 0.5, "Weight of the class colours in the overlay.", 0.0, 1.0),
    ParameterSpec("publish_overlay", True, "Publish the colour overlay (costs ~2 ms/frame)."),
)


class SegmenterNode(Node):
    def __init__(self, hook: SegmentationHook | None = None, **node_options) -> None:
        super().__init__("stac_segmenter", **node_options)
        self.params = declare_parameters(self, PARAMETERS)
        self.model = load_model_from(self.params)
        self.hook = hook
        self.statistics = NodeStatistics()
        self._decoder = EncodedStreamDecoder()
        self._mask_publisher = self.create_publisher(Image, "mask", OUTPUT_QOS)
        self._overlay_publisher = self.create_publisher(Image, "overlay", OUTPUT_QOS)
        self.create_subscription(EncodedFrame, "encoded", self._on_encoded, ENCODED_QOS)
        self._reporter = StatisticsReporter(self, self.statistics, role="edge")
        self._worker: NewestItemWorker[DecodedFrame] = NewestItemWorker(
            self._segment, self._on_segment_error, name="segmenter"
        )
        self.get_logger().info(
            f"model {self.model.spec.name!r} ({self.model.num_classes} classes) on "
            f"{self.model.device}"
        )

    def _on_encoded(self, msg: EncodedFrame) -> None:
        self.statistics.count("frames_in")
        self.statistics.add_uplink(time.monotonic(), serialized_size_bytes(msg))
        result = self._decoder.decode(msg.data, msg.frame_seq, msg.width, msg.height)
        if not result.ok:
            self.statistics.count("frames_failed")
            self.get_logger().warning(
                f"frame {msg.frame_seq} not decoded ({result.status.value}): {result.detail}",
                throttle_duration_sec=1.0,
            )
            return
        frame = DecodedFrame(msg.header, msg.frame_seq, result.image)
        if self.hook is not None:
            self.hook.frame_decoded(frame)
        self.statistics.count("frames_pending")
        displaced = self._worker.submit(frame)
        if displaced is not None:
            self.statistics.count("frames_pending", -1)
            self.statistics.count("frames_skipped")

    def _on_segment_error(self, frame: DecodedFrame, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self.get_logger().error(f"frame {frame.frame_seq} not segmented: {error}")

    def _segment(self, frame: DecodedFrame) -> None:
        try:
            self._segment_and_publish(frame)
        finally:
            self.statistics.count("frames_pending", -1)

    def _segment_and_publish(self, frame: DecodedFrame) -> None:
        if self.hook is not None and self.hook.wants(frame):
            class_ids = self.hook.segment(frame)
        else:
            class_ids = self.model.predict(frame.image, with_probabilities=False).class_ids[0]
        self._mask_publisher.publish(numpy_to_image(class_ids, "mono8", frame.header))
        if self.params["publish_overlay"]:
            overlay = mask_overlay(
                frame.image, class_ids, self.model.palette, self.params["overlay_alpha"]
            )
            self._overlay_publisher.publish(numpy_to_image(overlay, "rgb8", frame.header))
        self.statistics.count("frames_segmented")
        now_s = self.get_clock().now().nanoseconds * 1e-9
        self.statistics.add_latency(
            time.monotonic(), 1e3 * (now_s - stamp_to_s(frame.header.stamp))
        )

    def close(self) -> None:
        """Stop the worker after the frame in hand; a frame still waiting stays pending."""
        self._worker.close()
        if self.context.ok():  # after SIGTERM rclpy has already shut the context down
            self._mask_publisher.wait_for_all_acked(Duration(seconds=2))


def main(args: list[str] | None = None) -> None:
    run_node(SegmenterNode, args)


if __name__ == "__main__":
    main()
