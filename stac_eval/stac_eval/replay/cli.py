"""`stac-replay`: rosbag / video replay evaluation of STAC against today's image transports.

stac-replay run SOURCE --out DIR      every method over its budget sweep, over an emulated
                                      link, with report.md/json, plots and bags
stac-replay convert VIDEO --out BAG   a clip as a rosbag2 of sensor_msgs/Image
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stac_eval.replay.simulation import METHODS


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"'{text}': {error}") from error

    return parse


def build_parser() -> argparse.ArgumentParser:
    from stac_eval.replay.runner import DEFAULT_CRFS, DEFAULT_JPEG_QUALITIES, DEFAULT_LINK

    parser = argparse.ArgumentParser(prog="stac-replay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="evaluate STAC and the baselines on a recording",
        description="Drive the robot and edge cores over a recording through an emulated "
        "link; score decoded and timely mIoU; BD-rates with block-bootstrap intervals.",
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
        "--edge-ms",
        default="",
        help="edge compute per frame: MS, or FORWARD_MS/SENSITIVITY_MS (default: measured "
        "once on this machine and cached)",
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
    run.add_argument("--gop", type=int, default=50, help="H.264 keyframe interval, frames")
    run.add_argument("--preset", default="veryfast", help="x264 preset")
    run.add_argument("--two-level-top-fraction", type=float, default=0.4)
    run.add_argument("--no-warp", action="store_true", help="apply maps without flow warping")
    run.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    run.add_argument("--calibration", type=Path, default=None, help="STAC calibration JSON")
    run.add_argument("--device", default="cpu", help="torch device")
    run.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (more thrash on a busy machine)"
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

    convert = sub.add_parser("convert", help="write a video file as a rosbag2 of images")
    convert.add_argument("video", help="video file")
    convert.add_argument("--out", type=Path, required=True, help="bag folder to create")
    convert.add_argument("--topic", default="/camera/image_raw")
    convert.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    convert.add_argument(
        "--compressed", action="store_true", help="sensor_msgs/CompressedImage (JPEG)"
    )
    convert.add_argument("--jpeg-quality", type=int, default=90)
    convert.add_argument("--max-frames", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = shlex.join(["stac-replay", *argv])
    if args.command == "convert":
        from stac_eval.replay.bags import convert_video
        from stac_eval.replay.runner import _progress

        with _progress(None, "convert") as bar:
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
    from stac_eval.replay.runner import run

    report = run(args, command)
    print(Path(args.out / "report.md").read_text())
    del report
    return 0


if __name__ == "__main__":
    sys.exit(main())
