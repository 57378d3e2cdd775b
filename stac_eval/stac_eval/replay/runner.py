"""`stac-replay run`: every method over its sweep, cached per point, then the report.

Steps (each with a progress bar): the pseudo ground truth of every frame (cached per model and
source), the edge profile (`edge_profile`: measured once and cached, the fast GPU profile, a
file, or --edge-ms), then one simulation per method and operating point
(`simulation.PointReplay`), each saved under DIR/points/ as soon as it is done with a key of
everything that shaped it; a rerun with the same options loads finished points instead of
running them again, so an interrupted run resumes. The model's masks of decoded pictures are
cached by content (`accuracy.DecodedMasks`), so another edge profile or a robot-side change
does not run the model again on a stream it has seen. The chosen operating point of each
method (the middle of its sweep by default) also gets a bag under DIR/bags/.

Keyframe methods sweep the staleness threshold (--stale-psnr-db) as well as the CRF: the
operator picks both, and a BD-rate takes the efficient points of the whole grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from stac_edge_segmenter.loading import load_model
from stac_encoder.keyframes import KeyframeConfig
from stac_eval.progress import progress_bar
from stac_eval.replay.accounting import PointResult
from stac_eval.replay.analysis import STREAM_AND_MAPS, TOTAL, UPLINK, Curve, bd_rates, point_summary
from stac_eval.replay.bags import write_point_bag
from stac_eval.replay.edge_profile import (
    EdgeTiming,
    fast_edge_timing,
    measured_edge_timing,
    node_default_threads,
    timing_from_file,
)
from stac_eval.replay.link import LinkConfig
from stac_eval.replay.report import write_outputs
from stac_eval.replay.robot_timing import RobotTiming, measured_robot_timing
from stac_eval.replay.simulation import (
    BASELINES,
    METHODS,
    STAC_METHODS,
    PointReplay,
    ReplaySettings,
)
from stac_eval.replay.source import bag_labels, label_folder, open_source, read_label_png
from stac_eval.replay.truth import PseudoTruth, default_cache_dir, model_digest
from stac_sensitivity.online import QPMapComputer

REPLAY_VERSION = 9  # bump when a change alters results, so cached points are recomputed
DEFAULT_CRFS = (18, 25, 32, 39, 46)
DEFAULT_JPEG_QUALITIES = (10, 20, 35, 55, 80)
DEFAULT_STALE_PSNR_DB = (22, 26, 28, 30, 34, 99)
DEFAULT_LINK = "rate=10mbit,delay=20ms,loss=0%,queue=30"


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """One point of a method's sweep: its budget (CRF or JPEG quality) and, in keyframe
    mode, the staleness threshold."""

    budget: float
    stale_psnr_db: float | None = None

    def name(self, method: str) -> str:
        knob = METHODS[method].knob
        stale = "" if self.stale_psnr_db is None else f"_stale{self.stale_psnr_db:g}"
        return f"{method}_{knob}{self.budget:g}{stale}"

    def settings(self, base: ReplaySettings) -> ReplaySettings:
        if self.stale_psnr_db is None:
            return base
        keyframes = dataclasses.replace(base.keyframes, stale_psnr_db=self.stale_psnr_db)
        return dataclasses.replace(base, keyframes=keyframes)


def sweep(args: argparse.Namespace, method: str) -> list[OperatingPoint]:
    """The operating points of `method`: its knob's values (keyframe mode: every staleness
    threshold at every CRF)."""
    if METHODS[method].knob == "quality":
        return [OperatingPoint(float(q)) for q in args.jpeg_quality]
    if METHODS[method].mode == "keyframe":
        return [
            OperatingPoint(float(crf), float(stale))
            for stale in args.stale_psnr_db
            for crf in args.crf
        ]
    return [OperatingPoint(float(crf)) for crf in args.crf]


def _key(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _fps(offsets: list[float]) -> float:
    if len(offsets) < 2:
        return 25.0
    interval = float(np.median(np.diff(offsets)))
    return 1.0 / interval if interval > 0 else 25.0


def _labels(args, source, offsets: list[float], count: int) -> tuple[dict, str | None]:
    if args.labels:
        paths = label_folder(args.labels)
        labels = {i: read_label_png(p) for i, p in paths.items() if i < count}
        digest = _key({str(i): p.name for i, p in paths.items()})
        return labels, f"folder {args.labels} ({len(labels)} frames, key {digest[:12]})"
    if args.label_topic:
        labels = bag_labels(source, args.label_topic, offsets)
        labels = {i: v for i, v in labels.items() if i < count}
        return labels, f"topic {args.label_topic} ({len(labels)} frames)"
    return {}, None


def edge_timing(args, model, model_key, computer, source, cache_dir, size) -> EdgeTiming:
    """--edge-ms, else the --edge-profile: 'measured' (cached), 'fast' or a JSON file."""
    if args.edge_ms:
        return EdgeTiming.parse(args.edge_ms)
    if args.edge_profile == "fast":
        return fast_edge_timing(model, *size)
    if args.edge_profile == "measured":
        frames = (frame.image for frame in source.frames(4))
        return measured_edge_timing(
            cache_dir,
            model,
            model_key,
            computer,
            frames,
            args.edge_threads or node_default_threads(),
            args.engine,
        )
    return timing_from_file(Path(args.edge_profile))


def robot_timing(
    args, source, cache_dir: Path, settings: ReplaySettings, frame_size: tuple[int, int]
) -> RobotTiming:
    """--robot-encode-ms, else x264 timed on the clip's first frames (cached)."""
    if args.robot_encode_ms:
        return RobotTiming.parse(args.robot_encode_ms)
    keyframes = settings.keyframes
    return measured_robot_timing(
        cache_dir,
        frame_size,
        lambda count: [frame.image for frame in source.frames(count)],
        settings.preset,
        keyframes.far_preset,
        keyframes.far_gap_frames if keyframes.far_preset else 0,
    )


def run(args: argparse.Namespace, command: str) -> dict:
    import cv2
    import torch

    started = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cv2.setNumThreads(1)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    methods = args.methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    link = LinkConfig.parse(args.link)
    source = open_source(args.source, args.topic)
    model = load_model(args.model, device=args.device)
    model_key = model_digest(model)

    truth = PseudoTruth(cache_dir, model, model_key, source, args.batch_size)
    with progress_bar(total=args.max_frames or None, desc="pseudo ground truth") as bar:
        index = truth.ensure(args.max_frames, bar)
    count = min(index.count, args.max_frames) if args.max_frames else index.count
    offsets = index.offsets_s[:count]
    fps = _fps(offsets)
    labels, labels_note = _labels(args, source, offsets, count)
    computer = QPMapComputer(model, args.calibration)
    size = (index.width, index.height)
    timing = edge_timing(args, model, model_key, computer, source, cache_dir, size)
    settings = ReplaySettings(
        fps=round(fps, 3),
        gop_frames=args.gop,
        refresh=args.refresh,
        mbtree=args.mbtree,
        map_aq_strength=args.map_aq_strength,
        preset=args.preset,
        period_frames=args.period_frames,
        min_map_interval_s=args.min_map_interval_s,
        max_compute_share=args.max_compute_share,
        two_level_top_fraction=args.two_level_top_fraction,
        warp_qp_map=not args.no_warp,
        map_fade_px=args.map_fade_px,
        aq_motion_fade_px=args.aq_motion_fade_px,
        map_worker_nice=args.map_worker_nice,
        batch_size=args.batch_size,
        keyframes=KeyframeConfig(
            far_preset=args.keyframe_far_preset,
            far_gap_frames=args.keyframe_far_gap_frames,
            far_when_free=args.keyframe_far_when_free,
        ),
    )
    robot = robot_timing(args, source, cache_dir, settings, size)
    settings = dataclasses.replace(settings, robot_encode_ms=(robot.near_ms, robot.far_ms))
    decoded_cache = (
        cache_dir
        / "decoded"
        / f"{model_key[:16]}-{model.device}-t{args.threads}-b{args.batch_size}"
    )
    common = {
        "version": REPLAY_VERSION,
        "source": source.digest,
        "topic": source.topic,
        "frames": count,
        "model": model_key,
        "calibration": str(computer.calibration),
        "link": link.describe(),
        "timing": [timing.segment_ms, timing.map_ms],
        "labels": labels_note,
        "threads": args.threads,
        "device": str(model.device),
    }
    curves: dict[str, Curve] = {}
    bags: dict[str, dict] = {}
    chosen: dict[str, str] = {}
    total_points = sum(len(sweep(args, m)) for m in methods)
    done_points = 0
    for name in methods:
        method = METHODS[name]
        points_of_method = sweep(args, name)
        pick = _chosen(args, points_of_method, settings)
        chosen[name] = points_of_method[pick].name(name)
        points = []
        for position, operating in enumerate(points_of_method):
            done_points += 1
            record = position == pick and not args.no_bag
            stem = operating.name(name)
            path = out / "points" / f"{stem}.npz"
            bag_path = out / "bags" / stem
            point_settings = operating.settings(settings)
            key = _key(
                {
                    **common,
                    "settings": point_settings.as_json(),
                    "method": name,
                    "budget": operating.budget,
                }
            )
            point = _cached(path, key)
            if point is None or (record and not (bag_path / "metadata.yaml").is_file()):
                replay = PointReplay(
                    method,
                    operating.budget,
                    point_settings,
                    link,
                    timing,
                    model,
                    computer if method.maps else None,
                    truth,
                    labels,
                    record,
                    decoded_cache,
                )
                desc = f"[{done_points}/{total_points}] {stem}"
                with progress_bar(total=count, desc=desc, unit="frame") as bar:
                    point = replay.run(source.frames(count), bar)
                path.parent.mkdir(parents=True, exist_ok=True)
                point.counters["key"] = key
                point.save(path)
                if record:
                    bag_path.parent.mkdir(parents=True, exist_ok=True)
                    bags[name] = write_point_bag(bag_path, method, replay.recording)
            elif record:
                bags[name] = {"path": str(bag_path)}
            points.append(point)
        curves[name] = Curve(name, method.knob, points)
    report = _report(args, command, source, count, fps, link, timing, settings, curves, labels)
    report["chosen_points"] = chosen
    report["bags"] = bags
    report["edge_timing"] = timing.as_json()
    report["robot_encode"] = robot.as_json()
    report["labels"] = labels_note
    report["model"] = {"name": model.spec.name, "weights_sha256": model_key}
    report["calibration"] = str(computer.calibration_path or "built-in defaults")
    report["wall_s"] = round(time.time() - started, 1)
    write_outputs(out, report, curves, fps)
    return report


def _chosen(args, points: list[OperatingPoint], settings: ReplaySettings) -> int:
    """The point that gets a bag: --bag-point, else the middle budget (at the robot's default
    staleness threshold in keyframe mode, or the middle threshold)."""
    if args.bag_point is not None:
        return min(max(args.bag_point, 0), len(points) - 1)
    thresholds = sorted({p.stale_psnr_db for p in points if p.stale_psnr_db is not None})
    if not thresholds:
        return len(points) // 2
    default = settings.keyframes.stale_psnr_db
    stale = default if default in thresholds else thresholds[len(thresholds) // 2]
    same = [i for i, p in enumerate(points) if p.stale_psnr_db == stale]
    return same[len(same) // 2]


def _cached(path: Path, key: str) -> PointResult | None:
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return None
    try:
        point = PointResult.load(path)
    except (OSError, ValueError, KeyError):
        return None
    return point if point.counters.get("key") == key else None


def _report(args, command, source, count, fps, link, timing, settings, curves, labels) -> dict:
    methods = {
        name: [{"knob": curve.knob, **point_summary(p, fps, args.robot)} for p in curve.points]
        for name, curve in curves.items()
    }
    block = max(1, round(fps * args.block_s))
    report: dict = {
        "command": command,
        "versions": versions(),
        "source": {
            **source.as_json(),
            "frames": count,
            "fps": round(fps, 3),
            "sha256": source.digest,
        },
        "link": link.as_json(),
        "settings": settings.as_json(),
        "robot": args.robot,
        "edge_profile": timing.as_json(),
        "methods": methods,
        "timely_ceiling": {
            name: max(
                (p["timely_miou"] for p in points if p["timely_miou"] is not None), default=None
            )
            for name, points in methods.items()
        },  # fmt: skip
    }
    report.update(_system_bd_rates(args, curves, block, bool(labels)))
    report.update(_stream_bd_rates(args, curves, block, bool(labels)))
    report["bootstrap"] = {
        "resamples": args.bootstrap,
        "block_frames": block,
        "blocks": -(-count // block),
        "seed": args.seed,
    }
    return report


def _system_bd_rates(args, curves: dict[str, Curve], block: int, labels: bool) -> dict:
    """Each STAC method against every other method at equal timely mIoU (the robot's mask as
    --robot has it), total bits both ways and uplink only."""
    timely = "timely_pseudo" if args.robot == "warp" else "timely_held_pseudo"
    kinds = {"": timely}
    if labels:
        kinds["_human"] = timely.replace("pseudo", "human")
    report: dict = {}
    jobs = [
        (suffix, kind, bits, parts)
        for suffix, kind in kinds.items()
        for bits, parts in (("total", TOTAL), ("uplink", UPLINK))
    ]
    for suffix, kind, bits, parts in progress_bar(iterable=jobs, desc="BD-rates, timely"):
        name = f"bd_rate_pct_timely_{bits}{suffix}"
        values, intervals = {}, {}
        for test in (m for m in STAC_METHODS if m in curves):
            others = [m for m in curves if m != test]
            result = bd_rates(curves, test, others, kind, block, args.bootstrap, args.seed, parts)
            values[test] = result.get("pct", {})
            intervals[test] = result.get("ci95_pct", {})
        report[name] = values
        report[f"{name}_ci95"] = intervals
    return report


def _stream_bd_rates(args, curves: dict[str, Curve], block: int, labels: bool) -> dict:
    """STAC stream mode against the streaming baselines at equal decoded mIoU (compression
    alone: the stream and its maps, the masks sent back left out), and uplink only."""
    baselines = [b for b in BASELINES if b in curves]
    kinds = {"": "decoded_pseudo"}
    if labels:
        kinds["_human"] = "decoded_human"
    report: dict = {}
    for suffix, kind in kinds.items():
        result = bd_rates(
            curves, "stac", baselines, kind, block, args.bootstrap, args.seed, STREAM_AND_MAPS
        )
        report[f"bd_rate_pct{suffix}"] = result.get("pct", {})
        report[f"bd_rate_ci95_pct{suffix}"] = result.get("ci95_pct", {})
    result = bd_rates(
        curves, "stac", baselines, "decoded_pseudo", block, args.bootstrap, args.seed, UPLINK
    )
    report["bd_rate_pct_uplink_only"] = result.get("pct", {})
    report["bd_rate_ci95_pct_uplink_only"] = result.get("ci95_pct", {})
    return report


def versions() -> dict:
    import platform

    import av
    import cv2
    import torch

    from stac_codec.x264_ctypes import X264_BUILD

    return {
        "stac_replay": REPLAY_VERSION,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "pyav": av.__version__,
        "x264": f"libx264 API build {X264_BUILD}",
        "cpu": cpu_description(),
        "git_commit": _git_commit(),
    }


def cpu_description() -> str:
    """The processor and the instruction set torch's CPU kernels dispatch to: the sensitivity
    pass's floats (hence a QP map's levels where a macroblock sits at a boundary) can differ
    from one machine to another, so a report says which one it ran on."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch {torch.backends.cpu.get_cpu_capability()}"


def _git_commit() -> str | None:
    import subprocess

    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
