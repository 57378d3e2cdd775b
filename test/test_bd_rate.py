"""Bjontegaard delta rate (stac_eval.bd_rate) against hand-computed cases."""

import pytest

from stac_eval.bd_rate import NoOverlapError, bd_rate_pct, efficient_points

ANCHOR_MIOU = [0.50, 0.58, 0.63, 0.66, 0.70]
ANCHOR_BYTES = [3000.0, 5200.0, 9000.0, 15000.0, 31000.0]


@pytest.mark.parametrize("factor", [0.8, 0.5, 1.25])
def test_constant_rate_factor_gives_exactly_that_percentage(factor):
    test_bytes = [factor * b for b in ANCHOR_BYTES]
    assert bd_rate_pct(ANCHOR_BYTES, ANCHOR_MIOU, test_bytes, ANCHOR_MIOU) == pytest.approx(
        100 * (factor - 1), abs=1e-9
    )


def test_shifted_exponential_curve_matches_the_hand_computed_value():
    # Anchor: bytes = 100 * 2^(10 (q - 0.5)) for q = 0.5, 0.6, 0.7 (log-rate linear in q, which
    # PCHIP reproduces exactly). Test: the same rates 0.05 mIoU higher, so on the overlap
    # [0.55, 0.70] it needs 2^(-10 * 0.05) = 2^-0.5 of the anchor's bytes: -29.289...%.
    rates = [100.0, 200.0, 400.0]
    value = bd_rate_pct(rates, [0.5, 0.6, 0.7], rates, [0.55, 0.65, 0.75])
    assert value == pytest.approx(100 * (2**-0.5 - 1), abs=1e-9)


def test_sign_is_negative_when_test_needs_fewer_bits():
    cheaper = [0.7 * b for b in ANCHOR_BYTES]
    assert bd_rate_pct(ANCHOR_BYTES, ANCHOR_MIOU, cheaper, ANCHOR_MIOU) < 0
    assert bd_rate_pct(cheaper, ANCHOR_MIOU, ANCHOR_BYTES, ANCHOR_MIOU) > 0


def test_inefficient_points_are_dropped():
    rates, qualities = efficient_points([100, 300, 200, 400, 500], [0.5, 0.55, 0.6, 0.58, 0.7])
    assert rates == [100, 200, 500] and qualities == [0.5, 0.6, 0.7]


def test_dropping_an_inefficient_point_leaves_the_value_unchanged():
    reference = bd_rate_pct(ANCHOR_BYTES, ANCHOR_MIOU, [0.8 * b for b in ANCHOR_BYTES], ANCHOR_MIOU)
    noisy_bytes = [0.8 * b for b in ANCHOR_BYTES] + [20000.0]
    noisy_miou = ANCHOR_MIOU + [0.60]
    assert bd_rate_pct(ANCHOR_BYTES, ANCHOR_MIOU, noisy_bytes, noisy_miou) == pytest.approx(
        reference
    )


def test_disjoint_ranges_raise():
    with pytest.raises(NoOverlapError):
        bd_rate_pct([1, 2], [0.1, 0.2], [1, 2], [0.3, 0.4])


@pytest.mark.parametrize(
    ("rates", "qualities"),
    [([1.0], [0.5]), ([1.0, 1.0], [0.5, 0.5]), ([0.0, 1.0], [0.1, 0.2]), ([1, 2], [0.1])],
)
def test_degenerate_curves_raise_value_error(rates, qualities):
    with pytest.raises(ValueError):
        bd_rate_pct(rates, qualities, ANCHOR_BYTES, ANCHOR_MIOU)


def test_partial_overlap_uses_only_the_shared_range():
    # Log-linear curves (reproduced exactly by PCHIP); the test curve covers only [0.6, 0.8]
    # of the anchor's [0.5, 0.9] and needs 10% fewer bytes there: exactly -10%.
    anchor_miou = [0.5, 0.6, 0.7, 0.8, 0.9]
    anchor_bytes = [1000.0 * 2 ** (10 * q) for q in anchor_miou]
    test_bytes = [0.9 * b for b in anchor_bytes[1:4]]
    value = bd_rate_pct(anchor_bytes, anchor_miou, test_bytes, anchor_miou[1:4])
    assert value == pytest.approx(-10.0, abs=1e-9)
