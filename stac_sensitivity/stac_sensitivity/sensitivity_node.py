"""`sensitivity_node` (edge): decoded frames in, QP maps back to the robot.

Its topics and its service are in ENDPOINTS below (docs/reference.md lists them with
types and QoS, read from the running node).

Which decoded frames get a map is `stac_sensitivity.map_pacing` (every `period_frames` frames
and `min_map_interval_s` of camera time, at most `max_compute_share` of the map worker's time,
one pass at a time). The sensitivity pass (forward + backward on torch, ~0.1-0.5 s on a CPU)
never runs in the segmenter's worker, so the forward on the newest frame never waits for it.
On its own the node decodes the stream itself, loads its own model and runs its passes in a
worker thread of its own. In the edge container it is the segmenter's `SegmentationHook`
instead (no decoder, no subscription, the container's model, every frame the segmenter
decodes), and the container's one map worker runs its passes (`wants`, `map_pass`), the
robots' maps one at a time (stac_sensitivity.fleet_scheduler.MapGate).

Maps go out through `stac_sensitivity.feedback.FeedbackEncoder` (hysteresis, key maps and
deltas); feedback statistics count the serialized QPMap messages.
"""

from __future__ import annotations

import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from stac_edge_segmenter.edge_decoding import DecodedFrame, EncodedStreamDecoder
from stac_edge_segmenter.loading import SegmentationModel
from stac_edge_segmenter.model_parameters import MODEL_PARAMETERS, load_model_from
from stac_msgs.msg import EncodedFrame, QPMap
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.image_pixels import to_uint8_field
from stac_ros_common.newest_item_worker import NewestItemWorker
from stac_ros_common.node_runner import StatisticsReporter, run_node, stamp_to_s
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS_KINDS, OUTPUT_QOS, QP_MAP_QOS, encoded_qos
from stac_ros_common.statistics import NodeStatistics
from stac_ros_common.wire_size import serialized_size_bytes
from stac_sensitivity.feedback import FeedbackConfig, FeedbackEncoder, FeedbackMap
from stac_sensitivity.map_pacing import MAP_WORKER_NICE, MapPacer, MapPacingConfig
from stac_sensitivity.online import MAX_BLOCK_MB, QPMapComputer, qp_heatmap

# Every topic and service of the node, by the name it creates (remap as needed).
ENDPOINTS = {
    "encoded": "The robot's stream, decoded here (standalone only: in the edge container the "
    "segmenter decodes for both).",
    "qp_map": "QP maps to the robot's encoder (compact wire form: key maps and deltas).",
    "qp_heatmap": "The frame with its map blended on top (rgb8), for viewers (publish_heatmap).",
    "~/compute_now": "Compute a map on the next decoded frame.",
}

# Declared by the sensitivity node and by the edge container (which runs the map worker).
MAP_WORKER_NICE_PARAMETER = ParameterSpec(
    "map_worker_nice",
    MAP_WORKER_NICE,
    "How much nicer than the edge's other threads the map worker thread runs (0-19, added "
    "to the process's own nice, at most 19): segmentation goes first, the sensitivity "
    "pass takes what the segmenter leaves of the cores (19: about 1 % of a core the "
    "segmenter keeps busy, 10: about a tenth; 0: an equal share, which slows every forward "
    "that overlaps a pass by about half: stac-bench keyframe measured the robot's masks "
    "older).",
    0,
    19,
)

PARAMETERS = (
    *MODEL_PARAMETERS,
    ParameterSpec(
        "calibration_file",
        "",
        "Offline calibration JSON; empty = the one beside the model weights (or defaults).",
    ),
    ParameterSpec(
        "period_frames", 5, "Compute a map every N decoded frames; 0 = on request only.", 0, 10_000
    ),
    ParameterSpec(
        "min_map_interval_s",
        1.0,
        "At least this much camera time between the source frames of two maps, s (0 = no "
        "limit): a map stays useful for about a second, and each one costs feedback bits.",
        0.0,
        3600.0,
    ),
    ParameterSpec(
        "budget_shift_qp",
        0,
        "Uniform QP shift added to every map (+ = fewer bits, - = more).",
        -51,
        51,
    ),
    ParameterSpec(
        "map_aq_strength",
        0.5,
        "x264 AQ strength every map asks the robot to encode with (0 = the calibration's; "
        "1.0 = the map's offsets on top of x264's variance AQ).",
        0.0,
        3.0,
    ),
    ParameterSpec(
        "map_block_mb",
        1,
        "The map's cell, macroblocks a side: sensitivity (and rate term) averaged over NxN "
        "macroblocks; 1 = per macroblock; 0 = auto, what one pixel of the model's working "
        "resolution covers.",
        0,
        MAX_BLOCK_MB,
    ),
    ParameterSpec(
        "map_block_pool_energy",
        True,
        "With map_block_mb != 1: pool the rate term (each macroblock's residual energy) over "
        "the cell too; false = only the sensitivity, the rate term stays per macroblock.",
    ),
    ParameterSpec(
        "hysteresis_levels",
        1,
        "A macroblock keeps its level from the previous map unless the new one differs by "
        "more than this many levels (0 = off); stops noise from costing feedback bits.",
        0,
        255,
    ),
    ParameterSpec(
        "key_map_interval", 10, "At most this many maps between key (non-delta) maps.", 1, 10_000
    ),
    ParameterSpec(
        "max_compute_share",
        0.5,
        "The largest share of the map worker's time the sensitivity pass may take (after a "
        "pass of d s the next waits d * (1 - share) / share): the map worker shares the "
        "cores with the segmenter's.",
        0.05,
        1.0,
    ),
    MAP_WORKER_NICE_PARAMETER,
    ParameterSpec("publish_heatmap", True, "Publish the QP-map heatmap image for rviz."),
    ParameterSpec(
        "encoded_qos",
        "reliable",
        "QoS of the encoded-stream subscription: reliable (DDS retransmits losses) or "
        "best_effort (a loss is a lost frame, healed by a keyframe request).",
        choices=ENCODED_QOS_KINDS,
    ),
)


class SensitivityNode(Node):
    """Standalone with `model=None` (own model and decoder); the segmenter's hook when given
    the shared model (the edge container)."""

    def __init__(self, model: SegmentationModel | None = None, **node_options) -> None:
        super().__init__("stac_sensitivity", **node_options)
        self.params = declare_parameters(self, PARAMETERS)
        self.standalone = model is None
        self.computer = QPMapComputer(
            load_model_from(self.params) if model is None else model,
            self.params["calibration_file"] or None,
            self.params["budget_shift_qp"],
            self.params["map_block_mb"],
            self.params["map_block_pool_energy"],
        )
        self.feedback = FeedbackEncoder(
            FeedbackConfig(self.params["hysteresis_levels"], self.params["key_map_interval"])
        )
        self.statistics = NodeStatistics()
        self._lock = threading.Lock()  # guards the pacer (decoding thread and worker)
        self._pacer = MapPacer(
            MapPacingConfig(
                self.params["period_frames"],
                self.params["min_map_interval_s"],
                self.params["max_compute_share"],
            )
        )
        self._map_publisher = self.create_publisher(QPMap, "qp_map", QP_MAP_QOS)
        self._heatmap_publisher = self.create_publisher(Image, "qp_heatmap", OUTPUT_QOS)
        self.create_service(Trigger, "~/compute_now", self._on_compute_now)
        self._worker: NewestItemWorker[DecodedFrame] | None = None
        link_channel = self._map_publisher.get_subscription_count
        if self.standalone:
            self._worker = NewestItemWorker(
                self.map_pass, self._on_map_error, "sensitivity", self.params["map_worker_nice"]
            )
            self._decoder = EncodedStreamDecoder()
            encoded = self.create_subscription(
                EncodedFrame, "encoded", self._on_encoded, encoded_qos(self.params["encoded_qos"])
            )
            link_channel = encoded.get_publisher_count
        self._reporter = StatisticsReporter(
            self, self.statistics, role="edge", link_channels=(link_channel,)
        )
        source = self.computer.calibration_path or "built-in defaults"
        self.get_logger().info(
            f"calibration: {source}; levels {self.computer.levels_qp}, "
            f"period {self.params['period_frames']} frames, "
            f"{'standalone' if self.standalone else 'sharing the segmenter'}"
        )

    def frame_decoded(self, frame: DecodedFrame) -> None:
        """Every decoded frame: counted towards the next map (a robot restart asks for a key
        map); standalone, a due frame goes to this node's map worker."""
        self.statistics.count("frames_in")
        with self._lock:
            if self._pacer.frame_decoded(frame.frame_seq):
                self.feedback.request_key()  # the robot's numbering started again
        standalone_due = self._worker is not None and self.wants(frame)
        if standalone_due and self._worker.submit(frame) is not None:  # not started yet
            self.statistics.count("frames_skipped")

    def wants(self, frame: DecodedFrame) -> bool:
        """Whether `frame` is due for a map now (map_pacing's rule)."""
        with self._lock:
            return self._pacer.wants(stamp_to_s(frame.header.stamp), time.monotonic())

    def map_pass(self, frame: DecodedFrame) -> None:
        """The sensitivity pass on `frame`: its map published (a failure is counted and
        logged, never raised), the pacing told when it ran. While it runs, the frame counts
        as pending in this node's statistics: a map still on its way is work not yet done."""
        with self._lock:
            self._pacer.map_started(stamp_to_s(frame.header.stamp))
        self.statistics.count("frames_pending")
        started = time.monotonic()
        try:
            self._compute_and_publish(frame)
        except Exception as error:  # noqa: BLE001 - one failed map must not stop the worker
            self._on_map_error(frame, error)
        finally:
            self.statistics.count("frames_pending", -1)
            with self._lock:
                self._pacer.map_finished(started, time.monotonic())

    def _on_encoded(self, msg: EncodedFrame) -> None:
        result = self._decoder.decode(msg.data, msg.frame_seq, msg.width, msg.height)
        if not result.ok:
            self.statistics.count("frames_in")
            self.statistics.count("frames_failed")
            return
        self.frame_decoded(
            DecodedFrame(msg.header, msg.frame_seq, result.image, self._decoder.reference_image)
        )

    def _on_map_error(self, frame: DecodedFrame, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self.get_logger().error(f"no map for frame {frame.frame_seq}: {error}")

    # Both ---------------------------------------------------------------------------------

    def _on_compute_now(self, request: Trigger.Request, response: Trigger.Response):
        with self._lock:
            self._pacer.request()
        response.success, response.message = True, "a map will be computed on the next frame"
        return response

    def _compute_and_publish(self, frame: DecodedFrame) -> None:
        result = self.computer.compute(frame.image, frame.reference_image)
        sent = self.feedback.encode(result.allocation)
        aq_strength = self.params["map_aq_strength"] or self.computer.calibration.aq_strength
        msg = qp_map_message(sent, frame, aq_strength)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._map_publisher.publish(msg)
        self.statistics.count("qp_maps")
        self.statistics.add_feedback(time.monotonic(), serialized_size_bytes(msg))
        if self.params["publish_heatmap"]:
            heatmap = qp_heatmap(
                frame.image, sent.level_map.offsets_qp, self.computer.max_offset_qp
            )
            self._heatmap_publisher.publish(numpy_to_image(heatmap, "rgb8", frame.header))
        self.get_logger().debug(
            f"map {sent.map_seq} ({'key' if sent.is_key else 'delta'}, {len(sent.data)} B) "
            f"in {result.compute_ms:.0f} ms"
        )

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


def qp_map_message(sent: FeedbackMap, frame: DecodedFrame, aq_strength: float) -> QPMap:
    """The QPMap message of a map as it goes out (header stamp left to the caller)."""
    level_map = sent.level_map
    rows, cols = level_map.shape
    largest = max(abs(level) for level in level_map.levels_qp) + abs(level_map.budget_shift_qp)
    msg = QPMap(
        session_id=sent.session_id,
        map_seq=sent.map_seq,
        reference_map_seq=sent.reference_map_seq,
        source_frame_seq=frame.frame_seq,
        source_stamp=frame.header.stamp,
        cols=cols,
        rows=rows,
        levels=len(level_map.levels_qp),
        max_abs_offset_qp=min(largest, 51),
        budget_shift_qp=level_map.budget_shift_qp,
        aq_strength=float(aq_strength),
    )
    msg.header.frame_id = frame.header.frame_id
    msg.data = to_uint8_field(sent.data)
    return msg


def main(args: list[str] | None = None) -> None:
    run_node(SensitivityNode, args)


if __name__ == "__main__":
    main()
