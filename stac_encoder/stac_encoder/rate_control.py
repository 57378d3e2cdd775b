"""A bitrate target on the robot: an outer loop on x264's CRF, with the QP map still applied.

The map redistributes bits between macroblocks around a base quality; a link has a capacity.
This controller holds a target (kbit/s, changeable at any time) by moving the CRF the encoder
works at, frame by frame:

* a leaky bucket: `fullness` (bits) grows by each frame's bits and drains at the target rate
  over camera time. Over any window of T seconds the bits sent are target x T plus the
  change of fullness over the window, so keeping the bucket within +-a few percent of
  target x T keeps every window within that error;
* a rate model per frame kind (IDR and P): log2(bits) = c - crf / `qp_per_halving`, with c
  learnt from every encoded frame (an exponential average), so a CRF can be chosen for the bits
  the next frame should take: the target's share of the time since the previous frame, minus
  the bucket's excess spread over `drain_s`;
* the CRF moves at most `max_step` per frame (the map's offsets ride on it; big jumps flicker);
* an IDR picture takes at most `idr_max_shares` frames' shares of the target: where the IDR
  model says it would cost more, every macroblock offset of that picture is raised by
  `idr_extra_qp` (x264 gives an I-frame the QP of the recent P-frames whatever the CRF is
  set to at that frame, so the map is the only knob that reaches it). At 10 fps a static
  scene's IDR costs about ten shares, which no bucket can hide from a 2-s window; the
  P-frames after it refine the picture again;
* the P-frames right after a capped IDR refine what it left coarse, at a cost the P-frame
  model does not know: they start at half the IDR's extra QP above the loop's CRF, halving
  each frame (instead of one P-frame paying for the whole refinement);
* a foreseen IDR is saved for: over the `idr_saving_s` before it, the bucket is steered to
  half the IDR's expected excess below empty, so the windows that end at the IDR and the
  ones that hold its drain share the excess instead of the first ones carrying all of it.

Why an outer loop and not x264's own ABR + VBV: `stac-bench temporal` measures both under the
map; the outer loop uses the real capture times, so it also holds the target in keyframe mode,
where frames are irregularly spaced and x264's rate control (which assumes a frame every
1/fps) cannot. Plain Python, no clock: times are camera stamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stac_codec.h264_encoder import REFRESH_MODES

# The encoder node's refresh choices: EncoderConfig's, and "auto" (resolve_refresh).
REFRESH_CHOICES = ("auto", *REFRESH_MODES)


def resolve_refresh(refresh: str, holds_bitrate_target: bool) -> str:
    """EncoderConfig.refresh for the node's `refresh`: "auto" is x264's periodic intra refresh
    while a bitrate target is held (a periodic IDR picture takes several frames' share of the
    target at once, and the 2-s windows around it miss by that) and an IDR picture every
    gop_frames otherwise (intra refresh costs every method 14-39 % more bits at equal decoded
    mIoU on the dev clips: docs/benchmarks.md); other values pass through."""
    if refresh not in REFRESH_CHOICES:
        raise ValueError(f"refresh must be one of {REFRESH_CHOICES}, got {refresh!r}")
    if refresh != "auto":
        return refresh
    return "intra_refresh" if holds_bitrate_target else "idr"


@dataclass(frozen=True)
class RateControlConfig:
    """target_kbps: the target (0 = off: constant CRF); crf_min/crf_max: the range the loop
    moves the CRF in; drain_s: the bucket's excess (or deficit) is spread over this much
    camera time; qp_per_halving: CRF steps that halve a frame's bits (the model's slope);
    max_step: largest CRF change per frame; overhead_bytes: what each frame's message adds to
    its access unit on the link (the EncodedFrame header and fields, ~90 bytes: 18 kbit/s at
    25 fps, which the target includes); idr_max_shares: the most an IDR picture may cost, in
    frames' shares of the target (0 = no cap: an IDR keeps the P-frames' CRF);
    idr_saving_s: how long before a foreseen IDR the loop starts saving for it (0 = never)."""

    target_kbps: float = 0.0
    crf_min: float = 12.0
    crf_max: float = 51.0
    drain_s: float = 0.5
    qp_per_halving: float = 6.0
    max_step: float = 3.0
    learning_rate: float = 0.3
    overhead_bytes: int = 90
    idr_max_shares: float = 3.0
    idr_saving_s: float = 2.0

    def __post_init__(self) -> None:
        if self.target_kbps < 0 or not math.isfinite(self.target_kbps):
            raise ValueError(f"target_kbps must be >= 0, got {self.target_kbps}")
        if not 0.0 <= self.crf_min < self.crf_max <= 51.0:
            raise ValueError("need 0 <= crf_min < crf_max <= 51")
        if self.idr_saving_s < 0:
            raise ValueError(f"idr_saving_s must be >= 0, got {self.idr_saving_s}")
        if self.drain_s <= 0 or self.qp_per_halving <= 0 or self.max_step <= 0:
            raise ValueError("drain_s, qp_per_halving and max_step must be > 0")
        if not 0.0 < self.learning_rate <= 1.0:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if self.idr_max_shares != 0 and not 1.0 <= self.idr_max_shares <= 1000.0:
            raise ValueError(f"idr_max_shares must be 0 or in [1, 1000], got {self.idr_max_shares}")


class BitrateController:
    """Chooses the CRF of each next frame so that the bits follow the target."""

    def __init__(self, config: RateControlConfig, initial_crf: float = 28.0) -> None:
        self.config = config
        self.target_kbps = config.target_kbps
        self.crf = min(max(initial_crf, config.crf_min), config.crf_max)
        self.fullness_bits = 0.0
        self._last_s: float | None = None
        self._interval_s: float | None = None  # typical time between encoded frames
        self._intercept: dict[bool, float] = {}  # idr -> c of log2(bits) = c - crf / k
        self._refine_qp = 0.0  # extra QP still owed to the P-frames after a capped IDR
        self.overhead_bytes = config.overhead_bytes

    @property
    def active(self) -> bool:
        return self.target_kbps > 0

    def set_target(self, target_kbps: float) -> None:
        """A new target from the next frame on (0 turns the loop off). The bucket restarts:
        what was sent under the old target does not count against the new one."""
        if target_kbps < 0 or not math.isfinite(target_kbps):
            raise ValueError(f"target_kbps must be >= 0, got {target_kbps}")
        self.target_kbps = float(target_kbps)
        self.fullness_bits = 0.0

    def frame_encoded(self, size_bytes: int, capture_s: float, idr: bool, crf: float) -> None:
        """Account one encoded frame (its access unit's bytes, capture time, kind, the CRF it
        had); the link also carries `overhead_bytes` for it."""
        bits = 8.0 * max(1, size_bytes)
        link_bits = bits + 8.0 * self.overhead_bytes
        observed = math.log2(bits) + crf / self.config.qp_per_halving
        previous = self._intercept.get(idr)
        rate = self.config.learning_rate
        self._intercept[idr] = (
            observed if previous is None else previous + rate * (observed - previous)
        )
        if self._last_s is not None and capture_s > self._last_s:
            elapsed = capture_s - self._last_s
            self.fullness_bits -= 1e3 * self.target_kbps * elapsed
            self._interval_s = (
                elapsed if self._interval_s is None else 0.9 * self._interval_s + 0.1 * elapsed
            )
        self._last_s = capture_s if self._last_s is None else max(self._last_s, capture_s)
        self.fullness_bits += link_bits
        if idr:
            self._refine_qp = max(crf - self.crf, 0.0)

    def next_crf(self, capture_s: float, idr: bool, frames_to_idr: int | None = None) -> float:
        """The CRF for the frame captured at `capture_s`. An IDR picture keeps the CRF of the
        P-frames around it (its extra bits go into the bucket and are drained after it; see
        idr_extra_qp for its cap): choosing its CRF from one frame's share would make it, and
        the P-frames predicted from it, visibly worse. frames_to_idr: frames until the next
        IDR the encoder foresees (None: none foreseen)."""
        if not self.active or idr:
            return self.crf
        config = self.config
        share, elapsed = self._share_bits(capture_s)
        setpoint = self._saving_setpoint(share, elapsed, frames_to_idr)
        correction = (self.fullness_bits - setpoint) * min(1.0, elapsed / config.drain_s)
        wanted = max(share - correction, 0.05 * share, 8.0)
        intercept = self._intercept.get(False)
        if intercept is None:
            if True not in self._intercept:
                return self.crf
            intercept = self._intercept[True] - 2.0  # a P-frame costs about 1/4 of an IDR
        crf = config.qp_per_halving * (intercept - math.log2(wanted))
        step = config.max_step
        crf = min(max(crf, self.crf - step), self.crf + step)
        self.crf = min(max(crf, config.crf_min), config.crf_max)
        self._refine_qp /= 2.0
        return min(self.crf + self._refine_qp, config.crf_max)

    def _share_bits(self, capture_s: float) -> tuple[float, float]:
        """The target's bits for the frame captured at `capture_s` (the time since the
        previous frame, or the typical interval; its message overhead taken off), and that
        time in seconds."""
        elapsed = self._interval_s or 0.04
        if self._last_s is not None and capture_s > self._last_s:
            elapsed = capture_s - self._last_s
        return 1e3 * self.target_kbps * elapsed - 8.0 * self.overhead_bytes, elapsed

    def _saving_setpoint(self, share: float, elapsed: float, frames_to_idr: int | None) -> float:
        """Where the bucket should be now (bits, <= 0): from idr_saving_s before a foreseen
        IDR, ramping down to half its expected excess over one share at the IDR."""
        config = self.config
        intercept = self._intercept.get(True)
        if frames_to_idr is None or not config.idr_saving_s or intercept is None or share <= 0:
            return 0.0
        horizon = config.idr_saving_s / elapsed  # frames
        if frames_to_idr >= horizon:
            return 0.0
        expected = 2.0 ** (intercept - self.crf / config.qp_per_halving)
        if config.idr_max_shares:
            expected = min(expected, config.idr_max_shares * share)
        excess = max(expected - share, 0.0)
        return -0.5 * excess * (1.0 - frames_to_idr / horizon)

    def idr_extra_qp(self, capture_s: float) -> int:
        """QP to add to every macroblock of the IDR picture captured at `capture_s` so that
        it costs at most idr_max_shares shares of the target (0 while the loop is off, the
        cap is off, or no IDR has been seen yet). Account the IDR in frame_encoded with the
        CRF plus this."""
        config = self.config
        intercept = self._intercept.get(True)
        if not self.active or not config.idr_max_shares or intercept is None:
            return 0
        share, _ = self._share_bits(capture_s)
        if share <= 0:
            return round(config.crf_max - self.crf)
        capped = config.qp_per_halving * (intercept - math.log2(config.idr_max_shares * share))
        return max(0, math.ceil(min(capped, config.crf_max) - self.crf))
