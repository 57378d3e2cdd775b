"""`sensitivity_node` (edge): decoded frames in, QP maps back to the robot.

Topics:
  encoded     stac_msgs/EncodedFrame  in   the robot's stream (decoded here, every frame)
  qp_map      stac_msgs/QPMap         out  to the robot's encoder
  qp_heatmap  sensor_msgs/Image rgb8  out  the frame with its map blended on top, for rviz
Service ~/compute_now (std_srvs/Trigger): compute a map on the next decoded frame.

A map is computed every `period_frames` decoded frames (0 = only when asked), on the newest
due frame, in a worker thread: the gradient pass (~0.2-0.5 s on a CPU) never stalls decoding,
and a due frame that a newer one replaces before the worker is free is simply dropped.
"""

from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from stac_edge_segmenter.edge_decoding import DecodedFrame, EncodedStreamDecoder
from stac_edge_segmenter.model_parameters import MODEL_PARAMETERS, load_model_from
from stac_msgs.msg import EncodedFrame, QPMap
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.newest_item_worker import NewestItemWorker
from stac_ros_common.node_runner import StatisticsReporter, run_node
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS, OUTPUT_QOS, QP_MAP_QOS
from stac_ros_common.statistics import NodeStatistics
from stac_sensitivity.online import QPMapComputer, qp_heatmap

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
        "budget_shift_qp",
        0,
        "Uniform QP shift added to every map (+ = fewer bits, - = more).",
        -51,
        51,
    ),
    ParameterSpec("publish_heatmap", True, "Publish the QP-map heatmap image for rviz."),
)


class SensitivityNode(Node):
    def __init__(self) -> None:
        super().__init__("stac_sensitivity")
        self.params = declare_parameters(self, PARAMETERS)
        self.computer = QPMapComputer(
            load_model_from(self.params),
            self.params["calibration_file"] or None,
            self.params["budget_shift_qp"],
        )
        self.statistics = NodeStatistics()
        self._decoder = EncodedStreamDecoder()
        self._decoded_since_map = 0
        self._compute_requested = True  # the first decodable frame gets a map at once
        self._map_seq = 0
        self._map_publisher = self.create_publisher(QPMap, "qp_map", QP_MAP_QOS)
        self._heatmap_publisher = self.create_publisher(Image, "qp_heatmap", OUTPUT_QOS)
        self.create_subscription(EncodedFrame, "encoded", self._on_encoded, ENCODED_QOS)
        self.create_service(Trigger, "~/compute_now", self._on_compute_now)
        self._reporter = StatisticsReporter(self, self.statistics, role="edge")
        self._worker: NewestItemWorker[DecodedFrame] = NewestItemWorker(
            self._publish_map, self._on_map_error, name="sensitivity"
        )
        source = self.computer.calibration_path or "built-in defaults"
        self.get_logger().info(
            f"calibration: {source}; levels {self.computer.levels_qp}, "
            f"period {self.params['period_frames']} frames"
        )

    def _on_encoded(self, msg: EncodedFrame) -> None:
        self.statistics.count("frames_in")
        result = self._decoder.decode(msg.data, msg.frame_seq, msg.width, msg.height)
        if not result.ok:
            self.statistics.count("frames_failed")
            return
        self._decoded_since_map += 1
        period = self.params["period_frames"]
        due = self._compute_requested or (period and self._decoded_since_map >= period)
        if due:
            self._compute_requested = False
            self._decoded_since_map = 0
            frame = DecodedFrame(msg.header, msg.frame_seq, result.image)
            if self._worker.submit(frame) is not None:
                self.statistics.count("frames_skipped")

    def _on_compute_now(self, request: Trigger.Request, response: Trigger.Response):
        self._compute_requested = True
        response.success, response.message = True, "a map will be computed on the next frame"
        return response

    def _on_map_error(self, frame: DecodedFrame, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self.get_logger().error(f"no map for frame {frame.frame_seq}: {error}")

    def _publish_map(self, frame: DecodedFrame) -> None:
        result = self.computer.compute(frame.image)
        self._map_seq += 1
        rows, cols = result.offsets_qp.shape
        msg = QPMap(
            map_seq=self._map_seq,
            source_frame_seq=frame.frame_seq,
            source_stamp=frame.header.stamp,
            macroblock_size=16,
            cols=cols,
            rows=rows,
            levels=len(self.computer.levels_qp),
            qp_offsets=result.offsets_qp.reshape(-1).tolist(),
            max_abs_offset_qp=self.computer.max_offset_qp,
            budget_shift_qp=float(self.computer.budget_shift_qp),
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = frame.header.frame_id
        self._map_publisher.publish(msg)
        self.statistics.count("qp_maps")
        self.statistics.add_feedback(time.monotonic(), rows * cols)
        if self.params["publish_heatmap"]:
            heatmap = qp_heatmap(frame.image, result.offsets_qp, self.computer.max_offset_qp)
            self._heatmap_publisher.publish(numpy_to_image(heatmap, "rgb8", frame.header))
        self.get_logger().debug(f"map {self._map_seq} in {result.compute_ms:.0f} ms")

    def close(self) -> None:
        self._worker.close()


def main(args: list[str] | None = None) -> None:
    run_node(SensitivityNode, args)


if __name__ == "__main__":
    main()
