"""`encoder_node` (robot): camera images in, H.264 access units out, maps and masks from the
edge, and a mask for every camera frame.

A thin shell over `stac_encoder.robot_loop.RobotLoop`. Its topics and its service are in
ENDPOINTS below (docs/reference.md lists them with types and QoS, read from the running node).
Parameter `mode`: stream (every frame encoded and sent) or keyframe (only frames whose
propagated state went stale, when the edge is free). `target_kbps` (changeable at run time:
`ros2 param set /stac_encoder target_kbps 600`) holds a bitrate with the QP map applied.
Maps arrive in the compact wire form (key maps and deltas, `stac_encoder.qp_map_receiver`),
masks in any of `stac_codec.mask_wire`'s (whichever `mask_coding` the edge chose, and the
earlier run-length form); every refused map or mask is counted and each kind of refusal logged
once.
"""

from __future__ import annotations

import math
import time

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import SetParametersResult
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Empty
from std_srvs.srv import Trigger

from stac_codec.h264_encoder import PRESETS, EncoderConfig
from stac_codec.mask_wire import (
    ENCODING_BY_VERSION,
    MaskReceiver,
    MaskReferenceError,
    MaskWireError,
    encoding_of,
    mask_size,
)
from stac_codec.overlay import mask_overlay
from stac_encoder.frame_flow import DIS_PRESETS, FlowConfig
from stac_encoder.keyframes import KeyframeConfig
from stac_encoder.mask_warp import PALETTE
from stac_encoder.qp_map_receiver import MapRejectedError, QPMapReceiver, ReceivedMapFields
from stac_encoder.rate_control import REFRESH_CHOICES, RateControlConfig, resolve_refresh
from stac_encoder.robot_encoder import (
    HOLD_SOURCES,
    STALE_MAPS_BEFORE_RESYNC,
    MapVerdict,
    QPMapUpdate,
    RobotEncoderConfig,
)
from stac_encoder.robot_loop import MODES, FrameOutcome, RobotLoop, RobotLoopConfig
from stac_msgs.msg import EncodedFrame, MaskAge, QPMap, SegmentationMask
from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.image_pixels import (
    ImageConversionError,
    field_as_numpy,
    image_to_numpy,
    to_uint8_field,
)
from stac_ros_common.node_runner import StatisticsReporter, run_node, stamp_to_s
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import (
    ENCODED_QOS,
    KEY_MASK_REQUEST_QOS,
    MASK_FEEDBACK_QOS,
    OUTPUT_QOS,
    QP_MAP_QOS,
    ROBOT_MASK_QOS,
    camera_qos,
)
from stac_ros_common.rejections import RejectionLog
from stac_ros_common.statistics import NodeStatistics
from stac_ros_common.wire_size import serialized_size_bytes

PIXEL_FORMAT_BY_ENCODING = {"rgb8": "rgb24", "bgr8": "bgr24", "mono8": "rgb24"}

# Every topic and service of the node, by the name it creates (remap as needed).
ENDPOINTS = {
    "image": "The camera (rgb8, bgr8 or mono8); QoS set by camera_qos.",
    "qp_map": "QP maps from the edge's sensitivity node (compact wire form).",
    "mask_feedback": "The edge's masks (compact wire form), warped here to every camera frame.",
    "encoded": "One H.264 access unit a message: every frame (stream) or keyframes only.",
    "robot_mask": "For every camera frame (its stamp): the edge's newest mask warped to it, "
    "mono8 class ids (all 255 until the edge's first mask).",
    "robot_mask_age": "How old that mask is (same stamp): frames, seconds, source stamp, warped.",
    "robot_overlay": "That mask's colours over the camera frame (rgb8) for viewers "
    "(publish_robot_overlay).",
    "key_mask_request": "Asks the edge for a key mask (its next mask coded alone) after refusing "
    "a mask coded against one this robot never got; at most every key_mask_request_interval_s.",
    "~/request_keyframe": "The next frame is an IDR picture (in keyframe mode it is sent at once).",
}

PARAMETERS = (
    ParameterSpec(
        "mode",
        "stream",
        "stream: every camera frame is encoded and sent; keyframe: only frames whose "
        "propagated state went stale (or a cut, or max_keyframe_interval_frames), and only "
        "when the edge can take them (keyframe_send_ahead).",
        choices=MODES,
    ),
    ParameterSpec(
        "rate_control",
        "crf",
        "Who holds a bitrate target: 'crf' = the robot's outer loop on the CRF (target_kbps; "
        "measured to track better under the QP map, and it works in keyframe mode), 'bitrate' "
        "= x264's own ABR + VBV at bitrate_kbps (stream mode only).",
        choices=("crf", "bitrate"),
    ),
    ParameterSpec(
        "crf", 28.0, "x264 CRF (lower = better); the start when target_kbps > 0.", 0.0, 51.0
    ),
    ParameterSpec(
        "target_kbps",
        0.0,
        "Bitrate target, kbit/s (0 = none: constant quality at crf). Held within +-10% over "
        "2-s windows by moving the CRF under the QP map.",
        0.0,
        1_000_000.0,
        read_only=False,
    ),
    ParameterSpec(
        "bitrate_kbps", 1000, "Target bitrate for rate_control 'bitrate', kbit/s.", 1, 1_000_000
    ),
    ParameterSpec("fps", 25.0, "Nominal camera rate the rate control assumes, Hz.", 1.0, 240.0),
    ParameterSpec("preset", "veryfast", "x264 speed preset.", choices=PRESETS),
    ParameterSpec(
        "gop_frames",
        50,
        "Refresh period in frames: an IDR picture (refresh idr) or an intra-refresh sweep.",
        1,
        100_000,
    ),
    ParameterSpec(
        "refresh",
        "auto",
        "What happens every gop_frames: idr (an IDR picture), intra_refresh (a column of intra "
        "macroblocks sweeps the picture, no rate spike) or none; auto: intra_refresh when the "
        "node starts with a bitrate target (target_kbps > 0 or rate_control bitrate), else idr. "
        "A keyframe request is always answered with an IDR picture.",
        choices=REFRESH_CHOICES,
    ),
    ParameterSpec(
        "mbtree",
        EncoderConfig.mbtree,
        "x264's lookahead-less MB-tree (refresh intra_refresh or none only).",
    ),
    ParameterSpec("threads", 1, "x264 threads (sliced).", 1, 64),
    ParameterSpec(
        "aq_strength",
        0.5,
        "x264 variance-AQ strength before the first QP map (a map names its own, the edge's "
        "map_aq_strength; 0.001 = the QP map alone redistributes bits).",
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
        "hold_offset_qp",
        RobotEncoderConfig.hold_offset_qp,
        "Forced skips: on P-frames, macroblocks whose map offset (after map_fade_px) is at "
        "least this get the previous encoded picture's pixels, so x264 skips them (0 = off).",
        0,
        51,
    ),
    ParameterSpec(
        "hold_refresh_frames",
        RobotEncoderConfig.hold_refresh_frames,
        "Forced skips: every held macroblock is coded from the camera again at least every this "
        "many frames, column by column (0 = never).",
        0,
        100_000,
    ),
    ParameterSpec(
        "hold_max_change",
        RobotEncoderConfig.hold_max_change,
        "Forced skips: a macroblock that changed by more than this (mean absolute difference, "
        "8-bit levels) since the held picture is coded from the camera (255 = never).",
        0.0,
        255.0,
    ),
    ParameterSpec(
        "hold_source",
        RobotEncoderConfig.hold_source,
        "Forced skips: the picture held macroblocks copy, input (what x264 was given last) or "
        "decoded (x264's reconstruction: the robot decodes its own stream, a decode a frame).",
        choices=HOLD_SOURCES,
    ),
    ParameterSpec(
        "reference_qp_strength",
        RobotEncoderConfig.reference_qp_strength,
        "Reference-aware offsets on P-frames (MB-tree-like from the past flow, weighted by the "
        "map): offset - strength * log2(1 + weight * r / (1 - r)), r the share of a "
        "macroblock the previous frame predicts (0 = off).",
        0.0,
        8.0,
    ),
    ParameterSpec(
        "reference_mean_zero",
        RobotEncoderConfig.reference_mean_zero,
        "The reference-aware term less its mean over the frame (moves bits between "
        "macroblocks only; off: it lowers the frame's QP as MB-tree does).",
    ),
    ParameterSpec(
        "map_fade_px",
        RobotEncoderConfig.map_fade_px,
        "The warped QP map's strength fades as the content moves: offsets scaled by "
        "F / (F + d), d the mean displacement since the map's frame, full-res px; a map "
        "older than the flow's history fades out (0 = off).",
        0.0,
        10000.0,
    ),
    ParameterSpec(
        "aq_motion_fade_px",
        RobotEncoderConfig.aq_motion_fade_px,
        "The x264 AQ strength the maps ask for fades with the camera's motion: computed on "
        "the robot per P-frame at strength x F / (F + m), m the median macroblock's "
        "displacement since the reference picture, full-res px (IDR pictures: in full), "
        "x264 at 0.001 (needs warp_qp_map). 0: x264's own AQ at the asked strength (a new "
        "encoder and an IDR picture when a map asks for another).",
        0.0,
        10000.0,
    ),
    ParameterSpec(
        "max_abs_offset_qp",
        30,
        "Largest |QP offset| (budget shift included) a map from the edge may ask for; a map "
        "beyond it is refused.",
        0,
        51,
    ),
    ParameterSpec(
        "key_mask_request_interval_s",
        0.5,
        "After refusing a mask coded against one it never got, ask the edge for a key mask at "
        "most this often, s (the refused masks of a broken chain arrive several per second).",
        0.01,
        60.0,
    ),
    ParameterSpec("warp_qp_map", True, "Carry the QP map to each frame with DIS optical flow."),
    ParameterSpec(
        "flow_width_px", 320, "Width frames are downscaled to for optical flow, px.", 32, 4096
    ),
    ParameterSpec(
        "flow_preset",
        "ultrafast",
        "DIS preset of the per-frame flow (computed once per camera frame).",
        choices=tuple(DIS_PRESETS),
    ),
    ParameterSpec(
        "anchor_preset",
        "medium",
        "DIS preset of the one direct flow that carries a late map or mask across the frames "
        "it missed (once per arriving map or mask).",
        choices=tuple(DIS_PRESETS),
    ),
    ParameterSpec(
        "flow_history_frames",
        64,
        "Camera frames of flow kept: the most a late map or mask can be carried across.",
        2,
        1000,
    ),
    ParameterSpec(
        "publish_robot_mask",
        True,
        "Warp the edge's newest mask to every camera frame and publish it (robot_mask, "
        "robot_mask_age).",
    ),
    ParameterSpec(
        "publish_robot_overlay",
        True,
        "Also publish the robot mask's colours over the camera frame (robot_overlay, rgb8) for "
        "viewers (about 2 ms per 960x540 frame).",
    ),
    ParameterSpec(
        "stale_psnr_db",
        24.0,
        "Keyframe mode: send a frame when it and the last keyframe, warped to it by flow, "
        "differ more than this (PSNR, dB; higher = more keyframes).",
        1.0,
        99.0,
    ),
    ParameterSpec(
        "cut_explained",
        0.5,
        "A scene cut when the previous frame warped by flow explains less than this share of "
        "a frame's variance (keyframe mode sends it at once, as IDR; drop_masks_at_cuts).",
        -1.0,
        1.0,
    ),
    ParameterSpec(
        "drop_masks_at_cuts",
        True,
        "At a scene cut drop the robot mask of the previous scene (robot_mask all 255 until "
        "the edge's mask of a frame after the cut arrives) instead of warping it into the new "
        "scene.",
    ),
    ParameterSpec(
        "max_keyframe_interval_frames",
        50,
        "Keyframe mode: send at least every this many camera frames.",
        1,
        100_000,
    ),
    ParameterSpec(
        "edge_timeout_s",
        2.0,
        "Keyframe mode: wait at most this long (camera time) for the edge's mask of a keyframe "
        "before sending the next (the keyframe or its mask may have been lost), s.",
        0.01,
        3600.0,
    ),
    ParameterSpec(
        "keyframe_send_ahead",
        True,
        "Keyframe mode: send the next keyframe before the edge's mask of the previous one "
        "arrives, timed from the measured round trips to reach the edge as it finishes (at "
        "most two unanswered, unless keyframe_pipeline); false: only once the mask is in.",
    ),
    ParameterSpec(
        "keyframe_pipeline",
        True,
        "Keyframe mode with keyframe_send_ahead: keep the edge busy when a round trip spans "
        "several of its passes: keyframes at the pace the edge answers them (learned from the "
        "answers: answers further apart than the pace slow it to their gap, four at the pace "
        "try a frame faster), as "
        "many unanswered as a round trip holds at that pace plus one; false: at most two.",
    ),
    ParameterSpec(
        "keyframe_far_preset",
        KeyframeConfig.far_preset,
        "Keyframe mode: the x264 preset whose analysis (motion search, mode decision, trellis, "
        "references) a keyframe far from the one before gets; '' = preset for every frame.",
        choices=("", *PRESETS),
    ),
    ParameterSpec(
        "keyframe_far_gap_frames",
        KeyframeConfig.far_gap_frames,
        "Keyframe mode: a keyframe at least this many camera frames after the one before is "
        "far (keyframe_far_preset); about 5.5x the encode time of preset veryfast for slow "
        "(3x for medium), about what streaming spends on the frames in between. 0 = never.",
        0,
        100_000,
    ),
    ParameterSpec(
        "keyframe_far_when_free",
        KeyframeConfig.far_when_free,
        "Keyframe mode: a keyframe nearer than keyframe_far_gap_frames gets "
        "keyframe_far_preset too while that has delayed no mask: the robot compares the age "
        "(camera frames) at which it first held the edge's masks of far and of near keyframes "
        "(median of the last 8 of each; a near keyframe tries the other preset 12 near "
        "keyframes after the choice changed, then twice as many after each try, at most 96).",
    ),
    ParameterSpec(
        "camera_qos",
        "sensor_data",
        "QoS of the camera subscription.",
        choices=("sensor_data", "reliable"),
    ),
)


def flow_config_from(params: dict) -> FlowConfig:
    return FlowConfig(
        flow_width_px=params["flow_width_px"],
        history_frames=params["flow_history_frames"],
        preset=params["flow_preset"],
        anchor_preset=params["anchor_preset"],
    )


def encoder_config_from(params: dict) -> RobotEncoderConfig:
    bitrate = params["bitrate_kbps"]
    if params["rate_control"] == "bitrate" and params["target_kbps"] > 0:
        bitrate = max(1, round(params["target_kbps"]))
    return RobotEncoderConfig(
        encoder=EncoderConfig(
            rate_control=params["rate_control"],
            crf=params["crf"],
            bitrate_kbps=bitrate,
            fps=params["fps"],
            preset=params["preset"],
            gop_frames=params["gop_frames"],
            refresh=resolve_refresh(
                params["refresh"],
                params["target_kbps"] > 0 or params["rate_control"] == "bitrate",
            ),
            mbtree=params["mbtree"],
            threads=params["threads"],
            aq_strength=params["aq_strength"],
        ),
        max_map_age_s=params["max_map_age_s"],
        warp_qp_map=params["warp_qp_map"],
        warp=flow_config_from(params),
        hold_offset_qp=params["hold_offset_qp"],
        hold_refresh_frames=params["hold_refresh_frames"],
        hold_max_change=params["hold_max_change"],
        hold_source=params["hold_source"],
        reference_qp_strength=params["reference_qp_strength"],
        reference_mean_zero=params["reference_mean_zero"],
        map_fade_px=params["map_fade_px"],
        aq_motion_fade_px=params["aq_motion_fade_px"],
    )


def loop_config_from(params: dict) -> RobotLoopConfig:
    target = params["target_kbps"] if params["rate_control"] == "crf" else 0.0
    return RobotLoopConfig(
        mode=params["mode"],
        encoder=encoder_config_from(params),
        flow=flow_config_from(params),
        keyframes=KeyframeConfig(
            stale_psnr_db=params["stale_psnr_db"],
            cut_explained=params["cut_explained"],
            max_interval_frames=params["max_keyframe_interval_frames"],
            edge_timeout_s=params["edge_timeout_s"],
            send_ahead=params["keyframe_send_ahead"],
            pipeline=params["keyframe_pipeline"],
            far_preset=params["keyframe_far_preset"],
            far_gap_frames=params["keyframe_far_gap_frames"],
            far_when_free=params["keyframe_far_when_free"],
        ),
        rate=RateControlConfig(target_kbps=target),
        propagate_masks=params["publish_robot_mask"],
        drop_masks_at_cuts=params["drop_masks_at_cuts"],
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
        self.loop = RobotLoop(loop_config_from(self.params))
        self.statistics = NodeStatistics()
        self._publisher = self.create_publisher(EncodedFrame, "encoded", ENCODED_QOS)
        self._mask_publisher = self.create_publisher(Image, "robot_mask", ROBOT_MASK_QOS)
        self._age_publisher = self.create_publisher(MaskAge, "robot_mask_age", ROBOT_MASK_QOS)
        self._overlay_publisher = self.create_publisher(Image, "robot_overlay", OUTPUT_QOS)
        self.create_subscription(
            Image, "image", self._on_image, camera_qos(self.params["camera_qos"])
        )
        maps = self.create_subscription(QPMap, "qp_map", self._on_qp_map, QP_MAP_QOS)
        masks = self.create_subscription(
            SegmentationMask, "mask_feedback", self._on_mask, MASK_FEEDBACK_QOS
        )
        self.create_service(Trigger, "~/request_keyframe", self._on_request_keyframe)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._reporter = StatisticsReporter(
            self,
            self.statistics,
            role="robot",
            link_channels=(maps.get_publisher_count, masks.get_publisher_count),
        )
        self._receiver = QPMapReceiver(self.params["max_abs_offset_qp"])
        self._mask_receiver = MaskReceiver()  # holds the reference of numbered masks
        self._key_mask_requests = self.create_publisher(
            Empty, "key_mask_request", KEY_MASK_REQUEST_QOS
        )
        self._last_key_mask_request_s = -math.inf
        self._rejections = RejectionLog(self.get_logger().warning)
        self._report_rate()

    @property
    def encoder(self):
        """The encoding core (RobotEncoder) inside the loop."""
        return self.loop.encoder

    def _report_rate(self) -> None:
        self.statistics.set_rate(self.loop.rate.target_kbps, self.loop.encoder.base_quality)

    def _on_image(self, msg: Image) -> None:
        self.statistics.count("frames_in")
        try:
            pixels = image_to_numpy(msg)
            if msg.encoding == "mono8":
                pixels = np.repeat(pixels[..., None], 3, axis=2)
            outcome = self.loop.process(
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
        if outcome.encoded is not None:
            self._publish_encoded(msg, outcome)
        else:
            self.statistics.count("frames_held")
            if outcome.decision is not None and outcome.decision.waited:
                self.statistics.count("frames_waited")
        self._publish_mask(msg, outcome, pixels)

    def _publish_encoded(self, msg: Image, outcome: FrameOutcome) -> None:
        result = outcome.encoded
        out = EncodedFrame(
            header=msg.header,
            frame_seq=result.frame_seq,
            codec="h264",
            width=result.width,
            height=result.height,
            keyframe=result.packet.keyframe,
            qp_map_seq=result.qp_map_seq,
            rate_control=self.params["rate_control"],
            base_quality=float(self.loop.encoder.base_quality),
        )
        out.data = to_uint8_field(result.packet.data)
        self._publisher.publish(out)
        self.statistics.count("frames_encoded")
        size = serialized_size_bytes(out)
        self.statistics.add_uplink(time.monotonic(), size)
        self.loop.rate.overhead_bytes = size - len(result.packet.data)  # what the target pays
        self._report_rate()

    def _publish_mask(self, msg: Image, outcome: FrameOutcome, pixels: np.ndarray) -> None:
        """The robot's mask of this camera frame (all NO_CLASS before the edge's first)."""
        if not self.params["publish_robot_mask"]:
            return
        mask = outcome.mask
        if mask is None:
            class_ids = np.full((msg.height, msg.width), MaskAge.NO_CLASS, np.uint8)
        else:
            class_ids = mask.class_ids
        self._mask_publisher.publish(numpy_to_image(class_ids, "mono8", msg.header))
        if self.params["publish_robot_overlay"]:
            rgb = pixels if msg.encoding != "bgr8" else pixels[..., ::-1]
            overlay = mask_overlay(np.ascontiguousarray(rgb), class_ids, PALETTE)
            self._overlay_publisher.publish(numpy_to_image(overlay, "rgb8", msg.header))
        if mask is None:
            self._age_publisher.publish(MaskAge(header=msg.header, has_source=False))
            self.statistics.count("robot_masks")
            return
        age_s = outcome.mask_age_s if outcome.mask_age_s is not None else math.nan
        source_s = outcome.capture_s - age_s if math.isfinite(age_s) else 0.0
        age = MaskAge(
            header=msg.header,
            has_source=True,
            age_frames=mask.age_frames,
            age_s=float(age_s),
            source_stamp=_time_of(source_s),
            warped=mask.warped,
        )
        self._age_publisher.publish(age)
        self.statistics.count("robot_masks")

    def _on_mask(self, msg: SegmentationMask) -> None:
        """A mask from the edge. Anything on the domain can publish here: the declared size is
        checked against the frames the robot holds before the decoder allocates anything, and
        no exception leaves this callback (a refusal is counted and logged once per kind)."""
        self.statistics.add_mask_feedback(time.monotonic(), serialized_size_bytes(msg))
        try:
            self._take_mask(msg)
        except Exception as error:  # noqa: BLE001 - a message must never kill the node
            self._refuse_mask("mask/internal", f"mask refused: {type(error).__name__}: {error}")

    def _take_mask(self, msg: SegmentationMask) -> None:
        if msg.encoding not in ENCODING_BY_VERSION.values():
            self._refuse_mask("mask/encoding", f"mask refused: unknown encoding {msg.encoding!r}")
            return
        frame_size = self.loop.frame_size
        if frame_size is None:
            self._refuse_mask("mask/no_frame", "mask refused: no camera frame yet to size it")
            return
        if (msg.width, msg.height) != frame_size:
            self._refuse_mask(
                "mask/size",
                f"mask refused: {msg.width}x{msg.height} for frames of "
                f"{frame_size[0]}x{frame_size[1]}",
            )
            return
        try:
            data = field_as_numpy(msg.data).tobytes()
            if encoding_of(data) != msg.encoding:
                raise MaskWireError(f"{msg.encoding} declared, the data is {encoding_of(data)}")
            declared = mask_size(data)
            if declared != frame_size:
                raise MaskWireError(
                    f"header says {msg.width}x{msg.height}, the data declares "
                    f"{declared[0]}x{declared[1]}"
                )
            class_ids = self._mask_receiver.decode(data, max_pixels=frame_size[0] * frame_size[1])
            if class_ids is None:  # a keep (counted as received): the mask held goes on
                self.loop.mask_kept(msg.source_frame_seq)
                self.statistics.count("masks_received")
                return
            adopted = self.loop.submit_mask(class_ids, msg.source_frame_seq)
        except MaskReferenceError as error:  # a mask was missed: a key mask recovers
            self._refuse_mask(f"mask/{error.reason}", f"mask refused: {error}")
            self._request_key_mask()
            return
        except (MaskWireError, ImageConversionError) as error:
            self._refuse_mask("mask/damaged", f"mask refused: {error}")
            return
        if not adopted:
            self._refuse_mask(
                "mask/stale",
                f"mask of frame {msg.source_frame_seq} refused: older than the mask held, or "
                "its frame is no longer known",
            )
            return
        self.statistics.count("masks_received")

    def _request_key_mask(self) -> None:
        """Ask the edge to send its next mask alone, rather than wait for its next key mask
        (every mask_key_interval masks); rate-limited, since every referenced mask until the
        key arrives is refused again."""
        now_s = time.monotonic()
        if now_s - self._last_key_mask_request_s < self.params["key_mask_request_interval_s"]:
            return
        self._last_key_mask_request_s = now_s
        self._key_mask_requests.publish(Empty())
        self.statistics.count("key_mask_requests")

    def _on_qp_map(self, msg: QPMap) -> None:
        self.statistics.add_feedback(time.monotonic(), serialized_size_bytes(msg))
        try:
            level_map = self._receiver.receive(received_fields(msg))
        except MapRejectedError as error:
            self._refuse_map(f"qp_map/{error.kind}", f"QP map refused: {error}")
            return
        try:
            verdict = self.loop.submit_qp_map(
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

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """target_kbps may change at run time (the others are read-only)."""
        for parameter in parameters:
            if parameter.name != "target_kbps":
                continue
            value = float(parameter.value)
            try:
                self.loop.set_target_kbps(value)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self.params["target_kbps"] = value
            self.get_logger().info(f"bitrate target now {value:g} kbit/s")
            self._report_rate()
        return SetParametersResult(successful=True)

    def _refuse_frame(self, kind: str, error: Exception) -> None:
        self.statistics.count("frames_failed")
        self._rejections.reject(kind, f"camera frame not encoded: {error}")

    def _refuse_map(self, kind: str, message: str) -> None:
        self.statistics.count("qp_maps_rejected")
        self._rejections.reject(kind, message)

    def _refuse_mask(self, kind: str, message: str) -> None:
        self.statistics.count("masks_rejected")
        self._rejections.reject(kind, message)

    def _on_request_keyframe(self, request: Trigger.Request, response: Trigger.Response):
        self.loop.request_keyframe()
        response.success, response.message = True, "the next frame will be a keyframe"
        return response

    def close(self) -> None:
        if self.context.ok():  # after SIGTERM rclpy has already shut the context down
            self._publisher.wait_for_all_acked(Duration(seconds=2))
            self._mask_publisher.wait_for_all_acked(Duration(seconds=2))
        self.loop.close()


def _time_of(stamp_s: float) -> Time:
    seconds = math.floor(stamp_s)
    return Time(sec=int(seconds), nanosec=min(999_999_999, round((stamp_s - seconds) * 1e9)))


def main(args: list[str] | None = None) -> None:
    run_node(EncoderNode, args)


if __name__ == "__main__":
    main()
