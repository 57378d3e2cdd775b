"""Measure how fast each macroblock's bits fall with its QP: the rate slope a_i of allocation.py.

The rate-aware rule q_i ~ a_i / g_i needs a_i = -dR_i/dQP_i, the bits a macroblock saves per
QP step. x264 reports no per-macroblock bits, so they are measured by design of experiment:
the macroblocks of a frame are split into `bins` classes by their AC energy (x264's variance
measure, computed on the frame the edge would have: the one decoded at the base quality), and
the frame is coded `runs` times with offsets +-step per class following the columns of a
Hadamard matrix (orthogonal, balanced). A least-squares fit of the frame's slice bits on the
class offsets gives each class's bits per QP; divided by its macroblock count, bits per QP per
macroblock. Pooled over frames and base qualities, log2 a = gamma * log2(E + E0) + c is fitted
(E0 from a grid, gamma and c by least squares): gamma is the rate_exponent of the calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import hadamard

from stac_eval.intra import code_intra
from stac_sensitivity.macroblocks import macroblock_ac_energy

ENERGY_FLOORS = (1.0, 16.0, 64.0, 256.0, 1024.0)
# Classes whose measured slope is below this (bits per QP per macroblock) are left out of the
# fit: with few bits left the regression's noise dominates.
MIN_SLOPE_BITS = 0.05


@dataclass(frozen=True)
class RateSlopeFit:
    """a = 2^c (E + E0)^gamma in bits per QP per macroblock; the points it was fitted to."""

    rate_exponent: float
    energy_floor: float
    log2_scale: float
    residual_rms_log2: float
    points: list[dict]

    def as_json(self) -> dict:
        return {
            "rate_exponent": round(self.rate_exponent, 4),
            "energy_floor": self.energy_floor,
            "log2_scale": round(self.log2_scale, 4),
            "residual_rms_log2": round(self.residual_rms_log2, 4),
            "model": "bits per QP per macroblock = 2^log2_scale * (E + energy_floor)^rate_exponent",
            "points": self.points,
        }


def class_slopes(
    frame_rgb: np.ndarray,
    energy: np.ndarray,
    crf: float,
    bins: int = 8,
    step_qp: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Bits per QP per macroblock of each energy class of one frame at one base quality.

    Returns (mean log2(E + 1) of each class, slope of each class). Classes are energy
    quantiles of this frame; the design codes the frame 2 * bins times (Hadamard columns)."""
    runs = 2 * bins
    design = hadamard(runs)[:, 1 : bins + 1]
    log_energy = np.log2(energy + 1.0)
    edges = np.quantile(log_energy, np.linspace(0, 1, bins + 1)[1:-1])
    classes = np.searchsorted(edges, log_energy, side="right")
    counts = np.bincount(classes.reshape(-1), minlength=bins)
    bits = np.empty(runs)
    for run in range(runs):
        offsets = (step_qp * design[run][classes]).astype(np.int8)
        bits[run] = 8 * code_intra(frame_rgb, crf, offsets).slice_bytes
    regressors = np.column_stack([np.ones(runs), step_qp * design])
    coefficients, *_ = np.linalg.lstsq(regressors, bits, rcond=None)
    slopes = -coefficients[1:] / np.maximum(counts, 1)
    means = np.array(
        [log_energy[classes == c].mean() if counts[c] else np.nan for c in range(bins)]
    )
    return means, slopes


def measure_rate_slopes(
    images: np.ndarray,
    decoded: Sequence[np.ndarray],
    crfs: Sequence[float],
    bins: int = 8,
) -> list[dict]:
    """Class slopes of every frame at every base quality; energy from the decoded frames
    (decoded[point][frame], what the edge has at that base quality)."""
    points = []
    for point, crf in enumerate(crfs):
        for index, image in enumerate(images):
            energy = macroblock_ac_energy(decoded[point][index])
            means, slopes = class_slopes(image, energy, crf, bins)
            for mean, slope in zip(means, slopes, strict=True):
                if np.isfinite(mean):
                    points.append(
                        {"crf": crf, "log2_energy": float(mean), "bits_per_qp": float(slope)}
                    )
    return points


def fit_rate_slope(points: list[dict], floors: Sequence[float] = ENERGY_FLOORS) -> RateSlopeFit:
    """log2 a = gamma log2(E + E0) + c, E0 from `floors`, the others by least squares, each
    base quality with its own c (the slope's level falls with the base quality; only how it
    varies within a frame matters to the rule)."""
    usable = [p for p in points if p["bits_per_qp"] > MIN_SLOPE_BITS]
    if len(usable) < 3:
        raise ValueError(f"only {len(usable)} usable rate-slope measurements")
    crfs = sorted({p["crf"] for p in usable})
    energy = 2.0 ** np.array([p["log2_energy"] for p in usable]) - 1.0
    target = np.log2([p["bits_per_qp"] for p in usable])
    indicator = np.array([[p["crf"] == crf for crf in crfs] for p in usable], dtype=np.float64)
    best = None
    for floor in floors:
        regressors = np.column_stack([np.log2(energy + floor), indicator])
        coefficients, *_ = np.linalg.lstsq(regressors, target, rcond=None)
        rms = float(np.sqrt(np.mean((regressors @ coefficients - target) ** 2)))
        if best is None or rms < best[0]:
            best = (rms, floor, coefficients)
    rms, floor, coefficients = best
    return RateSlopeFit(
        rate_exponent=float(max(coefficients[0], 0.0)),
        energy_floor=float(floor),
        log2_scale=float(np.mean(coefficients[1:])),
        residual_rms_log2=rms,
        points=[
            {k: round(v, 4) if isinstance(v, float) else v for k, v in p.items()} for p in points
        ],
    )
