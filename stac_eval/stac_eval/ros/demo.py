"""`stac-demo`: the main job. Robot and edge nodes on this machine, a real clip, a report.

Plays a clip (default: OpenCV's vtest.avi from Debian's opencv-doc) through the real nodes as
separate processes over DDS, then writes to the output folder:
  bag/         rosbag2 (mcap) of encoded frames, QP maps, masks and statistics (Foxglove opens it)
  overlay.mp4  the mask overlay
  report.json, report.md  every bit both ways (uplink; maps, masks and keyframe requests back),
               the timely mIoU of the robot's mask of every camera frame and the mIoU of the
               edge's masks, both against the model on the uncompressed frame with that stamp,
               capture-to-mask latency, frame accounting
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
from stac_eval.replay.wire import keyframe_request_bytes
from stac_eval.ros.graph_runner import GraphRun, GraphRunConfig, GraphStartError
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
    parser.add_argument(
        "--launch-dir", type=Path, default=None, help="launch files (default: the repository's)"
    )
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


def camera_indices(result: GraphRunResult, clip_frames: int | None = None) -> dict[int, int]:
    """Camera stamp (ns) -> the source frame it was, for every camera frame of the run.

    The source publishes the clip's frames in order (looping after `clip_frames` when it
    loops) over a reliable camera topic, and the robot publishes a mask and its age for every
    camera frame with its stamp: when the run shows as many camera stamps as the source
    published, the k-th stamp is frame k. Otherwise, in stream mode (every camera frame
    encoded), frame_seq n is frame n - 1; else nothing can be matched ({})."""
    stamps = result.camera_stamps()
    if result.frames_published and len(stamps) == result.frames_published:
        pairs = enumerate(stamps)
    elif len(result.encoded) == len(stamps):
        pairs = ((seq - 1, stamp) for stamp, seq in result.frame_seq_by_stamp().items())
    else:
        return {}
    return {stamp: index % clip_frames if clip_frames else index for index, stamp in pairs}


def score_masks(result: GraphRunResult, video: str, model, clip_frames: int | None = None):
    """Both accuracies of a run, against the model on the uncompressed frame of each stamp:
    the edge's masks (`edge_miou`, over the frames it segmented) and the robot's mask of every
    camera frame (`robot_timely_miou`: what the robot held at the frame's capture; before the
    edge's first mask its pixels have no class and count as missed). None where the frames
    cannot be read again (a live camera) or matched (`camera_indices`)."""
    from stac_edge_segmenter.metrics import mask_confusion, mean_iou

    empty = {"edge_miou": None, "edge_frames": 0, "robot_timely_miou": None, "robot_frames": 0}
    if video.startswith(("camera:", "/dev/video")):
        return empty  # a live camera cannot be read twice
    index_of = camera_indices(result, clip_frames)
    wanted: dict[int, list[tuple[str, int]]] = {}
    for kind, files in (("edge", result.mask_files), ("robot", result.robot_mask_files)):
        for stamp in files:
            if stamp in index_of:
                wanted.setdefault(index_of[stamp], []).append((kind, stamp))
    if not wanted:
        return empty
    classes = model.num_classes
    totals = {kind: np.zeros((classes, classes + 1), np.int64) for kind in ("edge", "robot")}
    counts = dict.fromkeys(totals, 0)
    frames = (f for f in read_frames(video, max_frames=max(wanted) + 1) if f.index in wanted)
    with progress_bar(total=len(wanted), desc="reference masks", unit="frame") as bar:
        while batch := list(itertools.islice(frames, 8)):
            images = np.stack([frame.image for frame in batch])
            references = model.predict(images, with_probabilities=False).class_ids
            for frame, reference in zip(batch, references, strict=True):
                for kind, stamp in wanted[frame.index]:
                    mask = result.mask(stamp) if kind == "edge" else result.robot_mask(stamp)
                    totals[kind] += mask_confusion(reference, mask, classes)
                    counts[kind] += 1
            bar.update(len(batch))

    def value(kind: str):
        return round(mean_iou(totals[kind]), 4) if counts[kind] else None

    return {
        "edge_miou": value("edge"),
        "edge_frames": counts["edge"],
        "robot_timely_miou": value("robot"),
        "robot_frames": counts["robot"],
    }


def summarise(result: GraphRunResult, scores: dict | None, command: str) -> dict:
    """The report of a run: frames accounted for, every bit both ways (serialized messages the
    recorder saw; keyframe requests from the segmenter's count), latency, and `score_masks`'s
    accuracies (None: not scored)."""
    scores = scores or {}
    stamps = result.camera_stamps() or [r.stamp_ns for r in result.encoded]
    duration_s = 0.0
    if len(stamps) > 1:
        duration_s = (stamps[-1] - stamps[0]) * 1e-9 * len(stamps) / (len(stamps) - 1)
    stats = {name: _statistics_dict(msg) for name, msg in result.statistics.items()}
    seg, enc = stats.get("stac_segmenter", {}), stats.get("stac_encoder", {})
    accounting = frame_accounting(result.frames_published, enc, seg)
    latency = np.asarray(result.mask_latency_ms)
    encoded = result.encoded
    request_bytes = (seg.get("keyframe_requests") or 0) * keyframe_request_bytes()
    bytes_sent = {
        "uplink_bps": sum(r.size_bytes for r in encoded),
        "feedback_bps": sum(result.qp_map_bytes),
        "mask_feedback_bps": sum(result.mask_feedback_bytes),
        "keyframe_request_bps": request_bytes,
    }
    bytes_sent["downlink_bps"] = sum(
        bytes_sent[k] for k in ("feedback_bps", "mask_feedback_bps", "keyframe_request_bps")
    )
    bytes_sent["total_bps"] = bytes_sent["uplink_bps"] + bytes_sent["downlink_bps"]
    rates = {
        name: round(8 * value / duration_s, 1) if duration_s else None
        for name, value in bytes_sent.items()
    }
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
        **rates,
        "qp_maps": len(result.qp_map_bytes),
        "masks_fed_back": len(result.mask_feedback_bytes),
        "robot_masks": len(result.robot_mask_sizes),
        "robot_frames_without_mask": sum(1 for age in result.robot_mask_ages.values() if age < 0),
        "robot_timely_miou": scores.get("robot_timely_miou"),
        "robot_timely_frames": scores.get("robot_frames", 0),
        "miou_vs_uncompressed": scores.get("edge_miou"),
        "miou_frames": scores.get("edge_frames", 0),
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
    uplink = report["uplink_bps"]

    def share(key: str) -> str:
        value = report.get(key)
        return f" ({100 * value / uplink:.2f}% of the uplink)" if uplink and value else ""

    lines = [
        "# STAC demo report",
        "",
        f"`{report['command']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| clip duration | {report['duration_s']} s |",
        f"| link | {_link_text(report['link'])} |",
        f"| robot's mask of every camera frame: timely mIoU vs the model on that raw frame "
        f"({report['robot_timely_frames']} frames; {report['robot_frames_without_mask']} before "
        f"the first mask, counted as missed) | {report['robot_timely_miou']} |",
        f"| **total both ways** (uplink + everything sent back) | {_kbps(report['total_bps'])} |",
        f"| uplink (EncodedFrame messages) | {_kbps(uplink)} |",
        f"| downlink (maps + masks + keyframe requests) | {_kbps(report['downlink_bps'])}"
        f"{share('downlink_bps')} |",
        f"| - QP maps (QPMap messages, {report['qp_maps']} maps) | "
        f"{_kbps(report['feedback_bps'])}{share('feedback_bps')} |",
        f"| - masks (SegmentationMask messages, {report.get('masks_fed_back')} masks) | "
        f"{_kbps(report['mask_feedback_bps'])}{share('mask_feedback_bps')} |",
        f"| - keyframe requests ({frames['keyframe_requests']}) | "
        f"{_kbps(report['keyframe_request_bps'])} |",
        f"| robot masks published (one per camera frame) | {report.get('robot_masks')} |",
        f"| edge masks: mIoU vs model on uncompressed frames ({report['miou_frames']} frames) "
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
    try:
        result = GraphRun(config).run()
    except GraphStartError as error:
        print(f"stac-demo: {error}", file=sys.stderr)
        return 1
    print("stac-demo: comparing the masks with the model on the uncompressed frames")
    from stac_edge_segmenter.loading import load_model

    scores = score_masks(result, args.video, load_model())
    report = summarise(result, scores, shlex.join(["stac-demo", *argv]))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = report_markdown(report)
    (args.out / "report.md").write_text(markdown)
    print(markdown)
    ok = report["frames"]["every_frame_accounted_for"] and not any(result.exit_codes.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
