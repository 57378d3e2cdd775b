"""report.json, report.md and the plots of a replay run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stac_eval.replay.analysis import Curve, kbps
from stac_eval.replay.simulation import METHODS, miou

ACCURACIES = (("decoded_pseudo", "decoded mIoU"), ("timely_pseudo", "timely mIoU"))


def write_outputs(
    out: Path, report: dict, curves: dict[str, Curve], chosen: dict[str, float], fps: float
) -> None:
    report["plots"] = {
        "curves": "curves.png",
        "bitrate_over_time": "bitrate_over_time.png",
        "timely_miou_over_time": "timely_miou_over_time.png",
    }
    plot_curves(report, out / "curves.png")
    chosen_points = {
        name: next(p for p in curve.points if p.budget == chosen[name])
        for name, curve in curves.items()
    }
    plot_over_time(chosen_points, fps, out)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(report: dict, path: Path) -> None:
    """Total kbit/s against decoded and timely mIoU, one line per method."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, (key, title) in zip(
        axes, (("decoded_miou", "decoded"), ("timely_miou", "timely")), strict=True
    ):
        for name, points in report["methods"].items():
            rates = [p["total_kbps"] for p in points]
            values = [p[key] if p[key] is not None else np.nan for p in points]
            axis.plot(rates, values, marker="o", ms=3, label=name)
        axis.set_xscale("log")
        axis.set_xlabel("uplink + feedback, kbit/s")
        axis.set_ylabel(f"{title} mIoU (vs the model on raw frames)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    link = report["link"]["spec"]
    figure.suptitle(f"{Path(report['source']['uri']).name}, link {link}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _seconds(point) -> np.ndarray:
    return np.floor(point.capture_s - point.capture_s[0]).astype(int)


def plot_over_time(points: dict, fps: float, out: Path) -> None:
    """Bits per second and timely mIoU per second of recording, chosen point of each method."""
    plt = _pyplot()
    for filename, ylabel in (
        ("bitrate_over_time.png", "uplink + feedback, kbit/s"),
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
                    total = point.uplink_bytes[frames].sum() + point.feedback_bytes[frames].sum()
                    ys.append(kbps(total, int(frames.sum()), fps))
                else:
                    ys.append(miou(point.confusion["timely_pseudo"][frames].sum(0)))
            knob = METHODS[name].knob
            xs, ys = xs + [xs[-1] + 1], ys + [ys[-1]]  # draw the last second to its end
            axis.step(xs, ys, where="post", label=f"{name} ({knob} {point.budget:g})")
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


def _bd_cell(report: dict, suffix: str, baseline: str) -> str:
    value = report.get(f"bd_rate_pct{suffix}", {}).get(baseline)
    if value is None:
        return "-- (no overlap)"
    interval = report.get(f"bd_rate_ci95_pct{suffix}", {}).get(baseline)
    text = f"{value:+.1f} %"
    return text + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "")


def markdown(report: dict) -> str:
    source, link, timing = report["source"], report["link"], report["edge_timing"]
    lines = [
        "# stac-replay report",
        "",
        f"- command: `{report['command']}`",
        f"- source: {source['uri']} ({source['kind']}"
        + (f", topic {source['topic']}" if source.get("topic") else "")
        + f"), {source['frames']} frames at {source['fps']:g} fps",
        f"- link: `{link['spec']}`",
        f"- edge compute: forward {timing['segment_ms']:g} ms, sensitivity pass "
        f"{timing['map_ms']:g} ms ({timing['source']})",
        f"- model: {report['model']['name']}; STAC calibration: {report['calibration']}",
        f"- labels: {report['labels'] or 'none (pseudo ground truth only)'}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
        f"- wall time: {report['wall_s']:.0f} s",
        "",
        "Decoded mIoU: the model on each decoded frame against the model on the raw frame. "
        "Timely mIoU: the newest mask back at the robot at each frame's capture time, against "
        "that frame. kbit/s: serialized messages that took the uplink, plus the maps sent back.",
        "",
        "## BD-rate of STAC stream mode (negative = fewer bits at equal mIoU)",
        "",
        f"95% intervals: block bootstrap, {report['bootstrap']['resamples']} draws of "
        f"{report['bootstrap']['blocks']} blocks of {report['bootstrap']['block_frames']} frames.",
        "",
    ]
    suffixes = [("", "decoded mIoU"), ("_timely", "timely mIoU")]
    if report["labels"]:
        suffixes += [("_human", "decoded, human labels"), ("_timely_human", "timely, human")]
    suffixes.append(("_uplink_only", "decoded, feedback bits left out (diagnostic)"))
    lines.append("| baseline | " + " | ".join(title for _, title in suffixes) + " |")
    lines.append("|---" * (len(suffixes) + 1) + "|")
    for baseline in report["bd_rate_pct"]:
        cells = [_bd_cell(report, suffix, baseline) for suffix, _ in suffixes]
        lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
    lines += ["", "## Operating points", ""]
    header = (
        "| method | budget | uplink kbit/s | feedback kbit/s | decoded mIoU | timely mIoU | "
        "latency p50 / p95 ms | sent / lost / dropped / late | segmented / skipped |"
    )
    lines += [header, "|---" * 9 + "|"]
    for name, points in report["methods"].items():
        for p in points:
            frames = p["frames"]
            lines.append(
                f"| {name} | {p['knob']} {p['budget']:g} | {p['uplink_kbps']:.0f} | "
                f"{p['feedback_kbps']:.2f} | {_fmt(p['decoded_miou'])} | "
                f"{_fmt(p['timely_miou'])} | {_fmt(p['latency_ms_p50'], 0)} / "
                f"{_fmt(p['latency_ms_p95'], 0)} | {frames['sent']} / {frames['lost']} / "
                f"{frames['dropped_queue_full']} / {frames['late']} | {frames['segmented']} / "
                f"{frames['skipped_newest_frame_policy']} |"
            )
    lines += [
        "",
        "## Files",
        "",
        "- curves.png: kbit/s against decoded and timely mIoU, every method",
        "- bitrate_over_time.png, timely_miou_over_time.png: the chosen point of each method",
    ]
    for name, bag in report.get("bags", {}).items():
        lines.append(f"- {bag['path']}: {name} at {report['chosen_points'][name]:g} (Foxglove)")
    return "\n".join(lines) + "\n"
