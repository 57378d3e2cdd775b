"""Sliding-window link rates, latencies and frame counters for the once-a-second statistics.

Plain Python (no ROS): every node keeps one `NodeStatistics` and its ROS shell publishes a
snapshot of it each second.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np


class SlidingWindow:
    """(time_s, value) samples of the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, time_s: float, value: float) -> None:
        self._samples.append((time_s, value))

    def values(self, now_s: float) -> np.ndarray:
        while self._samples and self._samples[0][0] < now_s - self.window_s:
            self._samples.popleft()
        return np.array([v for _, v in self._samples], dtype=np.float64)


@dataclass
class FrameCounters:
    """Totals since start; see stac_msgs/Statistics for what each one counts."""

    frames_in: int = 0
    frames_encoded: int = 0
    frames_segmented: int = 0
    frames_skipped: int = 0
    frames_failed: int = 0
    frames_pending: int = 0
    frames_lost: int = 0
    keyframe_requests: int = 0
    key_mask_requests: int = 0
    qp_maps: int = 0
    qp_maps_rejected: int = 0
    masks_received: int = 0
    masks_rejected: int = 0
    robot_masks: int = 0
    frames_held: int = 0
    frames_waited: int = 0


@dataclass
class StatisticsSnapshot:
    counters: FrameCounters
    window_s: float
    uplink_bps: float
    feedback_bps: float
    latency_ms_median: float
    latency_ms_p95: float
    recovery_ms_max: float = 0.0
    mask_feedback_bps: float = 0.0
    target_kbps: float = 0.0
    base_quality: float = 0.0
    link_peers: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("counters"))
        return out

    def summary(self) -> str:
        """One log line: frame accounting, link rates, latency."""
        c = self.counters
        return (
            f"in {c.frames_in} encoded {c.frames_encoded} segmented {c.frames_segmented} "
            f"skipped {c.frames_skipped} failed {c.frames_failed} pending {c.frames_pending} "
            f"lost {c.frames_lost} "
            f"maps {c.qp_maps} (rejected {c.qp_maps_rejected}) "
            f"masks {c.masks_received} (rejected {c.masks_rejected}) robot {c.robot_masks} "
            f"held {c.frames_held} | "
            f"uplink {self.uplink_bps / 1e3:.1f} kbit/s "
            f"feedback {self.feedback_bps / 1e3:.2f} kbit/s "
            f"masks {self.mask_feedback_bps / 1e3:.2f} kbit/s | latency p50 "
            f"{self.latency_ms_median:.0f} ms p95 {self.latency_ms_p95:.0f} ms"
        )


@dataclass
class NodeStatistics:
    """Thread-safe counters plus windows for uplink/feedback bytes and latency."""

    window_s: float = 1.0
    counters: FrameCounters = field(default_factory=FrameCounters)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._uplink_bytes = SlidingWindow(self.window_s)
        self._feedback_bytes = SlidingWindow(self.window_s)
        self._mask_feedback_bytes = SlidingWindow(self.window_s)
        self._latency_ms = SlidingWindow(self.window_s)
        self._recovery_ms_max = 0.0
        self._rate = (0.0, 0.0)  # target_kbps, base_quality

    def count(self, name: str, increment: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + increment)

    def add_uplink(self, now_s: float, size_bytes: int) -> None:
        with self._lock:
            self._uplink_bytes.add(now_s, size_bytes)

    def add_feedback(self, now_s: float, size_bytes: int) -> None:
        with self._lock:
            self._feedback_bytes.add(now_s, size_bytes)

    def add_mask_feedback(self, now_s: float, size_bytes: int) -> None:
        with self._lock:
            self._mask_feedback_bytes.add(now_s, size_bytes)

    def set_rate(self, target_kbps: float, base_quality: float) -> None:
        """The rate-control state to report (robot)."""
        with self._lock:
            self._rate = (float(target_kbps), float(base_quality))

    def add_latency(self, now_s: float, latency_ms: float) -> None:
        with self._lock:
            self._latency_ms.add(now_s, latency_ms)

    def add_recovery(self, recovery_ms: float) -> None:
        """An outage (loss, damage, join) ended with a mask after this long."""
        with self._lock:
            self._recovery_ms_max = max(self._recovery_ms_max, recovery_ms)

    def snapshot(self, now_s: float) -> StatisticsSnapshot:
        with self._lock:
            latency = self._latency_ms.values(now_s)
            return StatisticsSnapshot(
                counters=FrameCounters(**asdict(self.counters)),
                window_s=self.window_s,
                uplink_bps=float(8.0 * self._uplink_bytes.values(now_s).sum() / self.window_s),
                feedback_bps=float(8.0 * self._feedback_bytes.values(now_s).sum() / self.window_s),
                latency_ms_median=float(np.median(latency)) if latency.size else 0.0,
                latency_ms_p95=float(np.percentile(latency, 95)) if latency.size else 0.0,
                recovery_ms_max=self._recovery_ms_max,
                mask_feedback_bps=float(
                    8.0 * self._mask_feedback_bytes.values(now_s).sum() / self.window_s
                ),
                target_kbps=self._rate[0],
                base_quality=self._rate[1],
            )
