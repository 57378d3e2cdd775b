"""`stac-bench live`: the ROS graph on the dashcam clip at its recorded 25 fps.

Runs the real nodes as separate processes (stac_eval.ros.graph_runner) and measures the
robot's encoder node (CPU time per frame from /proc, over the playback only, so start-up is
excluded; sustained fps), the edge (CPU seconds per second of video from the start of playback
to the end of the drain, peak resident memory, frames segmented per second), capture-to-mask
latency, every bit both ways (serialized messages: uplink; maps, masks and keyframe requests
back), and the timely mIoU of the robot's mask of every camera frame against the model on that
raw frame (`stac_eval.ros.demo.score_masks`). `--edge` compares the one-process edge with the
two-process one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from stac_edge_segmenter.engines import ENGINE_NAMES
from stac_eval.bench_codec import default_video
from stac_eval.kernel_link import settings_from_spec
from stac_eval.ros.demo import find_launch_dir, score_masks, summarise
from stac_eval.ros.graph_runner import EDGE_EXECUTABLES, EDGE_PROCESSES, GraphRun, GraphRunConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--video",
        type=Path,
        default=default_video(),
        help="clip played at its recorded rate (default: $STAC_DATA_DIR or ../shared/data, "
        "video/solidWhiteRight.mp4)",
    )
    parser.add_argument("--max-frames", type=int, default=0, help="0 = the whole clip")
    parser.add_argument(
        "--duration-s", type=float, default=0.0, help="loop the clip this long (0 = once)"
    )
    parser.add_argument("--crf", type=float, default=28.0, help="encoder base quality")
    parser.add_argument(
        "--edge",
        choices=sorted(EDGE_PROCESSES),
        default="container",
        help="container: both edge nodes in one process (one decoder, one model); "
        "separate: one process per node",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads per edge process (default: two in all: 2 for the container, 1 per "
        "separate node)",
    )
    parser.add_argument(
        "--edge-engine",
        choices=ENGINE_NAMES,
        default=None,
        help="the segmenter's inference engine (default: the edge's configured one)",
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


def run(args: argparse.Namespace) -> dict:
    if not args.video.is_file():
        raise SystemExit(f"stac-bench live: clip not found: {args.video}")
    with tempfile.TemporaryDirectory(prefix="stac-live-") as out_dir:
        config = GraphRunConfig(
            video_uri=str(args.video),
            out_dir=Path(out_dir),
            launch_dir=args.launch_dir or find_launch_dir(),
            pace="recorded",
            max_frames=args.max_frames,
            play_duration_s=args.duration_s,
            crf=args.crf,
            edge_process=args.edge,
            encoded_qos=args.encoded_qos,
            link=args.link,
            torch_threads=args.torch_threads,
            edge_engine=args.edge_engine,
            record_bag=False,
            overlay_video=False,
        )
        result = GraphRun(config).run()
        scores = _scores(args, result)
        engine_lines = _engine_lines(result.logs)
    report = summarise(result, scores, "stac-bench live")
    encoded = result.encoded
    if len(encoded) < 2:
        raise SystemExit("stac-bench live: fewer than two frames were encoded")
    playback_s = (encoded[-1].stamp_ns - encoded[0].stamp_ns) * 1e-9
    encoder_cpu_s = result.cpu_s["encoder_node"] - result.cpu_at_play_s["encoder_node"]
    cpu_ms_per_frame = 1e3 * encoder_cpu_s / len(encoded)
    latency = np.asarray(result.mask_latency_ms)
    clip_s = playback_s * len(encoded) / (len(encoded) - 1)
    segmenter = result.statistics["stac_segmenter"]
    edge = sorted(EDGE_PROCESSES[args.edge])
    edge_cpu_s = sum(result.cpu_s[name] - result.cpu_at_play_s[name] for name in edge)
    out = {
        "clip": str(args.video),
        "edge": args.edge,
        "edge_processes": edge,
        "torch_threads_per_edge_process": config.edge_torch_threads,
        "edge_cpu_s_per_video_s": round(edge_cpu_s / clip_s, 3),
        "edge_peak_rss_mb": round(sum(result.peak_rss_mb[name] for name in edge), 1),
        "segmented_per_s": round(segmenter.frames_segmented / clip_s, 2),
        "frames_encoded": len(encoded),
        "resolution": _resolution(result),
        "encoder_cpu_ms_per_frame": round(cpu_ms_per_frame, 2),
        "encoder_max_fps_one_core": round(1e3 / cpu_ms_per_frame, 1),
        "sustained_fps": round((len(encoded) - 1) / playback_s, 2),
        "latency_ms_median": round(float(np.median(latency)), 1) if latency.size else None,
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 1) if latency.size else None,
        "uplink_bps": round(8 * sum(r.size_bytes for r in encoded) / clip_s, 1),
        "feedback_bps": round(8 * sum(result.qp_map_bytes) / clip_s, 1),
        "downlink_bps": report["downlink_bps"],
        "total_bps": report["total_bps"],
        "robot_timely_miou": report["robot_timely_miou"],
        "robot_timely_frames": report["robot_timely_frames"],
        "qp_maps": len(result.qp_map_bytes),
        "frames_with_qp_map": sum(1 for r in encoded if r.qp_map_seq > 0),
        "edge_engine_requested": args.edge_engine or "configured",
        "edge_engine_log": engine_lines,
        "frames_segmented": segmenter.frames_segmented,
        "frames_skipped": segmenter.frames_skipped,
        "exit_codes": result.exit_codes,
    }
    _print_table(out)
    return out


def _scores(args: argparse.Namespace, result) -> dict:
    """score_masks over the run (the clip's frame count when it looped)."""
    from stac_edge_segmenter.loading import load_model
    from stac_encoder.frame_sources import read_frames

    clip_frames = None
    if args.duration_s:
        clip_frames = sum(1 for _ in read_frames(str(args.video), max_frames=args.max_frames))
    return score_masks(result, str(args.video), load_model(), clip_frames)


def _engine_lines(logs: dict[str, Path]) -> list[str]:
    """What the edge said about its inference engine (the one it runs, any fallback)."""
    lines = []
    for executable in sorted(EDGE_EXECUTABLES & set(logs)):
        text = logs[executable].read_text(errors="replace") if logs[executable].is_file() else ""
        lines += [line.strip() for line in text.splitlines() if "engine" in line]
    return lines


def _resolution(result) -> str:
    if result.mask_size is None:
        return "unknown"
    return "{}x{}".format(*result.mask_size)


def _print_table(out: dict) -> None:
    rows = [
        ("edge", f"{out['edge']} ({', '.join(out['edge_processes'])})"),
        ("edge engine", "; ".join(out["edge_engine_log"]) or out["edge_engine_requested"]),
        ("edge CPU s per s of video", out["edge_cpu_s_per_video_s"]),
        ("edge peak resident memory", f"{out['edge_peak_rss_mb']} MiB"),
        ("frames segmented per s", out["segmented_per_s"]),
        ("frames encoded", out["frames_encoded"]),
        ("resolution", out["resolution"]),
        ("encoder CPU per frame", f"{out['encoder_cpu_ms_per_frame']} ms"),
        ("encoder fps one core could sustain", out["encoder_max_fps_one_core"]),
        ("sustained fps (recorded pace)", out["sustained_fps"]),
        ("capture-to-mask latency p50 / p95", f"{out['latency_ms_median']} / "
         f"{out['latency_ms_p95']} ms"),
        ("uplink", f"{out['uplink_bps'] / 1e3:.1f} kbit/s"),
        ("feedback", f"{out['feedback_bps'] / 1e3:.2f} kbit/s ({out['qp_maps']} maps)"),
        ("total both ways", f"{(out['total_bps'] or 0) / 1e3:.1f} kbit/s"),
        ("robot's timely mIoU", f"{out['robot_timely_miou']} ({out['robot_timely_frames']} "
         "frames)"),
        ("segmented / skipped", f"{out['frames_segmented']} / {out['frames_skipped']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
