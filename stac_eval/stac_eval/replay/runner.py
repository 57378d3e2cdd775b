"""`stac-replay run`: every method over its budget sweep, cached per point, then the report.

Steps (each with a progress bar): the pseudo ground truth of every frame (cached per model and
source), the edge timing (fixed by --edge-ms, or measured once and cached), then one simulation
per method and budget (`simulation.PointReplay`), each saved under DIR/points/ as soon as it is
done with a key of everything that shaped it; a rerun with the same options loads finished
points instead of running them again, so an interrupted run resumes. The chosen operating
point of each method (the middle of its sweep by default) also gets a bag under DIR/bags/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from stac_edge_segmenter.loading import load_model
from stac_eval.replay.analysis import Curve, bd_rates, point_summary
from stac_eval.replay.bags import write_point_bag
from stac_eval.replay.link import LinkConfig
from stac_eval.replay.report import write_outputs
from stac_eval.replay.simulation import (
    BASELINES,
    METHODS,
    PointReplay,
    PointResult,
    ReplaySettings,
)
from stac_eval.replay.source import bag_labels, label_folder, open_source, read_label_png
from stac_eval.replay.truth import (
    EdgeTiming,
    PseudoTruth,
    default_cache_dir,
    measured_edge_timing,
    model_digest,
)
from stac_sensitivity.online import QPMapComputer

REPLAY_VERSION = 3  # bump when a change alters results, so cached points are recomputed
DEFAULT_CRFS = (18, 25, 32, 39, 46)
DEFAULT_JPEG_QUALITIES = (10, 20, 35, 55, 80)
DEFAULT_LINK = "rate=10mbit,delay=20ms,loss=0%,queue=30"


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True)


def _budgets(args: argparse.Namespace, method: str) -> list[float]:
    values = args.jpeg_quality if METHODS[method].knob == "quality" else args.crf
    return [float(v) for v in values]


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
    with _progress(args.max_frames or None, "pseudo ground truth") as bar:
        index = truth.ensure(args.max_frames, bar)
    count = min(index.count, args.max_frames) if args.max_frames else index.count
    offsets = index.offsets_s[:count]
    fps = _fps(offsets)
    labels, labels_note = _labels(args, source, offsets, count)
    computer = None
    if any(METHODS[m].maps for m in methods) or not args.edge_ms:
        computer = QPMapComputer(model, args.calibration)
    if args.edge_ms:
        timing = EdgeTiming.parse(args.edge_ms)
    else:
        frames = (frame.image for frame in source.frames(4))
        timing = measured_edge_timing(cache_dir, model, model_key, computer, frames, args.threads)
    settings = ReplaySettings(
        fps=round(fps, 3),
        gop_frames=args.gop,
        preset=args.preset,
        period_frames=args.period_frames,
        min_map_interval_s=args.min_map_interval_s,
        max_compute_share=args.max_compute_share,
        two_level_top_fraction=args.two_level_top_fraction,
        warp_qp_map=not args.no_warp,
        batch_size=args.batch_size,
    )
    common = {
        "version": REPLAY_VERSION,
        "source": source.digest,
        "topic": source.topic,
        "frames": count,
        "model": model_key,
        "calibration": str(computer.calibration) if computer else None,
        "link": link.describe(),
        "timing": [timing.segment_ms, timing.map_ms],
        "settings": settings.as_json(),
        "labels": labels_note,
        "threads": args.threads,
        "device": str(model.device),
    }
    curves: dict[str, Curve] = {}
    bags: dict[str, dict] = {}
    chosen: dict[str, float] = {}
    total_points = sum(len(_budgets(args, m)) for m in methods)
    done_points = 0
    for name in methods:
        method = METHODS[name]
        budgets = _budgets(args, name)
        pick = args.bag_point if args.bag_point is not None else len(budgets) // 2
        pick = min(max(pick, 0), len(budgets) - 1)
        chosen[name] = budgets[pick]
        points = []
        for position, budget in enumerate(budgets):
            done_points += 1
            record = position == pick and not args.no_bag
            path = out / "points" / f"{name}_{method.knob}{budget:g}.npz"
            bag_path = out / "bags" / f"{name}_{method.knob}{budget:g}"
            key = _key({**common, "method": name, "budget": budget})
            point = _cached(path, key)
            if point is None or (record and not (bag_path / "metadata.yaml").is_file()):
                replay = PointReplay(
                    method, budget, settings, link, timing, model, computer, truth, labels, record
                )
                desc = f"[{done_points}/{total_points}] {name} {method.knob} {budget:g}"
                with _progress(count, desc) as bar:
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
    report["labels"] = labels_note
    report["model"] = {"name": model.spec.name, "weights_sha256": model_key}
    report["calibration"] = (
        str(computer.calibration_path or "built-in defaults") if computer else None
    )
    report["wall_s"] = round(time.time() - started, 1)
    write_outputs(out, report, curves, chosen, fps)
    return report


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
        name: [point_summary(point, fps) for point in curve.points]
        for name, curve in curves.items()
    }
    for name, curve in curves.items():
        for summary in methods[name]:
            summary["knob"] = curve.knob
    block = max(1, round(fps * args.block_s))
    baselines = [b for b in BASELINES if b in curves]
    kinds = {"": "decoded_pseudo", "_timely": "timely_pseudo"}
    if labels:
        kinds.update({"_human": "decoded_human", "_timely_human": "timely_human"})
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
        "methods": methods,
    }
    from tqdm import tqdm

    for suffix, kind in tqdm(kinds.items(), desc="BD-rates and bootstrap", leave=False):
        result = bd_rates(curves, "stac", baselines, kind, block, args.bootstrap, args.seed)
        report[f"bd_rate_pct{suffix}"] = result.get("pct", {})
        report[f"bd_rate_ci95_pct{suffix}"] = result.get("ci95_pct", {})
        report[f"bd_rate_draws_without_overlap{suffix}"] = result.get("draws_without_overlap", {})
    # Diagnostic: what the map does to the stream alone, its feedback left out.
    result = bd_rates(
        curves, "stac", baselines, "decoded_pseudo", block, args.bootstrap, args.seed, False
    )
    report["bd_rate_pct_uplink_only"] = result.get("pct", {})
    report["bd_rate_ci95_pct_uplink_only"] = result.get("ci95_pct", {})
    report["bootstrap"] = {
        "resamples": args.bootstrap,
        "block_frames": block,
        "blocks": -(-count // block),
        "seed": args.seed,
    }
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
        "git_commit": _git_commit(),
    }


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
