"""Properties of the equal-marginal-loss allocation (stac_sensitivity.allocation)."""

import dataclasses

import numpy as np
import pytest

from stac_sensitivity.allocation import (
    AllocationConfig,
    allocate,
    continuous_offsets_qp,
    nearest_level_indices,
)


def _log_normal_sensitivity(rows=23, cols=30, seed=0):
    return np.random.default_rng(seed).lognormal(mean=0.0, sigma=1.0, size=(rows, cols))


def test_offsets_follow_the_rule_and_average_zero_before_clamping():
    sensitivity = _log_normal_sensitivity()
    config = AllocationConfig(alpha=0.5, max_offset_qp=51)
    offsets = continuous_offsets_qp(sensitivity, config)
    geometric_mean = np.exp(np.log(sensitivity).mean())
    np.testing.assert_allclose(offsets, 0.5 * 6 * np.log2(geometric_mean / sensitivity))
    assert abs(offsets.mean()) < 1e-9


def test_quantised_map_has_mean_near_zero_before_the_budget_shift():
    config = AllocationConfig(alpha=0.5, max_offset_qp=10)
    offsets = allocate(_log_normal_sensitivity(), config).offsets_qp
    assert offsets.dtype == np.int8 and offsets.shape == (23, 30)
    assert abs(offsets.astype(float).mean()) < 0.5


def test_doubling_sensitivity_lowers_qp_by_six_alpha():
    sensitivity = np.ones((2, 2))
    sensitivity[0, 0] = 2.0
    offsets = continuous_offsets_qp(sensitivity, AllocationConfig(alpha=1.0))
    assert offsets[0, 1] - offsets[0, 0] == pytest.approx(6.0)


def test_map_is_monotone_non_increasing_in_sensitivity():
    sensitivity = _log_normal_sensitivity(seed=3)
    config = AllocationConfig(alpha=0.8, max_offset_qp=8, levels_qp=(-8, -4, 0, 4, 8))
    offsets = allocate(sensitivity, config).offsets_qp.reshape(-1)
    by_sensitivity = offsets[np.argsort(sensitivity.reshape(-1))]
    assert np.all(np.diff(by_sensitivity.astype(int)) <= 0)
    assert by_sensitivity[0] > by_sensitivity[-1]


def test_offsets_are_clamped_to_dmax():
    sensitivity = np.array([[1e-3, 1.0, 1e3]])
    offsets = allocate(sensitivity, AllocationConfig(alpha=1.0, max_offset_qp=4)).offsets_qp
    assert offsets.tolist() == [[4, 0, -4]]


def test_every_offset_is_a_bank_level():
    bank = (-9, -3, 0, 4, 9)
    config = AllocationConfig(alpha=1.0, max_offset_qp=9, levels_qp=bank)
    allocation = allocate(_log_normal_sensitivity(seed=5), config)
    assert set(np.unique(allocation.offsets_qp)) <= set(bank)
    assert len(np.unique(allocation.offsets_qp)) > 2


def test_nearest_level_picks_closest_and_ties_go_down():
    indices = nearest_level_indices(np.array([-20.0, -4.0, -1.5, 0.5, 2.9, 20.0]), (-4, -1, 2, 5))
    assert indices.tolist() == [0, 0, 1, 1, 2, 3]


def test_budget_shift_moves_the_whole_map():
    sensitivity = _log_normal_sensitivity(seed=1)
    plain = allocate(sensitivity, AllocationConfig())
    shifted = allocate(sensitivity, AllocationConfig(budget_shift_qp=3))
    np.testing.assert_array_equal(shifted.offsets_qp.astype(int), plain.offsets_qp.astype(int) + 3)


def test_smoothing_reduces_macroblock_to_macroblock_jumps():
    sensitivity = _log_normal_sensitivity(seed=2)
    rough = continuous_offsets_qp(sensitivity, AllocationConfig())
    smooth = continuous_offsets_qp(sensitivity, AllocationConfig(smoothing_sigma_mb=1.0))
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.5 * np.abs(np.diff(rough, axis=1)).mean()


def test_zero_sensitivity_gives_a_flat_map_and_zeros_do_not_explode():
    assert not allocate(np.zeros((3, 4)), AllocationConfig()).offsets_qp.any()
    sensitivity = np.ones((3, 4))
    sensitivity[1, 1] = 0.0
    offsets = allocate(sensitivity, AllocationConfig(max_offset_qp=6)).offsets_qp
    assert offsets[1, 1] == 6 and np.all(np.abs(offsets) <= 6)


@pytest.mark.parametrize(
    "bad",
    [np.ones(5), np.full((2, 2), np.nan), -np.ones((2, 2)), np.ones((0, 3))],
)
def test_bad_sensitivity_is_a_value_error(bad):
    with pytest.raises(ValueError, match="sensitivity"):
        allocate(bad, AllocationConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": -1.0},
        {"max_offset_qp": 0},
        {"levels_qp": (3, 1)},
        {"levels_qp": (0,)},
        {"levels_qp": (0, 60)},
        {"smoothing_sigma_mb": -1.0},
    ],
)
def test_bad_config_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        AllocationConfig(**kwargs)


# --- the rate-aware rule q_i ~ a_i / g_i ----------------------------------------------------


def test_flat_and_textured_macroblocks_of_equal_sensitivity_get_the_derived_offsets():
    """Equal sensitivity, energies 100 (flat) and 1e5 (textured): with a ~ (E + E0)^gamma the
    rule gives dQP = alpha * 6 * gamma * log2((E + E0) / geometric mean): the textured one
    coarser, the flat one finer, by exactly that much each (two macroblocks: +-half the gap)."""
    config = AllocationConfig(alpha=0.5, max_offset_qp=51, rate_exponent=0.45, energy_floor=16.0)
    energy = np.array([[100.0, 1e5]])
    offsets = continuous_offsets_qp(np.ones((1, 2)), config, energy)
    gap = 0.5 * 6 * 0.45 * np.log2((1e5 + 16) / (100 + 16))
    np.testing.assert_allclose(offsets, [[-gap / 2, gap / 2]])
    assert offsets[0, 0] < 0 < offsets[0, 1]


def test_rate_aware_offsets_meet_the_equal_marginal_condition_with_mean_zero():
    """alpha 1: g_i q_i / a_i is the same for every macroblock (q = 2^(QP/6)), mean offset 0."""
    rng = np.random.default_rng(7)
    sensitivity = rng.lognormal(0, 1, (23, 30))
    energy = rng.lognormal(10, 3, (23, 30))
    config = AllocationConfig(alpha=1.0, max_offset_qp=51, rate_exponent=0.5, energy_floor=64.0)
    offsets = continuous_offsets_qp(sensitivity, config, energy)
    assert abs(offsets.mean()) < 1e-9
    rate_slope = (energy + 64.0) ** 0.5
    marginal = sensitivity * 2 ** (offsets / 6) / rate_slope
    np.testing.assert_allclose(marginal, marginal.mean(), rtol=1e-9)


def test_rate_aware_quantised_map_keeps_mean_near_zero_before_the_budget_shift():
    rng = np.random.default_rng(8)
    sensitivity, energy = rng.lognormal(0, 1, (23, 30)), rng.lognormal(10, 2, (23, 30))
    config = AllocationConfig(rate_exponent=0.4, energy_floor=256.0)
    plain = allocate(sensitivity, config, energy).offsets_qp.astype(float)
    assert abs(plain.mean()) < 0.5
    shifted = allocate(sensitivity, dataclasses.replace(config, budget_shift_qp=4), energy)
    np.testing.assert_array_equal(shifted.offsets_qp.astype(float), plain + 4)


def test_without_a_rate_exponent_the_energy_is_ignored():
    sensitivity = _log_normal_sensitivity(seed=4)
    energy = np.random.default_rng(4).lognormal(10, 3, sensitivity.shape)
    config = AllocationConfig()
    np.testing.assert_array_equal(
        continuous_offsets_qp(sensitivity, config, energy),
        continuous_offsets_qp(sensitivity, config),
    )


def test_rate_aware_rule_needs_a_matching_energy():
    config = AllocationConfig(rate_exponent=0.4)
    with pytest.raises(ValueError, match="AC energy"):
        allocate(np.ones((2, 3)), config)
    with pytest.raises(ValueError, match="AC energy"):
        allocate(np.ones((2, 3)), config, np.ones((3, 2)))
    with pytest.raises(ValueError, match="AC energy"):
        allocate(np.ones((2, 3)), config, -np.ones((2, 3)))


@pytest.mark.parametrize("kwargs", [{"rate_exponent": -0.1}, {"energy_floor": 0.0}])
def test_bad_rate_model_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        AllocationConfig(**kwargs)
