"""`stac-replay`: rosbag / video replay evaluation of STAC against today's image transports.

stac-replay run SOURCE --out DIR      the system comparison: every method over its sweep,
                                      over an emulated link, with report.md/json, plots, bags
stac-replay edge-timing SOURCE --out FILE
                                      the edge's forward and sensitivity-pass times on this
                                      machine's --device (a GPU: --edge-profile FILE)
stac-replay convert VIDEO --out BAG   a clip as a rosbag2 of sensor_msgs/Image
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stac_eval.replay.simulation import METHODS, ReplaySettings


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"'{text}': {error}") from error

    return parse


def build_parser() -> argparse.ArgumentParser:
    from stac_codec.h264_encoder import PRESETS
    from stac_edge_segmenter.engines import DEFAULT_ENGINE, ENGINE_NAMES
    from stac_encoder.keyframes import KeyframeConfig
    from stac_eval.replay.edge_profile import NODE_THREADS_NOTE, PROFILES
    from stac_eval.replay.runner import (
        DEFAULT_CRFS,
        DEFAULT_JPEG_QUALITIES,
        DEFAULT_LINK,
        DEFAULT_STALE_PSNR_DB,
    )

    parser = argparse.ArgumentParser(prog="stac-replay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="the system comparison: STAC's modes and today's transports on a recording",
        description="Drive the robot and edge cores over a recording through an emulated "
        "link; count every message both ways; score decoded mIoU and the timely mIoU of the "
        "mask the robot holds at each frame; BD-rates with block-bootstrap intervals.",
    )
    run.add_argument("source", help="video file, or rosbag2 (folder, .mcap or .db3)")
    run.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    run.add_argument("--topic", default="", help="bag image topic (default: the first one)")
    run.add_argument("--labels", type=Path, default=None, help="folder of class-id PNGs")
    run.add_argument("--label-topic", default="", help="bag topic of mono8 class-id labels")
    run.add_argument("--max-frames", type=int, default=0, help="first N frames only (0: all)")
    run.add_argument(
        "--methods",
        type=_csv(str),
        default=list(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    run.add_argument(
        "--link",
        default=DEFAULT_LINK,
        help="rate=R,delay=D,loss=L[,downdelay=D][,queue=N][,seed=S], e.g. "
        f"rate=2mbit,delay=40ms,loss=1%% (default {DEFAULT_LINK.replace('%', '%%')})",
    )
    run.add_argument(
        "--robot",
        choices=("warp", "held"),
        default="warp",
        help="the robot's mask of each frame: warp (this suite's RobotLoop carries the "
        "newest mask by flow) or held (the newest mask as it came, today's transports)",
    )
    run.add_argument(
        "--edge-profile",
        default="measured",
        help=f"edge compute times: {' or '.join(PROFILES)} (fast: a GPU edge, the shipped "
        "model as measured on an NVIDIA H200, any other model published figures), or a JSON "
        "file from `stac-replay edge-timing`",
    )
    run.add_argument(
        "--engine",
        choices=ENGINE_NAMES,
        default=DEFAULT_ENGINE,
        help="the edge's inference engine whose forward the measured profile times (default: "
        "the segmenter's)",
    )
    run.add_argument(
        "--edge-threads",
        type=int,
        default=0,
        help="threads the measured profile times the edge's forward and sensitivity pass "
        f"with, as the edge node runs them (default 0: {NODE_THREADS_NOTE}); recorded in "
        "the report's edge_profile",
    )
    run.add_argument(
        "--edge-ms",
        default="",
        help="fixed edge compute per frame instead of a profile: MS, or FORWARD_MS/SENSITIVITY_MS",
    )
    run.add_argument(
        "--robot-encode-ms",
        default="",
        help="the robot's x264 time per frame instead of timing it on the clip (cached): MS, "
        "or NEAR_MS/FAR_MS (a frame of --preset / a far keyframe of keyframe mode's far "
        "preset); 0: frames enter the uplink at capture; recorded in the report's robot_encode",
    )
    run.add_argument(
        "--stale-psnr-db",
        type=_csv(float),
        default=list(DEFAULT_STALE_PSNR_DB),
        help="keyframe methods' staleness thresholds, each swept over --crf (99: a keyframe "
        "whenever the edge is free)",
    )
    run.add_argument(
        "--crf",
        type=_csv(float),
        default=list(DEFAULT_CRFS),
        help="H.264 base qualities",
    )
    run.add_argument(
        "--jpeg-quality",
        type=_csv(int),
        default=list(DEFAULT_JPEG_QUALITIES),
        help="JPEG qualities",
    )
    run.add_argument(
        "--period-frames", type=int, default=5, help="a map at most every N decoded frames"
    )
    run.add_argument(
        "--min-map-interval-s",
        type=float,
        default=1.0,
        help="at least this much camera time between two maps' frames (0: no limit)",
    )
    run.add_argument(
        "--max-compute-share",
        type=float,
        default=0.5,
        help="largest share of the edge worker's time spent on sensitivity passes",
    )
    run.add_argument("--gop", type=int, default=50, help="H.264 refresh period, frames")
    run.add_argument(
        "--refresh",
        choices=("auto", "idr", "intra_refresh", "none"),
        default="auto",
        help="what happens every --gop frames (the encoder node's refresh; auto: intra refresh "
        "under a bitrate target, else IDR)",
    )
    run.add_argument(
        "--mbtree",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="x264's lookahead-less MB-tree (not with --refresh idr)",
    )
    run.add_argument(
        "--map-aq-strength",
        type=float,
        default=0.5,
        help="x264 AQ strength the maps ask for (0: the calibration's; 1.0: map on top of AQ)",
    )
    run.add_argument("--preset", default="veryfast", help="x264 preset")
    run.add_argument(
        "--two-level-top-fraction",
        type=float,
        default=0.4,
        help="two_level method: share of macroblocks at the finer level",
    )
    run.add_argument("--no-warp", action="store_true", help="apply maps without flow warping")
    run.add_argument(
        "--map-fade-px",
        type=float,
        default=ReplaySettings.map_fade_px,
        help="the robot's warped map at F / (F + d) of its strength, d the content's mean "
        "displacement since the map's frame, px (the encoder node's map_fade_px; 0: off)",
    )
    run.add_argument(
        "--map-worker-nice",
        type=int,
        default=ReplaySettings.map_worker_nice,
        help="how much nicer than the segmenter the edge's map worker runs (the edge "
        "nodes' map_worker_nice, 0..19): its share of the cores while both work",
    )
    run.add_argument(
        "--aq-motion-fade-px",
        type=float,
        default=ReplaySettings.aq_motion_fade_px,
        help="a map method's x264 AQ at F / (F + m) on P-frames, m the camera's motion since "
        "the reference picture (the median macroblock's), px (the encoder node's "
        "aq_motion_fade_px; 0: x264's own AQ at the maps' strength)",
    )
    run.add_argument(
        "--keyframe-far-preset",
        default=KeyframeConfig.far_preset,
        choices=("", *PRESETS),
        help="keyframe methods: x264 preset of a keyframe far from the one before (the encoder "
        "node's keyframe_far_preset; '': --preset for every frame)",
    )
    run.add_argument(
        "--keyframe-far-gap-frames",
        type=int,
        default=KeyframeConfig.far_gap_frames,
        help="keyframe methods: camera frames from the keyframe before that make one far (the "
        "encoder node's keyframe_far_gap_frames; 0: never)",
    )
    run.add_argument(
        "--no-keyframe-far-when-free",
        dest="keyframe_far_when_free",
        action="store_false",
        help="keyframe methods: a keyframe nearer than --keyframe-far-gap-frames never gets the "
        "far preset (default: it does while far keyframes' masks are held no older; the encoder "
        "node's keyframe_far_when_free)",
    )
    run.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    run.add_argument("--calibration", type=Path, default=None, help="STAC calibration JSON")
    run.add_argument("--device", default="cpu", help="torch device")
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of the replay's own model passes (reference masks, decoded "
        "frames); the edge's timing uses --edge-threads",
    )
    run.add_argument("--batch-size", type=int, default=1, help="frames per DNN batch")
    run.add_argument("--cache-dir", type=Path, default=None, help="default ~/.cache/stac-replay")
    run.add_argument("--bootstrap", type=int, default=1000, help="BD-rate CI resamples")
    run.add_argument("--block-s", type=float, default=1.0, help="bootstrap block, seconds")
    run.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    run.add_argument(
        "--bag-point", type=int, default=None, help="sweep index written as a bag (default: mid)"
    )
    run.add_argument("--no-bag", action="store_true", help="write no bags")

    timing = sub.add_parser(
        "edge-timing",
        help="measure the edge's compute times on this machine (e.g. --device cuda)",
        description="Medians of --forwards forwards and --passes sensitivity passes on the "
        "source's first 4 frames, written as JSON that `stac-replay run --edge-profile FILE` "
        "reads.",
    )
    timing.add_argument("source", help="video file, or rosbag2")
    timing.add_argument("--out", type=Path, required=True, help="JSON file to write")
    timing.add_argument("--topic", default="", help="bag image topic")
    timing.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    timing.add_argument("--calibration", type=Path, default=None, help="STAC calibration JSON")
    timing.add_argument("--device", default="cpu", help="torch device (cuda for a GPU edge)")
    timing.add_argument(
        "--threads",
        type=int,
        default=0,
        help=f"the edge's CPU threads (default 0: {NODE_THREADS_NOTE})",
    )
    timing.add_argument(
        "--engine", choices=ENGINE_NAMES, default=DEFAULT_ENGINE, help="inference engine"
    )
    timing.add_argument("--forwards", type=int, default=6, help="timed forwards (median)")
    timing.add_argument("--passes", type=int, default=4, help="timed sensitivity passes (median)")

    convert = sub.add_parser("convert", help="write a video file as a rosbag2 of images")
    convert.add_argument("video", help="video file")
    convert.add_argument("--out", type=Path, required=True, help="bag folder to create")
    convert.add_argument("--topic", default="/camera/image_raw", help="image topic to write")
    convert.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage"
    )
    convert.add_argument(
        "--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG)"
    )
    convert.add_argument("--jpeg-quality", type=int, default=90, help="with --compressed")
    convert.add_argument("--max-frames", type=int, default=0, help="first N frames (0: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = shlex.join(["stac-replay", *argv])
    if args.command == "convert":
        from stac_eval.progress import progress_bar
        from stac_eval.replay.bags import convert_video

        with progress_bar(desc="convert", unit="frame") as bar:
            count = convert_video(
                args.video,
                args.out,
                topic=args.topic,
                storage=args.storage,
                compressed=args.compressed,
                jpeg_quality=args.jpeg_quality,
                max_frames=args.max_frames,
                progress=bar,
            )
        print(f"wrote {count} frames to {args.out}")
        return 0
    if args.command == "edge-timing":
        return _edge_timing(args)
    from stac_eval.replay.runner import run

    if args.edge_ms and args.edge_profile != "measured":
        raise SystemExit("give --edge-ms or --edge-profile, not both")
    if args.edge_threads < 0:
        raise SystemExit(f"--edge-threads {args.edge_threads}: expected >= 0 (0: the node's)")
    report = run(args, command)
    print(Path(args.out / "report.md").read_text())
    del report
    return 0


def _edge_timing(args: argparse.Namespace) -> int:
    import json

    import torch

    from stac_edge_segmenter.loading import load_model
    from stac_eval.replay.edge_profile import measure_edge, node_default_threads
    from stac_eval.replay.source import open_source
    from stac_sensitivity.online import QPMapComputer

    threads = args.threads or node_default_threads()
    torch.set_num_threads(threads)
    model = load_model(args.model, device=args.device)
    source = open_source(args.source, args.topic)
    images = [frame.image for frame in source.frames(4)]
    computer = QPMapComputer(model, args.calibration)
    data = measure_edge(model, computer, images, threads, args.engine, args.forwards, args.passes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
