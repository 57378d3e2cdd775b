"""`stac-demo`: the main job. Robot and edge nodes on this machine, a real clip, a report.

Plays a clip (default: OpenCV's vtest.avi from Debian's opencv-doc) through the real nodes as
separate processes over DDS, then writes to the output folder:
  bag/         rosbag2 (mcap) of encoded frames, QP maps, masks and statistics (Foxglove opens it)
  overlay.mp4  the mask overlay
  report.json, report.md  uplink and feedback bits/s, mIoU of the masks against the model's
               output on the uncompressed frames, capture-to-mask latency, frame accounting
  logs/        each node's log
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from stac_encoder.frame_sources import read_frames
from stac_eval.accounting import frame_accounting
from stac_eval.kernel_link import settings_from_spec
from stac_eval.progress import progress_bar
from stac_eval.ros.graph_runner import GraphRun, GraphRunConfig
from stac_eval.ros.recorder_node import GraphRunResult

DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def find_launch_dir() -> Path:
    """The repository's launch/ folder (packages are symlink-installed from the repo)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "launch" / "local.launch.py").is_file():
            return parent / "launch"
    raise FileNotFoundError("launch/local.launch.py not found; pass --launch-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stac-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file, bag or camera:N")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: out/demo-<time>)"
    )
    parser.add_argument("--max-frames", type=int, default=0, help="0 = the whole clip")
    parser.add_argument(
        "--pace", choices=("recorded", "fixed", "consumed"), default="recorded",
        help="recorded: the clip's own frame rate, as a live camera would deliver it",
    )  # fmt: skip
    parser.add_argument("--rate-hz", type=float, default=10.0, help="rate for --pace fixed")
    parser.add_argument("--crf", type=float, default=28.0, help="budget: base quality")
    parser.add_argument(
        "--mode",
        choices=("stream", "keyframe"),
        default="stream",
        help="the robot's mode: every frame (stream) or only stale frames (keyframe)",
    )
    parser.add_argument("--budget-shift-qp", type=int, default=0, help="budget: map shift")
    parser.add_argument("--period-frames", type=int, default=5, help="a QP map every N frames")
    parser.add_argument(
        "--edge",
        choices=("container", "separate"),
        default="container",
        help="the edge nodes in one process (container) or one process each",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="per edge process (default: two in all)",
    )
    parser.add_argument("--launch-dir", type=Path, default=None)
    parser.add_argument(
        "--encoded-qos",
        choices=("reliable", "best_effort"),
        default="reliable",
        help="the edge's subscription of the encoded stream: reliable (DDS retransmits) or "
        "best_effort (losses are lost frames, healed by keyframe requests)",
    )
    parser.add_argument(
        "--link",
        type=settings_from_spec,
        default=None,
        metavar="SPEC",
        help="emulate the robot-edge link with the kernel, e.g. 'rate=2mbit,loss=1%%' (tbf/htb "
        "rate cap, nftables loss; delay only where the kernel has netem); needs the private "
        "network namespace scripts/demo.sh runs in",
    )
    parser.add_argument("--no-bag", action="store_true", help="do not record the rosbag2")
    return parser


def masks_miou(result: GraphRunResult, video: str, model) -> tuple[float, int]:
    """mIoU of the received masks against the model on the uncompressed source frames.

    Frames are matched through the encoder's frame_seq (frame_seq n is the source's frame
    n - 1: the source publishes every frame and the encoder numbers them in order)."""
    from stac_edge_segmenter.metrics import ConfusionMatrix

    if video.startswith(("camera:", "/dev/video")):
        return float("nan"), 0  # a live camera cannot be read twice
    seq_by_stamp = result.frame_seq_by_stamp()
    stamps = {seq_by_stamp[s] - 1: s for s in result.mask_files if s in seq_by_stamp}
    if not stamps:
        return float("nan"), 0
    confusion = ConfusionMatrix(model.num_classes)
    frames = read_frames(video, max_frames=max(stamps) + 1)
    pairs = ((f.image, result.mask(stamps[f.index])) for f in frames if f.index in stamps)
    with progress_bar(total=len(stamps), desc="reference masks", unit="frame") as bar:
        while batch := list(itertools.islice(pairs, 8)):
            images = np.stack([image for image, _ in batch])
            reference = model.predict(images, with_probabilities=False).class_ids
            confusion.update(reference, np.stack([mask for _, mask in batch]))
            bar.update(len(batch))
    return confusion.mean_iou(), len(stamps)


def summarise(result: GraphRunResult, miou: float, miou_frames: int, command: str) -> dict:
    encoded = result.encoded
    duration_s = 0.0
    if len(encoded) > 1:
        duration_s = (encoded[-1].stamp_ns - encoded[0].stamp_ns) * 1e-9
        duration_s *= len(encoded) / (len(encoded) - 1)  # include the last frame's interval
    stats = {name: _statistics_dict(msg) for name, msg in result.statistics.items()}
    seg, enc = stats.get("stac_segmenter", {}), stats.get("stac_encoder", {})
    accounting = frame_accounting(result.frames_published, enc, seg)
    latency = np.asarray(result.mask_latency_ms)
    return {
        "command": command,
        "link": result.link,
        "frames": {
            **accounting,
            "keyframes": sum(1 for r in encoded if r.keyframe),
            "keyframe_requests": seg.get("keyframe_requests"),
            "recovery_ms_max": round(seg.get("recovery_ms_max", 0.0), 1),
            "frames_with_qp_map": sum(1 for r in encoded if r.qp_map_seq > 0),
        },
        "duration_s": round(duration_s, 2),
        "uplink_bps": round(8 * sum(r.size_bytes for r in encoded) / duration_s, 1)
        if duration_s
        else None,
        "feedback_bps": round(8 * sum(result.qp_map_bytes) / duration_s, 1) if duration_s else None,
        "qp_maps": len(result.qp_map_bytes),
        "mask_feedback_bps": round(8 * sum(result.mask_feedback_bytes) / duration_s, 1)
        if duration_s
        else None,
        "masks_fed_back": len(result.mask_feedback_bytes),
        "robot_masks": len(result.robot_mask_sizes),
        "miou_vs_uncompressed": None if np.isnan(miou) else round(miou, 4),
        "miou_frames": miou_frames,
        "latency_ms": {
            "median": round(float(np.median(latency)), 1) if latency.size else None,
            "p95": round(float(np.percentile(latency, 95)), 1) if latency.size else None,
        },
        "exit_codes": result.exit_codes,
        "wall_s": round(result.wall_s, 1),
        "node_statistics": stats,
    }


def _statistics_dict(msg) -> dict:
    fields = msg.get_fields_and_field_types()
    return {name: getattr(msg, name) for name in fields if name != "header"}


def report_markdown(report: dict) -> str:
    frames = report["frames"]
    uplink, feedback = report["uplink_bps"], report["feedback_bps"]
    share = f" ({100 * feedback / uplink:.2f}% of the uplink)" if uplink and feedback else ""
    masks = report.get("mask_feedback_bps")
    mask_share = f" ({100 * masks / uplink:.2f}% of the uplink)" if uplink and masks else ""
    lines = [
        "# STAC demo report",
        "",
        f"`{report['command']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| clip duration | {report['duration_s']} s |",
        f"| link | {_link_text(report['link'])} |",
        f"| uplink (EncodedFrame messages) | {_kbps(uplink)} |",
        f"| feedback: QP maps (QPMap messages, {report['qp_maps']} maps) | "
        f"{_kbps(feedback)}{share} |",
        f"| feedback: masks (SegmentationMask messages, {report.get('masks_fed_back')} masks; "
        f"not in the line above) | {_kbps(masks)}{mask_share} |",
        f"| robot masks published (one per camera frame) | {report.get('robot_masks')} |",
        f"| mIoU of masks vs model on uncompressed frames ({report['miou_frames']} frames) "
        f"| {report['miou_vs_uncompressed']} |",
        f"| capture-to-mask latency, median / p95 | {report['latency_ms']['median']} / "
        f"{report['latency_ms']['p95']} ms |",
        f"| frames published by the source | {frames['published']} |",
        f"| not received by the robot / failed on the robot | "
        f"{frames['not_received_by_robot']} / {frames['failed_on_robot']} |",
        f"| kept on the robot (keyframe mode: its mask carried from the last keyframe) | "
        f"{frames.get('kept_on_robot', 0)} |",
        f"| lost on the link (of which seen as frame_seq gaps) | {frames['lost_on_link']} "
        f"({frames['lost_on_link_seen_as_gaps']}) |",
        f"| segmented / skipped (newest-frame policy) / failed / pending on the edge | "
        f"{frames['segmented']} / {frames['skipped']} / {frames['failed']} / "
        f"{frames['pending']} |",
        f"| keyframes sent / requested by the edge | {frames['keyframes']} / "
        f"{frames['keyframe_requests']} |",
        f"| longest outage to the next mask | {frames['recovery_ms_max']} ms |",
        f"| encoded frames with a QP map applied | {frames['frames_with_qp_map']} |",
        f"| every frame accounted for | {'yes' if frames['every_frame_accounted_for'] else 'NO'} |",
        f"| node exit codes | {report['exit_codes']} |",
    ]
    return "\n".join(lines) + "\n"


def _link_text(link: dict | None) -> str:
    if link is None:
        return "none (shared memory between the processes)"
    rate = f"{link['rate_bps'] / 1e3:g} kbit/s" if link["rate_bps"] else "no rate cap"
    return f"kernel: {rate}, loss {100 * link['loss']:g}%, delay {link['delay']}"


def _kbps(bps: float | None) -> str:
    return "n/a" if bps is None else f"{bps / 1e3:.1f} kbit/s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.out = args.out or Path("out") / time.strftime("demo-%Y%m%d-%H%M%S")
    if not args.video.startswith("camera:") and not Path(args.video).exists():
        print(f"stac-demo: video not found: {args.video}", file=sys.stderr)
        return 2
    config = GraphRunConfig(
        video_uri=args.video,
        out_dir=args.out,
        launch_dir=args.launch_dir or find_launch_dir(),
        pace=args.pace,
        rate_hz=args.rate_hz,
        max_frames=args.max_frames,
        crf=args.crf,
        mode=args.mode,
        budget_shift_qp=args.budget_shift_qp,
        period_frames=args.period_frames,
        edge_process=args.edge,
        encoded_qos=args.encoded_qos,
        link=args.link,
        torch_threads=args.torch_threads,
        record_bag=not args.no_bag,
    )
    if (args.out / "bag").exists() and config.record_bag:
        print(f"stac-demo: {args.out / 'bag'} exists; choose another --out", file=sys.stderr)
        return 2
    print(f"stac-demo: playing {args.video} through the STAC graph; output in {args.out}")
    result = GraphRun(config).run()
    print("stac-demo: comparing masks with the model on the uncompressed frames")
    from stac_edge_segmenter.loading import load_model

    miou, miou_frames = masks_miou(result, args.video, load_model())
    report = summarise(result, miou, miou_frames, shlex.join(["stac-demo", *argv]))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = report_markdown(report)
    (args.out / "report.md").write_text(markdown)
    print(markdown)
    ok = report["frames"]["every_frame_accounted_for"] and not any(result.exit_codes.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
