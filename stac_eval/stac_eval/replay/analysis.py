"""From per-frame results to curve points, BD-rates and block-bootstrap confidence intervals.

A method's curve is its sweep of operating points (the budget knob; in keyframe mode the
staleness threshold too: only the efficient points enter a BD-rate); a point's rate is the bits
of the chosen byte columns per second of recording (`accounting`: uplink, maps, masks,
requests), and its accuracy the mIoU of the summed per-frame confusion matrices (the dataset
mIoU).

Neighbouring frames of a video are strongly correlated, so resampling single frames would make
the intervals far too narrow. The bootstrap here cuts the recording into consecutive blocks of
about one second (`block_frames`), draws as many blocks with replacement, and recomputes every
curve on the same draw (paired: all methods see the same seconds of video). 95% percentile
intervals; draws in which the two curves do not overlap in accuracy are counted, not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stac_edge_segmenter.metrics import mean_iou as miou
from stac_eval.bd_rate import NoOverlapError, bd_rate_pct
from stac_eval.replay.accounting import (
    DECODED,
    DOWNLINK_PARTS,
    DROPPED,
    KEPT,
    LOST,
    UNDECODABLE,
    PointResult,
)

UPLINK = ("uplink_bytes",)
TOTAL = ("uplink_bytes", *DOWNLINK_PARTS)
# compression alone: what the stream and its maps cost (masks back are every method's result)
STREAM_AND_MAPS = ("uplink_bytes", "map_bytes", "request_bytes")


@dataclass
class Curve:
    """One method's points, in sweep order."""

    method: str
    knob: str
    points: list[PointResult]

    @property
    def budgets(self) -> list[float]:
        return [point.budget for point in self.points]

    def bytes_per_frame(self, parts: tuple[str, ...] = TOTAL) -> np.ndarray:
        """(points, frames) sums of the byte columns `parts`."""
        return np.stack([p.bytes_per_frame(parts) for p in self.points])

    def confusions(self, kind: str) -> np.ndarray:
        """(points, frames, K, K+1) for kind 'decoded_pseudo', 'timely_pseudo', ..."""
        return np.stack([p.confusion[kind] for p in self.points])

    def has(self, kind: str) -> bool:
        return all(kind in p.confusion for p in self.points)


def kbps(total_bytes: float, frames: int, fps: float) -> float:
    return 8.0 * total_bytes * fps / frames / 1e3 if frames else math.nan


def point_summary(point: PointResult, fps: float, robot: str = "warp") -> dict:
    """The report's numbers for one operating point; `timely_miou` is the robot's mask as
    `robot` ('warp' or 'held') has it, both are given as timely_miou_warp / _held."""
    frames = point.frames
    interval = 1.0 / fps
    status = point.status
    capture = point.capture_s
    arrival = point.mask_arrival_s
    latency_ms = 1e3 * (arrival - capture)
    latency_ms = latency_ms[np.isfinite(latency_ms)]
    age_ms = np.where(
        point.held_frame >= 0, 1e3 * (capture - capture[np.maximum(point.held_frame, 0)]), np.nan
    )
    age_ms = age_ms[np.isfinite(age_ms)]
    queueing = point.queueing_s[np.isfinite(point.queueing_s)]

    def rate(parts) -> float:
        return round(kbps(point.bytes_per_frame(parts).sum(), frames, fps), 3)

    decoded = miou(point.confusion["decoded_pseudo"].sum(0))
    timely = {
        "warp": miou(point.confusion["timely_pseudo"].sum(0)),
        "held": miou(point.confusion["timely_held_pseudo"].sum(0)),
    }
    summary = {
        **point.point,
        "uplink_kbps": rate(UPLINK),
        "downlink_kbps": rate(DOWNLINK_PARTS),
        "total_kbps": rate(TOTAL),
        "map_kbps": rate(("map_bytes",)),
        "mask_kbps": rate(("mask_bytes",)),
        "request_kbps": rate(("request_bytes",)),
        "feedback_kbps": rate(("map_bytes", "request_bytes")),
        "timely_miou": _round(timely[robot]),
        "timely_miou_warp": _round(timely["warp"]),
        "timely_miou_held": _round(timely["held"]),
        "decoded_miou": _round(decoded),
    }
    if "decoded_human" in point.confusion:
        summary["decoded_miou_human"] = _round(miou(point.confusion["decoded_human"].sum(0)))
        kind = "timely_human" if robot == "warp" else "timely_held_human"
        summary["timely_miou_human"] = _round(miou(point.confusion[kind].sum(0)))
    summary.update(
        {
            "latency_ms_p50": _percentile(latency_ms, 50),
            "latency_ms_p95": _percentile(latency_ms, 95),
            "mask_age_ms_p50": _percentile(age_ms, 50),
            "queueing_ms_p95": _percentile(1e3 * queueing, 95),
            "frames": {
                "camera": frames,
                "sent": int(np.sum((status != DROPPED) & (status != KEPT))),
                "kept_on_robot": int(np.sum(status == KEPT)),
                "lost": int(np.sum(status == LOST)),
                "dropped_queue_full": int(np.sum(status == DROPPED)),
                "late": int(np.sum(queueing > interval)),
                "decoded": int(np.sum(status == DECODED)),
                "undecodable": int(np.sum(status == UNDECODABLE)),
                "segmented": int(point.segmented.sum()),
                "skipped_newest_frame_policy": int(np.sum((status == DECODED) & ~point.segmented)),
                "without_mask": int(np.sum(point.mask_age < 0))
                if robot == "warp"
                else int(np.sum(point.held_frame < 0)),
            },
            "edge": dict(point.counters),
        }
    )
    return summary


def lateness_breakdown(point: PointResult, link, segment_ms: float) -> dict:
    """Where the time goes from a camera frame's capture to the robot holding its mask, for
    every frame whose mask came back (means and medians in ms), and how accurate the robot's
    warped mask is by its age.

    Stages: `robot_encode` (x264 on the robot, and waiting for the frame before it:
    ReplaySettings.robot_encode_ms), `uplink_serialisation` (the frame's message at the link
    rate), `uplink_queueing`
    (waiting behind earlier messages), `uplink_delay`, `edge_wait` (the decoded frame waiting
    for the segmenter's worker, and a forward stretched by a map pass sharing the cores),
    `forward` (the edge profile's), `downlink_delay` (the downlink has no rate limit: a mask's
    serialisation is not modelled), `until_next_capture` (the mask reached the robot between
    two camera frames; it is first held at the next one). `held_age_frames`: camera frames
    between the frame and the one at which its mask is first held. `timely_by_age`: timely
    mIoU (warped, against the pseudo ground truth) of the frames whose held mask is k frames
    old, with their count."""
    capture = point.capture_s
    arrival = point.mask_arrival_s
    back = np.flatnonzero(np.isfinite(arrival))
    rate = link.rate_bps
    serialisation = 8.0 * point.uplink_bytes[back] / rate if rate else np.zeros(len(back))
    queueing = np.nan_to_num(point.queueing_s[back])
    encode = point.encoded_s[back] - capture[back]
    at_edge = capture[back] + encode + queueing + serialisation + link.delay_s
    forward = 1e-3 * segment_ms
    left_edge = arrival[back] - link.downlink_delay_s
    held_at = np.searchsorted(capture, arrival[back], side="left")
    held = held_at < len(capture)
    held_capture = np.where(held, capture[np.minimum(held_at, len(capture) - 1)], np.nan)
    stages = {
        "robot_encode": encode,
        "uplink_serialisation": serialisation,
        "uplink_queueing": queueing,
        "uplink_delay": np.full(len(back), link.delay_s),
        "edge_wait": left_edge - forward - at_edge,
        "forward": np.full(len(back), forward),
        "downlink_delay": np.full(len(back), link.downlink_delay_s),
        "until_next_capture": held_capture - arrival[back],
    }
    total = held_capture - capture[back]

    def ms(values: np.ndarray) -> dict:
        values = values[np.isfinite(values)]
        if not len(values):
            return {"mean": None, "p50": None}
        return {"mean": round(1e3 * float(values.mean()), 2), "p50": _percentile(1e3 * values, 50)}

    ages, counts = np.unique((held_at - back)[held], return_counts=True)
    confusion = point.confusion["timely_pseudo"]
    by_age = {}
    for age in np.unique(point.mask_age[point.mask_age >= 0]):
        rows = point.mask_age == age
        by_age[int(age)] = {
            "frames": int(rows.sum()),
            "timely_miou": _round(miou(confusion[rows].sum(0))),
        }
    return {
        "frames_with_mask_back": int(len(back)),
        "stages_ms": {name: ms(values) for name, values in stages.items()},
        "capture_to_held_ms": ms(total),
        "held_age_frames": {int(a): int(c) for a, c in zip(ages, counts, strict=True)},
        "timely_by_age": by_age,
    }


def _round(value: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(value) else round(float(value), digits)


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def _rates_and_mious(
    bytes_blocks: np.ndarray, confusion_blocks: np.ndarray, frames_blocks: np.ndarray, draw
) -> tuple[np.ndarray, np.ndarray]:
    """Per point: bytes per frame and mIoU over the blocks in `draw` (indices, with repeats)."""
    frames = frames_blocks[draw].sum()
    rates = bytes_blocks[:, draw].sum(axis=1) / frames
    summed = confusion_blocks[:, draw].sum(axis=1)
    return rates, np.array([miou(matrix) for matrix in summed])


class BlockBootstrap:
    """Block sums of every curve, so that a resample is a cheap sum over drawn blocks."""

    def __init__(
        self, curves: dict[str, Curve], kind: str, block_frames: int, parts: tuple = TOTAL
    ) -> None:
        if block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {block_frames}")
        self.kind = kind
        frames = next(iter(curves.values())).points[0].frames
        edges = list(range(0, frames, block_frames)) + [frames]
        self.blocks = len(edges) - 1
        self.frames_blocks = np.diff(edges)
        self.bytes_blocks: dict[str, np.ndarray] = {}
        self.confusion_blocks: dict[str, np.ndarray] = {}
        for name, curve in curves.items():
            if not curve.has(kind):
                continue
            per_frame = curve.bytes_per_frame(parts)
            confusion = curve.confusions(kind).astype(np.int64)
            self.bytes_blocks[name] = np.add.reduceat(per_frame, edges[:-1], axis=1)
            self.confusion_blocks[name] = np.add.reduceat(confusion, edges[:-1], axis=1)

    def curve(self, name: str, draw: np.ndarray | None = None):
        draw = np.arange(self.blocks) if draw is None else draw
        return _rates_and_mious(
            self.bytes_blocks[name], self.confusion_blocks[name], self.frames_blocks, draw
        )

    def bd_rate(self, anchor: str, test: str, draw: np.ndarray | None = None) -> float:
        anchor_rates, anchor_mious = self.curve(anchor, draw)
        test_rates, test_mious = self.curve(test, draw)
        return bd_rate_pct(anchor_rates, anchor_mious, test_rates, test_mious)

    def interval(
        self, anchor: str, test: str, resamples: int, seed: int
    ) -> tuple[list[float] | None, int]:
        """95% interval of the BD-rate over block resamples, and how many draws had no
        overlap (None when fewer than half of the draws gave a value)."""
        rng = np.random.default_rng(seed)
        values, failed = [], 0
        for _ in range(resamples):
            draw = rng.integers(0, self.blocks, size=self.blocks)
            try:
                values.append(self.bd_rate(anchor, test, draw))
            except (NoOverlapError, ValueError):
                failed += 1
        if len(values) < max(1, resamples // 2):
            return None, failed
        low, high = np.percentile(values, [2.5, 97.5])
        return [round(float(low), 2), round(float(high), 2)], failed


def bd_rates(
    curves: dict[str, Curve],
    test: str,
    baselines: list[str],
    kind: str,
    block_frames: int,
    resamples: int,
    seed: int = 0,
    parts: tuple[str, ...] = TOTAL,
) -> dict:
    """BD-rate of `test` against each baseline on one accuracy kind, with intervals; rates
    are the byte columns `parts` (default: everything both ways)."""
    if test not in curves:
        return {}
    bootstrap = BlockBootstrap(curves, kind, block_frames, parts)
    result: dict = {"pct": {}, "ci95_pct": {}, "draws_without_overlap": {}}
    for baseline in baselines:
        if baseline not in bootstrap.bytes_blocks or test not in bootstrap.bytes_blocks:
            continue
        try:
            value = round(bootstrap.bd_rate(baseline, test), 2)
        except (NoOverlapError, ValueError):
            value = None
        result["pct"][baseline] = value
        if resamples > 0:
            interval, failed = bootstrap.interval(baseline, test, resamples, seed)
            result["ci95_pct"][baseline] = interval
            result["draws_without_overlap"][baseline] = failed
    result["blocks"] = bootstrap.blocks
    result["block_frames"] = block_frames
    return result
