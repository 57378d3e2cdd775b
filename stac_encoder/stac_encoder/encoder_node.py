"""`encoder_node` (robot): camera images in, H.264 access units out, QP maps from the edge.

A thin shell over `stac_encoder.robot_encoder.RobotEncoder`. Topics (remap as needed):
  image    sensor_msgs/Image   in   the camera (rgb8, bgr8 or mono8)
  qp_map   stac_msgs/QPMap     in   maps from the edge's sensitivity node
  encoded  stac_msgs/EncodedFrame out
Service ~/request_keyframe (std_srvs/Trigger): the next frame is an IDR picture.
Maps arrive in the compact wire form (key maps and deltas, `stac_encoder.qp_map_receiver`);
every refused map is counted and each kind of refusal logged once.
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from stac_codec.h264_encoder import PRESETS, EncoderConfig
from stac_encoder.qp_map_receiver import MapRejectedError, QPMapReceiver, ReceivedMapFields
from stac_encoder.qp_map_warp import WarpConfig
from stac_encoder.robot_encoder import (
    STALE_MAPS_BEFORE_RESYNC,
    MapVerdict,
    QPMapUpdate,
    RobotEncoder,
    RobotEncoderConfig,
)
from stac_msgs.msg import EncodedFrame, QPMap
from stac_ros_common.image_pixels import (
    ImageConversionError,
    field_as_numpy,
    image_to_numpy,
    to_uint8_field,
)
from stac_ros_common.node_runner import StatisticsReporter, run_node, stamp_to_s
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import ENCODED_QOS, QP_MAP_QOS, camera_qos
from stac_ros_common.rejections import RejectionLog
from stac_ros_common.statistics import NodeStatistics
from stac_ros_common.wire_size import serialized_size_bytes

PIXEL_FORMAT_BY_ENCODING = {"rgb8": "rgb24", "bgr8": "bgr24", "mono8": "rgb24"}

PARAMETERS = (
    ParameterSpec(
        "rate_control",
        "crf",
        "Base quality mode: constant quality ('crf') or target bitrate ('bitrate').",
        choices=("crf", "bitrate"),
    ),
    ParameterSpec("crf", 28.0, "x264 CRF for rate_control 'crf' (lower = better).", 0.0, 51.0),
    ParameterSpec(
        "bitrate_kbps", 1000, "Target bitrate for rate_control 'bitrate', kbit/s.", 1, 1_000_000
    ),
    ParameterSpec("fps", 25.0, "Nominal camera rate the rate control assumes, Hz.", 1.0, 240.0),
    ParameterSpec("preset", "veryfast", "x264 speed preset.", choices=PRESETS),
    ParameterSpec("gop_frames", 50, "Keyframe (IDR) interval in frames.", 1, 100_000),
    ParameterSpec("threads", 1, "x264 threads (sliced).", 1, 64),
    ParameterSpec(
        "aq_strength",
        0.001,
        "x264 variance-AQ strength (> 0; 0.001 = the QP map alone redistributes bits).",
        0.001,
        3.0,
    ),
    ParameterSpec(
        "max_map_age_s",
        5.0,
        "A map computed on a frame older than this (camera clock) is replaced by a zero map, s.",
        0.01,
        3600.0,
    ),
    ParameterSpec(
        "max_abs_offset_qp",
        30,
        "Largest |QP offset| (budget shift included) a map from the edge may ask for; a map "
        "beyond it is refused.",
        0,
        51,
    ),
    ParameterSpec("warp_qp_map", True, "Carry the QP map to each frame with DIS optical flow."),
    ParameterSpec(
        "flow_width_px", 320, "Width frames are downscaled to for optical flow, px.", 32, 4096
    ),
    ParameterSpec(
        "camera_qos",
        "sensor_data",
        "QoS of the camera subscription.",
        choices=("sensor_data", "reliable"),
    ),
)


def encoder_config_from(params: dict) -> RobotEncoderConfig:
    return RobotEncoderConfig(
        encoder=EncoderConfig(
            rate_control=params["rate_control"],
            crf=params["crf"],
            bitrate_kbps=params["bitrate_kbps"],
            fps=params["fps"],
            preset=params["preset"],
            gop_frames=params["gop_frames"],
            threads=params["threads"],
            aq_strength=params["aq_strength"],
        ),
        max_map_age_s=params["max_map_age_s"],
        warp_qp_map=params["warp_qp_map"],
        warp=WarpConfig(flow_width_px=params["flow_width_px"]),
    )


def received_fields(msg: QPMap) -> ReceivedMapFields:
    """The QPMap fields the receiver core needs, without ROS types."""
    return ReceivedMapFields(
        session_id=msg.session_id,
        map_seq=msg.map_seq,
        reference_map_seq=msg.reference_map_seq,
        rows=msg.rows,
        cols=msg.cols,
        max_abs_offset_qp=msg.max_abs_offset_qp,
        data=field_as_numpy(msg.data).tobytes(),
    )


class EncoderNode(Node):
    def __init__(self) -> None:
        super().__init__("stac_encoder")
        self.params = declare_parameters(self, PARAMETERS)
        self.encoder = RobotEncoder(encoder_config_from(self.params))
        self.statistics = NodeStatistics()
        self._publisher = self.create_publisher(EncodedFrame, "encoded", ENCODED_QOS)
        self.create_subscription(
            Image, "image", self._on_image, camera_qos(self.params["camera_qos"])
        )
        self.create_subscription(QPMap, "qp_map", self._on_qp_map, QP_MAP_QOS)
        self.create_service(Trigger, "~/request_keyframe", self._on_request_keyframe)
        self._reporter = StatisticsReporter(self, self.statistics, role="robot")
        self._receiver = QPMapReceiver(self.params["max_abs_offset_qp"])
        self._rejections = RejectionLog(self.get_logger().warning)
        self._base_quality = (
            self.params["crf"]
            if self.params["rate_control"] == "crf"
            else float(self.params["bitrate_kbps"])
        )

    def _on_image(self, msg: Image) -> None:
        self.statistics.count("frames_in")
        try:
            pixels = image_to_numpy(msg)
            if msg.encoding == "mono8":
                pixels = np.repeat(pixels[..., None], 3, axis=2)
            result = self.encoder.encode(
                pixels, stamp_to_s(msg.header.stamp), PIXEL_FORMAT_BY_ENCODING[msg.encoding]
            )
        except ImageConversionError as error:
            self._refuse_frame("image/unreadable", error)
            return
        except ValueError as error:  # a frame the encoder cannot take (size, dtype, stamp)
            self._refuse_frame("image/unencodable", error)
            return
        except RuntimeError as error:  # x264 itself failed
            self._refuse_frame("image/encoder_error", error)
            return
        out = EncodedFrame(
            header=msg.header,
            frame_seq=result.frame_seq,
            codec="h264",
            width=result.width,
            height=result.height,
            keyframe=result.packet.keyframe,
            qp_map_seq=result.qp_map_seq,
            rate_control=self.params["rate_control"],
            base_quality=self._base_quality,
        )
        out.data = to_uint8_field(result.packet.data)
        self._publisher.publish(out)
        self.statistics.count("frames_encoded")
        self.statistics.add_uplink(time.monotonic(), serialized_size_bytes(out))

    def _on_qp_map(self, msg: QPMap) -> None:
        self.statistics.add_feedback(time.monotonic(), serialized_size_bytes(msg))
        try:
            level_map = self._receiver.receive(received_fields(msg))
        except MapRejectedError as error:
            self._refuse_map(f"qp_map/{error.kind}", f"QP map refused: {error}")
            return
        try:
            verdict = self.encoder.submit_qp_map(
                QPMapUpdate(
                    map_seq=msg.map_seq,
                    source_frame_seq=msg.source_frame_seq,
                    source_stamp_s=stamp_to_s(msg.source_stamp),
                    offsets=level_map.offsets_qp,
                    session_id=msg.session_id,
                    aq_strength=float(msg.aq_strength),
                )
            )
        except ValueError as error:  # the encoder's checks: stamps, source frame, grid, AQ
            self._refuse_map("qp_map/invalid", f"QP map refused: {error}")
            return
        if verdict is MapVerdict.STALE:
            self._refuse_map(
                "qp_map/stale", f"QP map {msg.map_seq} refused: not newer than the map held"
            )
            return
        if verdict is MapVerdict.RESYNCED:
            self.get_logger().warning(
                f"QP map {msg.map_seq}: after {STALE_MAPS_BEFORE_RESYNC} stale maps in a row "
                "the edge's numbering is taken to have restarted"
            )
        self.statistics.count("qp_maps")

    def _refuse_frame(self, kind: str, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self._rejections.reject(kind, f"camera frame not encoded: {error}")

    def _refuse_map(self, kind: str, message: str) -> None:
        self.statistics.count("qp_maps_rejected")
        self._rejections.reject(kind, message)

    def _on_request_keyframe(self, request: Trigger.Request, response: Trigger.Response):
        self.encoder.request_keyframe()
        response.success, response.message = True, "the next frame will be a keyframe"
        return response

    def close(self) -> None:
        if self.context.ok():  # after SIGTERM rclpy has already shut the context down
            self._publisher.wait_for_all_acked(Duration(seconds=2))
        self.encoder.close()


def main(args: list[str] | None = None) -> None:
    run_node(EncoderNode, args)


if __name__ == "__main__":
    main()
