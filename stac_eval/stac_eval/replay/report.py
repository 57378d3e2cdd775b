"""report.json, report.md and the plots of a replay run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stac_edge_segmenter.metrics import mean_iou
from stac_eval.bd_rate import efficient_points
from stac_eval.replay.analysis import TOTAL, Curve, kbps
from stac_eval.replay.simulation import METHODS


def point_label(method: str, point: dict) -> str:
    """'crf 25' or 'crf 25, stale < 26 dB' for a point's summary (or PointResult.point)."""
    label = f"{METHODS[method].knob} {point['budget']:g}"
    if point.get("stale_psnr_db") is not None:
        label += f", stale < {point['stale_psnr_db']:g} dB"
    return label


def write_outputs(out: Path, report: dict, curves: dict[str, Curve], fps: float) -> None:
    report["plots"] = {
        "curves": "curves.png",
        "bitrate_over_time": "bitrate_over_time.png",
        "timely_miou_over_time": "timely_miou_over_time.png",
    }
    plot_curves(report, out / "curves.png")
    chosen_points = {}
    for name, curve in curves.items():
        summaries = report["methods"][name]
        index = next(
            i for i, s in enumerate(summaries) if _stem(name, s) == report["chosen_points"][name]
        )
        chosen_points[name] = curve.points[index]
    timely = "timely_pseudo" if report["robot"] == "warp" else "timely_held_pseudo"
    plot_over_time(chosen_points, fps, out, timely)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))


def _stem(method: str, summary: dict) -> str:
    knob = METHODS[method].knob
    stale = summary.get("stale_psnr_db")
    return f"{method}_{knob}{summary['budget']:g}" + ("" if stale is None else f"_stale{stale:g}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(report: dict, path: Path) -> None:
    """Left: decoded mIoU against the stream and its maps (compression alone, stream-mode
    methods). Right: the robot's timely mIoU against every bit both ways (the system view);
    every point drawn, a line through each method's efficient ones."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = (
        (axes[0], "decoded_miou", "uplink + maps, kbit/s", "decoded mIoU", True),
        (axes[1], "timely_miou", "total both ways, kbit/s", f"timely mIoU, robot {report['robot']}",
         False),
    )  # fmt: skip
    for axis, key, xlabel, ylabel, stream_only in panels:
        for name, points in report["methods"].items():
            if stream_only and METHODS[name].mode != "stream":
                continue
            rates = [
                p["uplink_kbps"] + p["feedback_kbps"] if stream_only else p["total_kbps"]
                for p in points
            ]
            values = [p[key] for p in points]
            kept = [(r, v) for r, v in zip(rates, values, strict=True) if v is not None and r > 0]
            if not kept:
                continue
            xs, ys = zip(*kept, strict=True)
            line = axis.plot(*efficient_points(xs, ys), marker="o", ms=3, label=name)[0]
            axis.scatter(xs, ys, s=8, color=line.get_color(), alpha=0.4)
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"{ylabel} (vs the model on raw frames)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    profile = report["edge_profile"]
    figure.suptitle(
        f"{Path(report['source']['uri']).name}, link {report['link']['spec']}, edge "
        f"{profile['profile']} ({profile['segment_ms']:g} / {profile['map_ms']:g} ms)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _seconds(point) -> np.ndarray:
    return np.floor(point.capture_s - point.capture_s[0]).astype(int)


def plot_over_time(points: dict, fps: float, out: Path, timely: str) -> None:
    """Bits per second both ways and timely mIoU per second of recording, the chosen point of
    each method."""
    plt = _pyplot()
    for filename, ylabel in (
        ("bitrate_over_time.png", "total both ways, kbit/s"),
        ("timely_miou_over_time.png", "timely mIoU in that second"),
    ):
        figure, axis = plt.subplots(figsize=(10, 4))
        for name, point in points.items():
            seconds = _seconds(point)
            xs, ys = [], []
            for second in np.unique(seconds):
                frames = seconds == second
                xs.append(second)
                if filename.startswith("bitrate"):
                    total = point.bytes_per_frame(TOTAL)[frames].sum()
                    ys.append(kbps(total, int(frames.sum()), fps))
                else:
                    ys.append(mean_iou(point.confusion[timely][frames].sum(0)))
            xs, ys = xs + [xs[-1] + 1], ys + [ys[-1]]  # draw the last second to its end
            axis.step(xs, ys, where="post", label=f"{name} ({point_label(name, point.point)})")
        axis.set_xlabel("recording time, s")
        axis.set_ylabel(ylabel)
        if filename.startswith("bitrate"):
            axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / filename, dpi=80)
        plt.close(figure)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "--"
    return f"{value:.{digits}f}"


def _bd_text(value, interval) -> str:
    if value is None:
        return "-- (no overlap)"
    text = f"{value:+.1f} %"
    return text + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "")


def markdown(report: dict) -> str:
    source, link, timing = report["source"], report["link"], report["edge_profile"]
    lines = [
        "# stac-replay report: the system comparison",
        "",
        f"- command: `{report['command']}`",
        f"- source: {source['uri']} ({source['kind']}"
        + (f", topic {source['topic']}" if source.get("topic") else "")
        + f"), {source['frames']} frames at {source['fps']:g} fps",
        f"- link: `{link['spec']}`",
        f"- edge profile {timing['profile']}: forward {timing['segment_ms']:g} ms, sensitivity "
        f"pass {timing['map_ms']:g} ms ({timing['source']})",
        f"- robot: {report['robot']} (timely mIoU of the mask it holds at each capture)",
        f"- model: {report['model']['name']}; STAC calibration: {report['calibration']}",
        f"- labels: {report['labels'] or 'none (pseudo ground truth only)'}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- wall time: {report['wall_s']:.0f} s",
        "",
        "Timely mIoU: the mask the robot holds at each camera frame's capture (warped by flow, "
        "or held as it came), against the model on that raw frame. Decoded mIoU: the model on "
        "each decoded frame (keyframe methods: the keyframes only). kbit/s: serialized "
        "messages, uplink (frames) and downlink (QP maps, masks back, keyframe requests).",
        "",
        "## BD-rate at equal timely mIoU, every bit both ways (negative = fewer bits)",
        "",
        f"95% intervals: block bootstrap, {report['bootstrap']['resamples']} draws of "
        f"{report['bootstrap']['blocks']} blocks of {report['bootstrap']['block_frames']} frames.",
        "",
    ]
    for bits in ("total", "uplink"):
        table = report.get(f"bd_rate_pct_timely_{bits}", {})
        intervals = report.get(f"bd_rate_pct_timely_{bits}_ci95", {})
        if not table:
            continue
        baselines = sorted({b for row in table.values() for b in row})
        lines.append(f"| {bits} bits | " + " | ".join(f"vs {b}" for b in baselines) + " |")
        lines.append("|---" * (len(baselines) + 1) + "|")
        for test, row in table.items():
            cells = [
                _bd_text(row.get(b), intervals.get(test, {}).get(b)) if b in row else ""
                for b in baselines
            ]
            lines.append(f"| {test} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Best timely mIoU of each method: "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in report["timely_ceiling"].items()),
        "",
        "## STAC stream mode at equal decoded mIoU (compression alone: stream + maps)",
        "",
        "| baseline | stream + maps | uplink only |",
        "|---|---|---|",
    ]
    for baseline, value in report.get("bd_rate_pct", {}).items():
        lines.append(
            f"| {baseline} | {_bd_text(value, report['bd_rate_ci95_pct'].get(baseline))} | "
            f"{_bd_text(report['bd_rate_pct_uplink_only'].get(baseline), None)} |"
        )
    lines += ["", "## Operating points", ""]
    header = (
        "| method | point | uplink kbit/s | downlink kbit/s (maps / masks) | decoded mIoU | "
        "timely mIoU (warp / held) | latency p50 / p95 ms | sent / kept / lost / dropped | "
        "segmented / skipped |"
    )
    lines += [header, "|---" * 9 + "|"]
    for name, points in report["methods"].items():
        for p in points:
            frames = p["frames"]
            lines.append(
                f"| {name} | {point_label(name, p)} | {p['uplink_kbps']:.0f} | "
                f"{p['downlink_kbps']:.0f} ({p['map_kbps']:.1f} / {p['mask_kbps']:.0f}) | "
                f"{_fmt(p['decoded_miou'])} | {_fmt(p['timely_miou_warp'])} / "
                f"{_fmt(p['timely_miou_held'])} | {_fmt(p['latency_ms_p50'], 0)} / "
                f"{_fmt(p['latency_ms_p95'], 0)} | {frames['sent']} / {frames['kept_on_robot']} / "
                f"{frames['lost']} / {frames['dropped_queue_full']} | {frames['segmented']} / "
                f"{frames['skipped_newest_frame_policy']} |"
            )
    lines += [
        "",
        "## Files",
        "",
        "- curves.png: decoded mIoU against stream + maps; timely mIoU against every bit",
        "- bitrate_over_time.png, timely_miou_over_time.png: the chosen point of each method",
    ]
    for name, bag in report.get("bags", {}).items():
        lines.append(f"- {bag['path']}: {report['chosen_points'][name]} (Foxglove)")
    return "\n".join(lines) + "\n"
