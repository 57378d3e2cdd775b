"""`stac-bench temporal`: STAC on video, measured on one clip.

Five measurements, each over the robot's real core (`stac_encoder.robot_loop.RobotLoop`: flow,
map warp, keyframe decision, x264 with the map, mask warp) and, where the edge is involved, the
replay's event simulation (`stac_eval.replay.simulation.PointReplay`: the same simulator as
`stac-replay run`, its link model, edge profile and pseudo ground truth):

1. `bd_rate_pct`: STAC stream mode against uniform H.264 (same encoder settings), x264's
   variance AQ and the two-level map, each swept over --crf, at equal decoded mIoU; bits are
   the uplink messages plus the QP maps and keyframe requests sent back (the masks sent back
   are counted apart: every method needs them for the robot to have masks). 95% intervals by
   block bootstrap. `stac-replay run` gives the system view (every bit both ways, timely).
2. `propagation`: for feedback delays d (frames), the robot holding the edge's mask of frame
   t-d at frame t: carried by flow (`warped_miou`), as it was (`held_miou`), or no mask at all
   (`none_miou`, 0 by definition: every pixel unlabelled), timely mIoU against the pseudo
   ground truth of frame t. For maps: BD-rate against uniform when the map computed on frame
   k is applied from frame k+d on, warped or held (none = uniform, 0 %); maps every
   --map-period frames, computed on the uniform stream's decoded frames at each CRF.
3. `keyframe_vs_stream`: keyframe mode's uplink bits divided by stream mode's at equal timely
   mIoU (the robot's own mask of every frame), both swept over --crf, edge compute time as
   measured on this machine (or --edge-ms).
4. `rate_control`: a bitrate target with the map applied, the clip played forth and back for
   --rc-seconds, the target stepped down at half time; the worst error of any 2-s window after
   2 s of settling, and the time after the step from which every 2-s window is within +-10%;
   for the robot's outer loop on the CRF and for x264's own ABR + VBV.
5. `robot_ms_per_frame`: each stage of the robot loop at 960x540 on one thread (flow, map_warp,
   mask_warp, keyframe_decision, encode, total: the larger of the two modes, each mode in full
   under `stream` and `keyframe`), with maps and masks fed back as the edge would send them.

Each simulated point is cached under --work-dir (a rerun with the same options reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stac_edge_segmenter.engines import DEFAULT_ENGINE, ENGINE_NAMES
from stac_encoder.frame_flow import FlowConfig
from stac_training.camvid import shared_data_dir

DEFAULT_CRFS = (18, 25, 32, 39, 46)
DEFAULT_DELAYS = (0, 2, 5, 10, 25)
BASELINES = ("uniform", "x264_aq", "two_level")
BENCH_VERSION = 6  # bump when a change alters results, so cached points are recomputed


def default_video() -> Path:
    return shared_data_dir() / "video" / "solidWhiteRight.mp4"


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part.strip()]

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, default=default_video(), help="clip or rosbag2")
    parser.add_argument("--max-frames", type=int, default=0, help="first N frames (0: all)")
    parser.add_argument(
        "--crf", type=_csv(float), default=list(DEFAULT_CRFS), help="CRF sweep, comma-separated"
    )
    parser.add_argument(
        "--delays",
        type=_csv(int),
        default=list(DEFAULT_DELAYS),
        help="delay study: mask and map delays in frames, comma-separated",
    )
    parser.add_argument(
        "--decoded-stride", type=int, default=2, help="score every n-th decoded frame"
    )
    parser.add_argument(
        "--map-period", type=int, default=5, help="delay study: a map every n frames"
    )
    parser.add_argument(
        "--link",
        default="rate=10mbit,delay=20ms,loss=0%,queue=30",
        help="the simulated robot-edge link (rate, delay, loss, queue)",
    )
    parser.add_argument(
        "--flow-width-px",
        type=int,
        default=FlowConfig.flow_width_px,
        help="the robot's optical-flow width (the node's flow_width_px)",
    )
    parser.add_argument(
        "--edge-ms", default="", help="MS or FORWARD_MS/SENSITIVITY_MS (default: the profile)"
    )
    parser.add_argument(
        "--robot-encode-ms",
        default="",
        help="the robot's x264 time per frame, MS or NEAR_MS/FAR_MS (default: timed on the "
        "clip, cached; 0: frames enter the uplink at capture)",
    )
    parser.add_argument(
        "--edge-profile",
        default="measured",
        help="edge compute times: measured (here, cached), fast (a GPU edge: the shipped model "
        "as measured on an NVIDIA H200, any other model published figures) or a "
        "JSON file from `stac-replay edge-timing`",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default=DEFAULT_ENGINE,
        help="the edge's inference engine whose forward the measured profile times",
    )
    parser.add_argument(
        "--edge-threads",
        type=int,
        default=0,
        help="threads the measured profile times the edge with (default 0: the edge nodes' "
        "default, the library's: this machine's cores)",
    )
    parser.add_argument("--rc-seconds", type=float, default=20.0, help="rate-control run length, s")
    parser.add_argument(
        "--rc-target-kbps",
        type=float,
        default=0.0,
        help="first target (default: STAC stream mode's rate at the middle CRF)",
    )
    parser.add_argument("--rc-step", type=float, default=0.5, help="second target / first")
    parser.add_argument("--timing-frames", type=int, default=150, help="robot timing run")
    parser.add_argument(
        "--stale-psnr-db",
        type=_csv(float),
        default=[24.0, 28.0, 99.0],
        help="keyframe mode's staleness thresholds (99: a keyframe whenever the edge is free)",
    )
    parser.add_argument(
        "--parts",
        type=_csv(str),
        default=["bd_rate", "propagation", "keyframe", "rate_control", "robot_ms"],
        help="which measurements to run (propagation = mask_delays + map_delays)",
    )
    parser.add_argument(
        "--tried",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="a STAC stream-mode variant to report beside the default (SimSettings fields, "
        "e.g. p_offset_scale=0.5; encoder.KEY / robot.KEY: EncoderConfig / "
        "RobotEncoderConfig fields, e.g. robot.hold_offset_qp=8; computer.KEY: QPMapComputer "
        "options, e.g. computer.block_mb=0; calibration=PATH|feasibility); repeatable",
    )
    parser.add_argument(
        "--encoder",
        default="",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="EncoderConfig fields for every method and part (e.g. refresh=none); default: "
        "the codec's defaults",
    )
    parser.add_argument(
        "--map-aq-strength",
        type=float,
        default=None,
        help="x264 AQ strength under every map method's maps, every part (ReplaySettings."
        "map_aq_strength; 1.0: the map on top of x264's variance AQ); default: the replay's",
    )
    parser.add_argument(
        "--baselines",
        type=_csv(str),
        default=list(BASELINES),
        help=f"bd_rate: the baselines STAC is compared with, a subset of {','.join(BASELINES)}",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="cached points")
    parser.add_argument("--bootstrap", type=int, default=500, help="BD-rate CI resamples")
    parser.add_argument("--model", type=Path, default=None, help="model YAML (default shipped)")
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="STAC calibration JSON, or 'feasibility' for the built-in defaults (default: the "
        "one shipped beside the model)",
    )


@dataclass
class Context:
    """What every measurement shares: the clip, its truth, the model and the edge timing."""

    args: argparse.Namespace
    model: object
    computer: object
    truth: object
    frames: list
    fps: float
    timing: object
    link: object
    work_dir: Path
    key: dict
    decoded_cache: Path  # the model's masks of decoded pictures, by content (DecodedMasks)
    robot_encode_ms: tuple[float, float]  # ReplaySettings.robot_encode_ms (`robot_timing`)


def run(args: argparse.Namespace) -> dict:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    context = _context(args)
    result: dict = {
        "video": str(args.video),
        "frames": len(context.frames),
        "fps": context.fps,
        "frame_size": list(context.frames[0].image.shape[1::-1]),
        "flow_width_px": args.flow_width_px,
        "edge_timing": context.timing.as_json(),
        "calibration": str(context.computer.calibration_path or "built-in defaults"),
        "calibration_levels_qp": list(context.computer.levels_qp),
        "link": context.link.as_json(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    parts = args.parts
    curves = {}
    # the bitrate target's default first target is STAC's rate at the middle CRF
    rate_needs_curve = "rate_control" in parts and not args.rc_target_kbps
    if "bd_rate" in parts or "keyframe" in parts or rate_needs_curve:
        unknown = set(args.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"--baselines: unknown {sorted(unknown)}; known: {BASELINES}")
        baselines = tuple(name for name in BASELINES if name in args.baselines)
        curves = _stream_curves(context, ("stac",) + (baselines if "bd_rate" in parts else ()))
    if "bd_rate" in parts:
        result.update(_bd_rates(context, curves))
        if args.tried:
            result["tried"] = _tried(context, curves)
    if "propagation" in parts or "mask_delays" in parts or "map_delays" in parts:
        result["propagation"] = _propagation(
            context,
            masks="propagation" in parts or "mask_delays" in parts,
            maps="propagation" in parts or "map_delays" in parts,
        )
    if "keyframe" in parts:
        result["keyframe_vs_stream"] = _keyframe_vs_stream(context, curves["stac"])
    if "rate_control" in parts:
        result["rate_control"] = _rate_control(context, curves.get("stac"))
    if "robot_ms" in parts:
        result["robot_ms_per_frame"] = _robot_timing(context)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result["plots"] = write_plots(result, args.out)
    _print_table(result)
    return result


# --- set-up -------------------------------------------------------------------------------


def _context(args: argparse.Namespace) -> Context:
    from stac_edge_segmenter.loading import load_model
    from stac_eval.replay.link import LinkConfig
    from stac_eval.replay.runner import edge_timing, robot_timing
    from stac_eval.replay.simulation import ReplaySettings
    from stac_eval.replay.source import open_source
    from stac_eval.replay.truth import PseudoTruth, default_cache_dir, model_digest
    from stac_sensitivity.online import QPMapComputer

    model = load_model(args.model, device="cpu")
    model_key = model_digest(model)
    source = open_source(str(args.video))
    truth = PseudoTruth(default_cache_dir(), model, model_key, source, 1)
    index = truth.ensure(args.max_frames)
    count = min(index.count, args.max_frames) if args.max_frames else index.count
    offsets = index.offsets_s[:count]
    fps = float(round(1.0 / float(np.median(np.diff(offsets))), 3)) if count > 1 else 25.0
    calibration = args.calibration
    if str(calibration) == "feasibility":  # the built-in defaults, whatever file ships
        from stac_sensitivity.calibration import Calibration, save_calibration

        calibration = save_calibration(
            Calibration(), default_cache_dir() / "temporal" / "feasibility_calibration.json"
        )
    computer = QPMapComputer(model, calibration)
    args.threads = 1
    size = (index.width, index.height)
    timing = edge_timing(args, model, model_key, computer, source, default_cache_dir(), size)
    robot = robot_timing(args, source, default_cache_dir(), ReplaySettings(fps=fps), size)
    frames = list(source.frames(count))
    work_dir = args.work_dir or (default_cache_dir() / "temporal" / source.digest[:16])
    work_dir.mkdir(parents=True, exist_ok=True)
    key = {
        "version": BENCH_VERSION,
        "source": source.digest,
        "frames": count,
        "model": model_key,
        "calibration": str(computer.calibration),
        "timing": [timing.segment_ms, timing.map_ms],
        "link": args.link,
    }
    decoded_key = f"{model_key[:16]}-{model.device}-t1-b1"
    return Context(
        args, model, computer, truth, frames, fps, timing, LinkConfig.parse(args.link),
        work_dir, key, default_cache_dir() / "decoded" / decoded_key,
        (robot.near_ms, robot.far_ms),
    )  # fmt: skip


# --- 1. stream mode against the baselines ------------------------------------------------


def _stream_curves(context: Context, variants) -> dict:
    from stac_eval.temporal_maps import settings_for, simulated_point

    settings = settings_for(context)
    return {
        variant: [simulated_point(context, variant, crf, settings) for crf in context.args.crf]
        for variant in variants
    }


def _kbps(values, frames: int, fps: float) -> float:
    return float(8.0 * np.sum(values) * fps / frames / 1e3)


def _curve_table(points, fps: float) -> list[dict]:
    from stac_edge_segmenter.metrics import mean_iou

    table = []
    for point in points:
        frames = point.frames
        decoded = mean_iou(point.confusion["decoded_pseudo"].sum(0))
        table.append(
            {
                "crf": point.budget,
                "uplink_kbps": round(_kbps(point.uplink_bytes, frames, fps), 2),
                "map_feedback_kbps": round(_kbps(point.map_bytes, frames, fps), 3),
                "mask_feedback_kbps": round(_kbps(point.mask_bytes, frames, fps), 2),
                "decoded_miou": round(decoded, 4) if np.isfinite(decoded) else None,
                "timely_miou": round(mean_iou(point.confusion["timely_pseudo"].sum(0)), 4),
                "frames_sent": int(point.sent.sum()),
                "idr": int(point.idr.sum()),
                "counters": point.counters,
            }
        )
    return table


def _bd_rates(context: Context, curves: dict) -> dict:
    from stac_eval.replay.analysis import STREAM_AND_MAPS, UPLINK, Curve, bd_rates

    replay_curves = {name: Curve(name, "crf", points) for name, points in curves.items()}
    block = max(1, round(context.fps))
    baselines = [name for name in BASELINES if name in curves]
    bootstrap = context.args.bootstrap
    total = bd_rates(
        replay_curves, "stac", baselines, "decoded_pseudo", block, bootstrap, 0, STREAM_AND_MAPS
    )
    uplink = bd_rates(replay_curves, "stac", baselines, "decoded_pseudo", block, 0, 0, UPLINK)
    return {
        "bd_rate_pct": total["pct"],
        "bd_rate_ci95_pct": total.get("ci95_pct", {}),
        "bd_rate_pct_uplink_only": uplink["pct"],
        "stream_curves": {
            name: _curve_table(points, context.fps) for name, points in curves.items()
        },
    }


def _tried(context: Context, curves: dict) -> dict:
    """Each --tried variant of STAC stream mode: its BD-rates against the same baselines."""
    from stac_eval.temporal_maps import assignments, settings_for, simulated_point

    tried = {}
    for spec in context.args.tried:
        name, _, text = spec.partition(":")
        changes = dict(assignments(text))
        computer_keys = {k for k in changes if k.startswith("computer.")}
        options = {k.removeprefix("computer."): changes[k] for k in computer_keys}
        computer = _computer_for(context, changes.get("calibration"), options)
        settings = settings_for(
            context,
            **{k: v for k, v in changes.items() if k != "calibration" and k not in computer_keys},
        )
        points = [
            simulated_point(context, "stac", crf, settings, tag=f"_{name}", computer=computer)
            for crf in context.args.crf
        ]
        rates = _bd_rates(context, {**{k: v for k, v in curves.items() if k != "stac"},
                                    "stac": points})  # fmt: skip
        tried[name] = {
            "settings": changes,
            "bd_rate_pct": rates["bd_rate_pct"],
            "bd_rate_pct_uplink_only": rates["bd_rate_pct_uplink_only"],
            "points": rates["stream_curves"]["stac"],
        }
    return tried


def _computer_for(context: Context, calibration: str | None, options: dict | None = None):
    """The map computer of a --tried variant: the context's, or one with calibration
    'feasibility' (the built-in defaults of the feasibility experiment: alpha 0.5, dmax 10,
    21 levels, rate-blind) or a calibration JSON file; options: QPMapComputer keywords
    (computer.KEY=VALUE, e.g. computer.block_mb=0)."""
    from stac_sensitivity.calibration import Calibration, save_calibration
    from stac_sensitivity.online import QPMapComputer

    if not calibration and not options:
        return context.computer
    path = Path(calibration) if calibration else context.computer.calibration_path
    if calibration == "feasibility":
        path = save_calibration(Calibration(), context.work_dir / "feasibility_calibration.json")
    return QPMapComputer(context.model, path, **(options or {}))


# --- 2. delays ----------------------------------------------------------------------------


def _propagation(context: Context, masks: bool = True, maps: bool = True) -> dict:
    mask_results = _mask_delays(context) if masks else {}
    map_results = _map_delays(context) if maps else {}
    return {
        str(delay): {**mask_results.get(delay, {}), **map_results.get(delay, {})}
        for delay in context.args.delays
    }


def _mask_delays(context: Context) -> dict:
    """The robot's mask of frame t when the edge's mask of frame t-d arrives d frames late:
    through the robot's own FrameFlow and MaskPropagator (one direct flow per arrival, then
    per-frame composition), against holding it and against having none."""
    from stac_edge_segmenter.metrics import mask_confusion as confusion
    from stac_edge_segmenter.metrics import mean_iou as miou
    from stac_encoder.frame_flow import FrameFlow
    from stac_encoder.mask_warp import MaskPropagator
    from stac_eval.progress import progress_bar
    from stac_eval.temporal_maps import settings_for

    classes = context.model.num_classes
    frames = context.frames
    height, width = frames[0].image.shape[:2]
    results = {}
    flow_config = settings_for(context).flow
    with progress_bar(total=len(frames) * len(context.args.delays), desc="mask delays") as bar:
        for delay in context.args.delays:
            flow = FrameFlow(width, height, flow_config)
            propagator = MaskPropagator(flow)
            warped = np.zeros((classes, classes + 1), np.int64)
            held = np.zeros_like(warped)
            for position, frame in enumerate(frames):
                flow.add_frame(position + 1, frame.image)
                bar.update(1)
                if position < delay:
                    continue
                source = context.truth.mask(frames[position - delay].index)
                propagator.set_mask(source, position + 1 - delay)
                truth = context.truth.mask(frame.index)
                warped += confusion(truth, propagator.current().class_ids, classes)
                held += confusion(truth, source, classes)
            results[delay] = {
                "warped_miou": round(miou(warped), 4),
                "held_miou": round(miou(held), 4),
                "none_miou": 0.0,
            }
    return results


def _map_delays(context: Context) -> dict:
    from stac_eval.temporal_maps import map_delay_bd_rates

    return map_delay_bd_rates(context)


# --- 3. keyframe mode against stream mode --------------------------------------------------


def _keyframe_vs_stream(context: Context, stream_points) -> dict:
    """Keyframe mode at each staleness threshold (--stale-psnr-db) over the CRF sweep, against
    stream mode, at equal timely mIoU; 'all' takes the efficient points of every threshold
    (the operator picks threshold and CRF for the accuracy wanted)."""
    from stac_edge_segmenter.metrics import mean_iou as miou
    from stac_eval.bd_rate import NoOverlapError, bd_rate_pct
    from stac_eval.temporal_maps import settings_for, simulated_point

    fps = context.fps

    def curve(points):
        frames = points[0].frames
        rates = [_kbps(p.uplink_bytes, frames, fps) for p in points]
        return rates, [miou(p.confusion["timely_pseudo"].sum(0)) for p in points]

    def ratio(points) -> float | None:
        stream_rates, stream_miou = curve(stream_points)
        key_rates, key_miou = curve(points)
        try:
            return round(1.0 + bd_rate_pct(stream_rates, stream_miou, key_rates, key_miou) / 100, 4)
        except (NoOverlapError, ValueError):
            return None

    by_threshold, every = {}, []
    base = settings_for(context, decoded_stride=0)
    for threshold in context.args.stale_psnr_db:
        settings = replace(base, keyframes=replace(base.keyframes, stale_psnr_db=threshold))
        points = [
            simulated_point(context, "stac_keyframe", crf, settings) for crf in context.args.crf
        ]
        every += points
        by_threshold[f"{threshold:g}"] = {
            "uplink_ratio": ratio(points),
            "points": _curve_table(points, fps),
        }
    return {
        "uplink_ratio_at_equal_timely_miou": ratio(every),
        "how": "keyframe mode's uplink kbit/s over stream mode's, exp(mean log ratio) over the "
        "timely-mIoU range both cover (BD-rate + 1), efficient points of every staleness "
        "threshold; the edge's compute time is the measured (or --edge-ms) one",
        "by_stale_psnr_db": by_threshold,
        "stream": _curve_table(stream_points, fps),
    }


# --- 4. bitrate target ----------------------------------------------------------------------


def _rate_control(context: Context, stream_points) -> dict:
    from stac_eval.temporal_maps import rate_control_runs

    return rate_control_runs(context, stream_points)


# --- 5. robot timing ------------------------------------------------------------------------


def _robot_timing(context: Context) -> dict:
    from stac_eval.temporal_maps import robot_stage_timing

    return robot_stage_timing(context)


def write_plots(result: dict, out: Path) -> dict:
    """PNG figures beside the JSON: the stream-mode curves, keyframe vs stream, the delays and
    the bitrate target over time. Returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = out.with_suffix("")
    written = {}
    curves = result.get("stream_curves")
    if curves:
        figure, axis = plt.subplots(figsize=(6, 4.5))
        for name, points in curves.items():
            rates = [p["uplink_kbps"] + p["map_feedback_kbps"] for p in points]
            axis.plot(rates, [p["decoded_miou"] for p in points], marker="o", ms=3, label=name)
        bd = result.get("bd_rate_pct", {})
        axis.set_title(
            "stream mode, decoded mIoU; STAC BD-rate "
            + ", ".join(f"{k} {v:+.1f}%" for k, v in bd.items() if v is not None),
            fontsize=8,
        )
        _finish(axis, "uplink + map feedback, kbit/s", "decoded mIoU (vs model on raw frames)")
        written["stream_curves"] = _save(figure, stem, "stream_curves")
    keyframe = result.get("keyframe_vs_stream")
    if keyframe:
        figure, axis = plt.subplots(figsize=(6, 4.5))
        stream = keyframe["stream"]
        axis.plot([p["uplink_kbps"] for p in stream], [p["timely_miou"] for p in stream],
                  marker="o", ms=3, label="stream")  # fmt: skip
        for threshold, entry in keyframe["by_stale_psnr_db"].items():
            points = entry["points"]
            axis.plot([p["uplink_kbps"] for p in points], [p["timely_miou"] for p in points],
                      marker="s", ms=3, label=f"keyframe, stale < {threshold} dB")  # fmt: skip
        ratio = keyframe["uplink_ratio_at_equal_timely_miou"]
        axis.set_title(f"robot's own mask of every frame; uplink ratio {ratio}", fontsize=8)
        _finish(axis, "uplink, kbit/s", "timely mIoU (robot mask vs model on raw frame)")
        written["keyframe_vs_stream"] = _save(figure, stem, "keyframe_vs_stream")
    propagation = result.get("propagation")
    if propagation:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        delays = sorted(int(d) for d in propagation)
        for key, label in (("warped_miou", "warped"), ("held_miou", "held")):
            values = [propagation[str(d)].get(key) for d in delays]
            if any(v is not None for v in values):
                axes[0].plot(delays, values, marker="o", label=label)
        axes[0].set_title("masks d frames late: timely mIoU", fontsize=9)
        for key, label in (("map_warped_bd_rate_pct", "warped"), ("map_held_bd_rate_pct", "held")):
            values = [propagation[str(d)].get(key) for d in delays]
            if any(v is not None for v in values):
                axes[1].plot(delays, values, marker="o", label=label)
        axes[1].axhline(0.0, color="grey", lw=0.8)
        axes[1].set_title("maps d frames late: BD-rate vs uniform (none = 0)", fontsize=9)
        for axis in axes:
            axis.set_xlabel("delay, frames")
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        written["propagation"] = _save(figure, stem, "propagation")
    rate = result.get("rate_control")
    if rate and rate.get("series"):
        figure, axis = plt.subplots(figsize=(7, 4))
        for label, series in rate["series"].items():
            axis.plot(series["t_s"], series["kbps_2s"], label=label)
        axis.plot(rate["series_target"]["t_s"], rate["series_target"]["kbps"], "k--",
                  label="target")  # fmt: skip
        axis.set_xlabel("camera time, s")
        axis.set_ylabel("uplink over the last 2 s, kbit/s")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        written["rate_control"] = _save(figure, stem, "rate_control")
    return written


def _finish(axis, xlabel: str, ylabel: str) -> None:
    axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)


def _save(figure, stem: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    path = stem.with_name(f"{stem.name}_{name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _print_table(result: dict) -> None:
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("stream_curves",)}, indent=1)[
            :4000
        ]
    )


def _elapsed(started: float) -> float:
    return round(time.time() - started, 1)
