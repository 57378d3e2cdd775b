"""The replay runs the nodes' cores, and where it has to restate a node's glue (which frames
get a map, the encoder's settings) its defaults must be the nodes' defaults."""

from __future__ import annotations

from stac_encoder.encoder_node import PARAMETERS as ENCODER_PARAMETERS
from stac_encoder.robot_loop import RobotLoopConfig
from stac_eval.replay.cli import build_parser
from stac_eval.replay.robot import robot_aq_strength
from stac_eval.replay.simulation import METHODS, ReplaySettings
from stac_sensitivity.sensitivity_node import PARAMETERS as SENSITIVITY_PARAMETERS


def _defaults(parameters) -> dict:
    return {spec.name: spec.default for spec in parameters}


def test_replay_defaults_are_the_nodes_defaults():
    encoder = _defaults(ENCODER_PARAMETERS)
    sensitivity = _defaults(SENSITIVITY_PARAMETERS)
    settings = ReplaySettings(fps=25.0)
    args = build_parser().parse_args(["run", "clip.mp4", "--out", "out"])
    assert args.gop == encoder["gop_frames"]
    assert args.preset == settings.preset == encoder["preset"]
    assert args.refresh == settings.refresh == encoder["refresh"]
    assert settings.mbtree == encoder["mbtree"]
    assert settings.flow.flow_width_px == encoder["flow_width_px"]
    assert settings.warp_qp_map == encoder["warp_qp_map"] and not args.no_warp
    assert args.map_fade_px == settings.map_fade_px == encoder["map_fade_px"]
    assert args.aq_motion_fade_px == settings.aq_motion_fade_px == encoder["aq_motion_fade_px"]
    assert not dict(settings.robot_options)
    assert settings.max_abs_offset_qp == encoder["max_abs_offset_qp"]
    assert args.period_frames == settings.period_frames == sensitivity["period_frames"]
    assert args.min_map_interval_s == settings.min_map_interval_s
    assert settings.min_map_interval_s == sensitivity["min_map_interval_s"]
    assert args.max_compute_share == settings.max_compute_share
    assert settings.max_compute_share == sensitivity["max_compute_share"]
    assert settings.hysteresis_levels == sensitivity["hysteresis_levels"]
    assert args.map_aq_strength == settings.map_aq_strength == sensitivity["map_aq_strength"]
    # a map method's robot starts at the strength its maps ask for, as the node does
    assert robot_aq_strength(METHODS["stac"], settings) == encoder["aq_strength"]
    assert robot_aq_strength(METHODS["stac_keyframe"], settings) == encoder["aq_strength"]
    assert settings.key_map_interval == sensitivity["key_map_interval"]
    assert settings.keyframes.stale_psnr_db == encoder["stale_psnr_db"]
    assert settings.keyframes.cut_explained == encoder["cut_explained"]
    assert settings.keyframes.max_interval_frames == encoder["max_keyframe_interval_frames"]
    assert settings.keyframes.edge_timeout_s == encoder["edge_timeout_s"]
    assert settings.keyframes.send_ahead == encoder["keyframe_send_ahead"]
    assert settings.keyframes.pipeline == encoder["keyframe_pipeline"]
    assert settings.keyframes.far_preset == encoder["keyframe_far_preset"]
    assert settings.keyframes.far_gap_frames == encoder["keyframe_far_gap_frames"]
    assert args.map_worker_nice == settings.map_worker_nice == sensitivity["map_worker_nice"]
    assert settings.drop_masks_at_cuts == encoder["drop_masks_at_cuts"]
    assert RobotLoopConfig().drop_masks_at_cuts == encoder["drop_masks_at_cuts"]
    assert settings.flow.preset == encoder["flow_preset"]
    assert settings.flow.anchor_preset == encoder["anchor_preset"]
    assert settings.flow.history_frames == encoder["flow_history_frames"]
