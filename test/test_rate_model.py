"""The measured rate model of the rate-aware allocation (stac_eval.rate_model)."""

import numpy as np
import pytest

from stac_eval.rate_model import class_slopes, fit_rate_slope
from stac_sensitivity.macroblocks import macroblock_ac_energy


def test_textured_macroblocks_save_more_bits_per_qp_than_flat_ones():
    """What x264 really does, measured by the Hadamard design on one frame: the bits a QP step
    saves grow with the macroblock's AC energy (the premise of q_i ~ a_i / g_i)."""
    rng = np.random.default_rng(0)
    frame = np.full((96, 128, 3), 110, dtype=np.uint8)
    texture = np.linspace(2, 60, 8)  # 8 column stripes of 16 px, from nearly flat to busy
    for stripe, sigma in enumerate(texture):
        block = 110 + rng.normal(0, sigma, (96, 16, 1))
        frame[:, 16 * stripe : 16 * (stripe + 1)] = np.clip(block, 0, 255).astype(np.uint8)
    energy = macroblock_ac_energy(frame)
    means, slopes = class_slopes(frame, energy, crf=28, bins=4)
    assert np.all(np.diff(means) > 0)
    assert slopes[-1] > 3 * slopes[0] > 0


def test_fit_recovers_a_power_law_and_its_floor():
    points = []
    for crf, scale in ((24, 2.0), (36, 0.5)):
        for log2_energy in np.linspace(6, 18, 9):
            energy = 2**log2_energy - 1
            slope = scale * (energy + 256.0) ** 0.45
            points.append({"crf": crf, "log2_energy": log2_energy, "bits_per_qp": slope})
    fit = fit_rate_slope(points)
    assert fit.energy_floor == 256.0
    assert fit.rate_exponent == pytest.approx(0.45, abs=1e-6)
    assert fit.residual_rms_log2 < 1e-6
    assert fit.as_json()["points"]


def test_fit_needs_usable_points():
    with pytest.raises(ValueError, match="usable"):
        fit_rate_slope([{"crf": 30, "log2_energy": 10.0, "bits_per_qp": 0.0}])
