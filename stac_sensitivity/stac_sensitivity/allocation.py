"""Equal-marginal allocation: per-macroblock sensitivity and rate slope -> H.264 QP offset map.

STAC minimises bits subject to a first-order loss budget sum(|g_i| q_i / 2) <= B, g_i the L1
norm of dL/dx inside macroblock i. With the rate of every macroblock falling equally fast with
its step (R_i = c log2(sigma_i / q_i), the same c everywhere) the Lagrange condition gives
q_i ~ 1 / g_i. In H.264 the slope differs: a flat macroblock costs almost nothing at any QP, a
textured one a lot. Writing a_i = -dR_i/dQP_i (bits per QP step of macroblock i) and
dq_i/dQP_i = q_i ln2 / 6, the condition dR_i/dQP_i = -lambda dL_i/dQP_i for every i becomes

    a_i = lambda g_i q_i ln2 / 12   =>   q_i ~ a_i / g_i,

sensitivity and rate together: a macroblock is coarsened where it saves many bits per unit
of loss. H.264's step doubles every 6 QP, so this is an additive QP offset

    dQP_i = alpha * 6 * log2( (a_i / A) / (g_i / G) ),   A, G geometric means over the frame,

with mean 0 (it only redistributes bits; the base quality sets the rate). alpha = 1 is the pure
first-order optimum; smaller values hedge against the model's error (the worst-case bound
|e| <= q/2 overstates errors where the content is flat, and x264 caps QP at 51).

The rate slope is measured, not guessed: offline (stac-calibrate, rate_model.py in stac_eval)
x264 codes frames with random per-macroblock offsets and a regression of the frame's bits gives
bits per QP per macroblock as a function of the macroblock's AC energy E_i (x264's own
variance measure): a_i ~ (E_i + E0)^gamma. Online the edge computes E_i from the frame it has
(decoded at the base quality), so nothing but the map travels to the robot; for a map that
steers P-frames E_i is the energy of the motion-compensated residual against the previous
decoded picture instead, what a P-frame pays (macroblocks.macroblock_residual_energy).
gamma = 0 gives STAC's original rule q_i ~ 1/g_i. (x264's own variance AQ is the special case
g_i = const: dQP_i = 1.04 s log2 E_i + const at strength s.)

The offsets are clamped to [-dmax, +dmax] and snapped to a bank of levels prepared offline, so
the map sent back to the robot is a small array of level indices. A budget shift then moves the
whole map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from stac_codec.qp_map import MAX_ABS_QP_OFFSET, QPLevelMap, check_level_bank

# Sensitivities below this fraction of the frame's largest one count as this fraction: a
# macroblock with an exactly zero gradient would otherwise ask for an infinite offset.
SENSITIVITY_FLOOR_FRACTION = 1e-6


@dataclass(frozen=True)
class AllocationConfig:
    """How sensitivities become QP offsets (the part fixed offline, see calibration.py).

    alpha: scale of the rule (offset_qp = alpha * 6 * log2(G / g)).
    max_offset_qp: the clamp dmax, in QP.
    levels_qp: the level bank, strictly increasing integer offsets; empty = every integer in
        [-max_offset_qp, +max_offset_qp].
    smoothing_sigma_mb: Gaussian smoothing of log(g / a) across macroblocks, in
        macroblocks (0 = off); damps single noisy macroblocks.
    budget_shift_qp: integer added to every offset after the levels are chosen (+ = fewer bits).
    rate_exponent: gamma of the rate-slope model a_i ~ (E_i + energy_floor)^gamma, E_i the
        macroblock's AC energy; 0 = every macroblock's rate falls equally fast (STAC's rule).
    energy_floor: E0 of that model (x264's energy units: sum of squared deviations of the
        luma 16x16 and chroma 8x8 blocks); keeps flat macroblocks' slope finite.
    """

    alpha: float = 0.5
    max_offset_qp: int = 10
    levels_qp: tuple[int, ...] = field(default=())
    smoothing_sigma_mb: float = 0.0
    budget_shift_qp: int = 0
    rate_exponent: float = 0.0
    energy_floor: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be finite and >= 0, got {self.alpha}")
        if not 0 < self.max_offset_qp <= MAX_ABS_QP_OFFSET:
            raise ValueError(
                f"max_offset_qp must be in 1..{MAX_ABS_QP_OFFSET}, got {self.max_offset_qp}"
            )
        if self.smoothing_sigma_mb < 0:
            raise ValueError(f"smoothing_sigma_mb must be >= 0, got {self.smoothing_sigma_mb}")
        if abs(self.budget_shift_qp) > MAX_ABS_QP_OFFSET:
            raise ValueError(f"|budget_shift_qp| must be <= {MAX_ABS_QP_OFFSET}")
        if not np.isfinite(self.rate_exponent) or not 0 <= self.rate_exponent <= 2:
            raise ValueError(f"rate_exponent must be in [0, 2], got {self.rate_exponent}")
        if not np.isfinite(self.energy_floor) or self.energy_floor <= 0:
            raise ValueError(f"energy_floor must be finite and > 0, got {self.energy_floor}")
        if not self.levels_qp:
            bank = tuple(range(-self.max_offset_qp, self.max_offset_qp + 1))
            object.__setattr__(self, "levels_qp", bank)
        check_level_bank(self.levels_qp)

    @property
    def levels(self) -> np.ndarray:
        """The level bank as an int8 array."""
        return np.asarray(self.levels_qp, dtype=np.int8)

    @property
    def rate_aware(self) -> bool:
        """Whether the rule needs each macroblock's AC energy."""
        return self.rate_exponent > 0


def log2_rate_slope(ac_energy: np.ndarray, config: AllocationConfig) -> np.ndarray:
    """log2 a_i = gamma * log2(E_i + E0) (up to a constant, which the rule ignores)."""
    energy = np.asarray(ac_energy, dtype=np.float64)
    if not np.all(np.isfinite(energy)) or np.any(energy < 0):
        raise ValueError("AC energy must be finite and >= 0 everywhere")
    return config.rate_exponent * np.log2(energy + config.energy_floor)


def continuous_offsets_qp(
    sensitivity: np.ndarray, config: AllocationConfig, ac_energy: np.ndarray | None = None
) -> np.ndarray:
    """The unclamped, unquantised rule alpha * 6 * log2((a_i / A) / (g_i / G)), float64.

    ac_energy (rows, cols): each macroblock's AC energy, needed when config.rate_aware (it is
    ignored otherwise). All-zero sensitivity (a frame the DNN is indifferent to) leaves only
    the rate term.
    """
    g = _check_sensitivity(sensitivity)
    largest = float(g.max())
    if largest == 0.0:
        log_ratio = np.zeros_like(g)
    else:
        log_ratio = np.log2(np.maximum(g, largest * SENSITIVITY_FLOOR_FRACTION))
    if config.rate_aware:
        if ac_energy is None:
            raise ValueError("a rate-aware allocation (rate_exponent > 0) needs the AC energy")
        if np.shape(ac_energy) != g.shape:
            raise ValueError(f"AC energy {np.shape(ac_energy)} does not match {g.shape}")
        log_ratio = log_ratio - log2_rate_slope(ac_energy, config)
    if config.smoothing_sigma_mb > 0:
        log_ratio = gaussian_filter(log_ratio, config.smoothing_sigma_mb, mode="nearest")
    return config.alpha * 6.0 * (log_ratio.mean() - log_ratio)


def allocate(
    sensitivity: np.ndarray, config: AllocationConfig, ac_energy: np.ndarray | None = None
) -> QPLevelMap:
    """Per-macroblock sensitivity (rows, cols), >= 0 (and the AC energy, for a rate-aware
    config) -> QP map as level indices into the bank."""
    offsets = np.clip(
        continuous_offsets_qp(sensitivity, config, ac_energy),
        -config.max_offset_qp,
        config.max_offset_qp,
    )
    return QPLevelMap(
        level_indices=nearest_level_indices(offsets, config.levels_qp),
        levels_qp=config.levels_qp,
        budget_shift_qp=config.budget_shift_qp,
    )


def nearest_level_indices(offsets_qp: np.ndarray, levels_qp: tuple[int, ...]) -> np.ndarray:
    """Index of the bank level nearest to each offset (ties go to the lower level), uint8."""
    bank = np.asarray(levels_qp, dtype=np.float64)
    upper = np.clip(np.searchsorted(bank, offsets_qp, side="left"), 1, len(bank) - 1)
    lower = upper - 1
    nearer_upper = (bank[upper] - offsets_qp) < (offsets_qp - bank[lower])
    return np.where(nearer_upper, upper, lower).astype(np.uint8)


def _check_sensitivity(sensitivity: np.ndarray) -> np.ndarray:
    g = np.asarray(sensitivity, dtype=np.float64)
    if g.ndim != 2 or g.size == 0:
        raise ValueError(f"sensitivity must be a non-empty (rows, cols) array, got {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError("sensitivity must be finite and >= 0 everywhere")
    return g
