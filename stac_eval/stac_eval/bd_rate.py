"""Bjontegaard delta rate of two bits-vs-accuracy curves, with monotone cubic interpolation.

BD-rate answers "how many more (or fewer) bits does the test method need for the same
accuracy", averaged over the accuracy range both curves cover. Each curve's log-rate is
interpolated as a function of accuracy (mIoU) with PCHIP, which, unlike the classic cubic
polynomial fit, never overshoots between points, so a curve with a flat stretch cannot produce
a wild average. Only a curve's efficient points enter the fit: a point that costs more bits than
another yet is not more accurate is dropped (the method could have used the cheaper setting),
which also gives PCHIP the strictly increasing abscissa it needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


class NoOverlapError(ValueError):
    """The two curves share no accuracy range, so no BD-rate exists."""


def efficient_points(rates: Sequence[float], qualities: Sequence[float]) -> tuple[list, list]:
    """The curve's points that are more accurate than every cheaper point, sorted by rate."""
    rate = np.asarray(rates, dtype=np.float64)
    quality = np.asarray(qualities, dtype=np.float64)
    if rate.ndim != 1 or rate.shape != quality.shape:
        raise ValueError(f"rates and qualities must be 1-D and equal in length, {rate.shape}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality))) or np.any(rate <= 0):
        raise ValueError("rates must be positive and all values finite")
    kept_rates, kept_qualities = [], []
    for index in np.lexsort((-quality, rate)):
        if not kept_qualities or quality[index] > kept_qualities[-1]:
            kept_rates.append(float(rate[index]))
            kept_qualities.append(float(quality[index]))
    return kept_rates, kept_qualities


def bd_rate_pct(
    anchor_rates: Sequence[float],
    anchor_qualities: Sequence[float],
    test_rates: Sequence[float],
    test_qualities: Sequence[float],
) -> float:
    """Average rate difference of test vs anchor at equal quality, in percent (negative = fewer)."""
    anchor = _log_rate_curve(anchor_rates, anchor_qualities, "anchor")
    test = _log_rate_curve(test_rates, test_qualities, "test")
    low = max(anchor.x[0], test.x[0])
    high = min(anchor.x[-1], test.x[-1])
    if high <= low:
        raise NoOverlapError(
            f"accuracy ranges do not overlap: anchor [{anchor.x[0]:.4f}, {anchor.x[-1]:.4f}], "
            f"test [{test.x[0]:.4f}, {test.x[-1]:.4f}]"
        )
    mean_log_ratio = (test.integrate(low, high) - anchor.integrate(low, high)) / (high - low)
    return float(100.0 * np.expm1(mean_log_ratio))


def _log_rate_curve(rates, qualities, name: str) -> PchipInterpolator:
    kept_rates, kept_qualities = efficient_points(rates, qualities)
    if len(kept_rates) < 2:
        raise ValueError(f"the {name} curve needs at least 2 efficient points, has {kept_rates}")
    return PchipInterpolator(kept_qualities, np.log(kept_rates), extrapolate=False)
