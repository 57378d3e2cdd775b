"""`segmenter_node` (edge): H.264 from the robot in, class-id masks and overlays out.

Its topics, its keyframe-request client and the service it calls are in ENDPOINTS below
(docs/reference.md lists them with types and QoS, read from the running node). After a lost
or damaged access unit, or on joining a running stream, the segmenter asks the robot for a
keyframe (at most every `keyframe_request_interval_s`) instead of waiting for the next GOP;
the time from such an outage to the next mask is reported as recovery_ms_max.

Every access unit is decoded in the subscription callback (P-frames need their references);
inference runs in a worker thread on the newest decoded frame only. A decoded frame that a
newer one replaces before inference reaches it is counted as skipped: no backlog builds up
when the model is slower than the camera. The forward runs on the inference engine the
`engine` parameter names (stac_edge_segmenter.engines; ONNX Runtime by default). In the edge
container a `SegmentationHook` (the sensitivity node) gets every decoded frame and its map
passes run in a worker of their own, so segmentation never waits for one. There the worker
is the container's (one per edge, batching the newest frame of every robot into one forward
on the container's engine) and the model is given: the container runs one segmenter node
per robot, all on one model.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Empty
from std_srvs.srv import Trigger

from stac_codec.h264_decoder import DecodeResult, DecodeStatus
from stac_codec.mask_wire import (
    DEFAULT_MASK_CODING,
    KEY_INTERVAL,
    MASK_CODINGS,
    MaskSender,
    mask_coding,
)
from stac_codec.overlay import mask_overlay
from stac_edge_segmenter.edge_decoding import DecodedFrame, EncodedStreamDecoder
from stac_edge_segmenter.loading import SegmentationModel
from stac_edge_segmenter.model_parameters import (
    ENGINE_PARAMETERS,
    MODEL_PARAMETERS,
    engine_from,
    load_model_from,
)
from stac_edge_segmenter.resync import ResyncTracker
from stac_edge_segmenter.segmentation_hook import SegmentationHook
from stac_msgs.msg import EncodedFrame, SegmentationMask
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.image_pixels import to_uint8_field
from stac_ros_common.newest_item_worker import NewestItemWorker
from stac_ros_common.node_runner import StatisticsReporter, run_node, stamp_to_s
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import (
    ENCODED_QOS,
    ENCODED_QOS_KINDS,
    KEY_MASK_REQUEST_QOS,
    MASK_FEEDBACK_QOS,
    OUTPUT_QOS,
    encoded_qos,
)
from stac_ros_common.rejections import RejectionLog
from stac_ros_common.statistics import NodeStatistics
from stac_ros_common.wire_size import serialized_size_bytes

try:  # optional: the live video for Foxglove (ros-jazzy-foxglove-msgs)
    from foxglove_msgs.msg import CompressedVideo
except ImportError:
    CompressedVideo = None

# Every topic and service client of the node, by the name it creates (remap as needed).
ENDPOINTS = {
    "encoded": "The robot's H.264 access units; every one is decoded (QoS set by encoded_qos).",
    "mask": "Class id per pixel (mono8), header = the camera frame's.",
    "overlay": "Mask colours over the decoded frame (rgb8), for viewers (publish_overlay).",
    "mask_feedback": "The same mask for the robot in the stac_codec.mask_wire form mask_coding "
    "picks (about 1 kB at 960x540), which the robot warps to every camera frame; with "
    "near_lossless_gated a 15-byte keep instead where the mask barely changed.",
    "key_mask_request": "The robot asks for a key mask (its next mask coded alone) after "
    "refusing one coded against a mask it never got; remap to the robot's.",
    "request_keyframe": "Client: asks the robot for a keyframe after a loss or on joining; "
    "remap to the encoder's ~/request_keyframe.",
    "video": "Every access unit the edge decoded, unchanged, as Foxglove's CompressedVideo "
    "(capture stamp, format h264), so foxglove_bridge shows the robot's stream live; only "
    "where foxglove_msgs is installed.",
}

PARAMETERS = (
    *MODEL_PARAMETERS,
    *ENGINE_PARAMETERS,
    ParameterSpec("overlay_alpha", 0.5, "Weight of the class colours in the overlay.", 0.0, 1.0),
    ParameterSpec("publish_overlay", True, "Publish the colour overlay (costs ~2 ms/frame)."),
    ParameterSpec(
        "publish_mask_feedback",
        True,
        "Send every mask back to the robot (mask_feedback, compact wire form), which warps "
        "it to every camera frame.",
    ),
    ParameterSpec(
        "mask_coding",
        DEFAULT_MASK_CODING,
        "How masks travel back to the robot (stac_codec.mask_wire; bytes and accuracy of each: "
        "docs/masks.md): near_lossless_ref (boundaries between large classes may move 1 px, "
        "small classes exact; numbered, each mask coded with the last one sent as context "
        "where that is smaller; a robot that missed a mask refuses the next ones until a key "
        "mask), near_lossless (the same, each mask alone), near_lossless_keyref (with the "
        "last key mask as context: a missed mask costs no other unless it was a key), "
        "near_lossless_gated (a keep message instead of a mask that barely changed since the "
        "last one sent: fewer bits, staler robot masks), lossless, reduced (half resolution, "
        "upsampled by the robot) or rle_deflate (the earlier run-length form).",
        choices=tuple(MASK_CODINGS),
    ),
    ParameterSpec(
        "mask_key_interval",
        KEY_INTERVAL,
        "near_lossless_ref and near_lossless_keyref: every this many masks one is coded alone "
        "(a key mask, which a robot that missed a mask recovers from; so is the first after a "
        "keyframe request).",
        min_value=1,
        max_value=1000,
    ),
    ParameterSpec(
        "encoded_qos",
        "reliable",
        "QoS of the encoded-stream subscription: reliable (DDS retransmits losses) or "
        "best_effort (a loss is a lost frame, healed by a keyframe request).",
        choices=ENCODED_QOS_KINDS,
    ),
    ParameterSpec(
        "keyframe_request_interval_s",
        0.5,
        "Ask the robot for a keyframe at most this often while the stream cannot be decoded, s.",
        0.01,
        60.0,
    ),
)


def decode_failure_kind(result: DecodeResult) -> str:
    """A short, number-free name for why a unit was not decoded (one log line per name):
    the status, and the first words of the decoder's reason."""
    reason = result.detail.split(":", 1)[0]
    words = "_".join(word for word in reason.split()[:3] if not any(c.isdigit() for c in word))
    return f"decode/{result.status.value}/{words or 'unknown'}"


class FrameWorker(Protocol):
    """Where decoded frames go for inference: submit returns the waiting frame a newer one
    displaced (counted as skipped); close returns the frame left waiting."""

    def submit(self, frame: DecodedFrame) -> DecodedFrame | None: ...

    def close(self) -> DecodedFrame | None: ...


class SegmenterNode(Node):
    """On its own: loads the model named by its parameters and runs its own worker. In the
    edge container: `model` and `worker` are the container's, which calls `finish_frame`
    with each frame's class ids."""

    def __init__(
        self,
        hook: SegmentationHook | None = None,
        model: SegmentationModel | None = None,
        worker: FrameWorker | None = None,
        **node_options,
    ) -> None:
        super().__init__("stac_segmenter", **node_options)
        self.params = declare_parameters(self, PARAMETERS)
        self.model = load_model_from(self.params) if model is None else model
        self._mask_sender = MaskSender(
            mask_coding(self.params["mask_coding"], key_interval=self.params["mask_key_interval"])
        )
        # In the edge container the container's worker runs the forward, on its own engine.
        self.engine = None
        if worker is None:
            self.engine = engine_from(self.params, self.model, self.get_logger().warning)
        self.hook = hook
        self.statistics = NodeStatistics()
        self._decoder = EncodedStreamDecoder()
        self._mask_publisher = self.create_publisher(Image, "mask", OUTPUT_QOS)
        self._overlay_publisher = self.create_publisher(Image, "overlay", OUTPUT_QOS)
        self._feedback_publisher = self.create_publisher(
            SegmentationMask, "mask_feedback", MASK_FEEDBACK_QOS
        )
        encoded = self.create_subscription(
            EncodedFrame, "encoded", self._on_encoded, encoded_qos(self.params["encoded_qos"])
        )
        self._keyframe_client = self.create_client(Trigger, "request_keyframe")
        self.create_subscription(
            Empty, "key_mask_request", self._on_key_mask_request, KEY_MASK_REQUEST_QOS
        )
        self._video_publisher = None
        if CompressedVideo is None:
            self.get_logger().info(
                "foxglove_msgs is not installed: no live video on 'video' (install "
                "ros-jazzy-foxglove-msgs to watch the robot's stream in Foxglove)"
            )
        else:
            self._video_publisher = self.create_publisher(CompressedVideo, "video", ENCODED_QOS)
        self._resync = ResyncTracker(self.params["keyframe_request_interval_s"])
        self._resync_lock = threading.Lock()
        self._rejections = RejectionLog(self.get_logger().warning)
        self._reporter = StatisticsReporter(
            self,
            self.statistics,
            role="edge",
            link_channels=(
                encoded.get_publisher_count,
                lambda: int(self._keyframe_client.service_is_ready()),
            ),
        )
        self._worker: FrameWorker = worker or NewestItemWorker(
            self._segment, self._on_segment_error, name="segmenter"
        )
        engine = self.engine.name if self.engine else "the edge container's"
        self.get_logger().info(
            f"model {self.model.spec.name!r} ({self.model.num_classes} classes) on "
            f"{self.model.device}, engine {engine}"
        )

    def _on_encoded(self, msg: EncodedFrame) -> None:
        self.statistics.count("frames_in")
        self.statistics.add_uplink(time.monotonic(), serialized_size_bytes(msg))
        try:
            result = self._decoder.decode(msg.data, msg.frame_seq, msg.width, msg.height)
        except ValueError as error:  # the decoder's contract says never; a node must not die
            result = DecodeResult(DecodeStatus.CORRUPT, None, msg.frame_seq, False, str(error))
        with self._resync_lock:
            self.statistics.count("frames_lost", self._resync.on_frame(result))
            request = self._resync.should_request(result, time.monotonic())
        if request:
            self._request_keyframe()
        if not result.ok:
            self.statistics.count("frames_failed")
            self._rejections.reject(
                decode_failure_kind(result),
                f"frame {msg.frame_seq} not decoded ({result.status.value}): {result.detail}",
            )
            return
        self._republish_video(msg)
        frame = DecodedFrame(msg.header, msg.frame_seq, result.image, self._decoder.reference_image)
        if self.hook is not None:
            self.hook.frame_decoded(frame)
        self.statistics.count("frames_pending")
        displaced = self._worker.submit(frame)
        if displaced is not None:
            self.statistics.count("frames_pending", -1)
            self.statistics.count("frames_skipped")

    def _republish_video(self, msg: EncodedFrame) -> None:
        """The access unit, unchanged, as CompressedVideo on `video` (when foxglove_msgs is
        installed). Only units the decoder accepted go out: a viewer cannot play what the edge
        refused (damaged, forged, or waiting for a keyframe)."""
        if self._video_publisher is None:
            return
        video = CompressedVideo(
            timestamp=msg.header.stamp, frame_id=msg.header.frame_id, format=msg.codec
        )
        video.data = msg.data
        self._video_publisher.publish(video)

    def _on_segment_error(self, frame: DecodedFrame, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self.get_logger().error(f"frame {frame.frame_seq} not segmented: {error}")

    def _segment(self, frame: DecodedFrame) -> None:
        try:
            class_ids = self.engine.segment_batch(frame.image[None])[0]
        except Exception as error:
            self.finish_frame(frame, error=error)
            return
        self.finish_frame(frame, class_ids)

    def finish_frame(
        self,
        frame: DecodedFrame,
        class_ids: np.ndarray | None = None,
        error: Exception | None = None,
    ) -> None:
        """Publish a frame's mask from its class ids, or count it as failed (`error`, or a
        failure to publish); either way the frame is no longer pending. Never raises: the
        worker (this node's, or the container's for every robot) goes on."""
        try:
            if error is None:
                self._publish_segmentation(frame, class_ids)
        except Exception as publish_error:  # noqa: BLE001 - counted and logged below
            error = publish_error
        finally:
            self.statistics.count("frames_pending", -1)
        if error is not None:
            self._on_segment_error(frame, error)

    def _publish_segmentation(self, frame: DecodedFrame, class_ids: np.ndarray) -> None:
        self._mask_publisher.publish(numpy_to_image(class_ids, "mono8", frame.header))
        if self.params["publish_mask_feedback"]:
            feedback = mask_feedback_message(
                class_ids, frame, self.model.num_classes, self._mask_sender
            )
            self._feedback_publisher.publish(feedback)
            self.statistics.add_mask_feedback(time.monotonic(), serialized_size_bytes(feedback))
        if self.params["publish_overlay"]:
            overlay = mask_overlay(
                frame.image, class_ids, self.model.palette, self.params["overlay_alpha"]
            )
            self._overlay_publisher.publish(numpy_to_image(overlay, "rgb8", frame.header))
        self.statistics.count("frames_segmented")
        with self._resync_lock:
            recovery_s = self._resync.on_mask(frame.frame_seq, time.monotonic())
        if recovery_s is not None:
            self.statistics.add_recovery(1e3 * recovery_s)
            self.get_logger().info(f"stream recovered: a mask {1e3 * recovery_s:.0f} ms after")
        now_s = self.get_clock().now().nanoseconds * 1e-9
        self.statistics.add_latency(
            time.monotonic(), 1e3 * (now_s - stamp_to_s(frame.header.stamp))
        )

    def _request_keyframe(self) -> None:
        """Ask the robot for an IDR picture; fire and forget (the answer is the keyframe). One
        that cannot go out yet (an edge that just joined, before DDS matched the robot's
        service) is not counted and does not hold the next one back."""
        self._mask_sender.reset()  # a robot that lost frames may have lost a mask: send one
        if not self._keyframe_client.service_is_ready():
            with self._resync_lock:
                self._resync.request_not_sent()
            self._rejections.reject(
                "keyframe_request/no_service",
                "cannot ask for a keyframe: the robot's request_keyframe service is not there",
            )
            return
        self.statistics.count("keyframe_requests")
        self._keyframe_client.call_async(Trigger.Request())

    def _on_key_mask_request(self, msg: Empty) -> None:
        """The robot refused a mask coded against one it never got: the next mask goes alone
        (recovery within a mask instead of at the next key, every mask_key_interval)."""
        self._mask_sender.reset()
        self.statistics.count("key_mask_requests")

    def close(self) -> None:
        """Stop the worker after the frame in hand; a frame still waiting stays pending."""
        self._worker.close()
        if self.context.ok():  # after SIGTERM rclpy has already shut the context down
            self._mask_publisher.wait_for_all_acked(Duration(seconds=2))


def mask_feedback_message(
    class_ids, frame: DecodedFrame, num_classes: int, sender: MaskSender
) -> SegmentationMask:
    """The SegmentationMask of a frame's class ids, as it goes back to the robot (the mask in
    the sender's coding, or a keep where a gated coding holds it back)."""
    coding = sender.coding
    msg = SegmentationMask(
        header=frame.header,
        source_frame_seq=frame.frame_seq,
        width=int(class_ids.shape[1]),
        height=int(class_ids.shape[0]),
        encoding=coding.encoding,
        num_classes=int(num_classes),
    )
    msg.data = to_uint8_field(sender.encode(class_ids))
    return msg


def main(args: list[str] | None = None) -> None:
    run_node(SegmenterNode, args)


if __name__ == "__main__":
    main()
