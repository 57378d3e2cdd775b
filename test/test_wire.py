"""Wire form of QP maps: exact round trip, compact size, typed errors on damaged bytes."""

import binascii

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import WireFormatError, decode_qp_map, encode_qp_map, is_delta
from stac_sensitivity.allocation import AllocationConfig, allocate

BANK = (-10, -6, -3, 0, 3, 6, 10, 12)


def _allocation(levels=BANK, shift=0, seed=0, shape=(23, 30), smooth=0.0):
    sensitivity = np.random.default_rng(seed).lognormal(size=shape)
    if smooth:
        sensitivity = np.exp(gaussian_filter(np.log(sensitivity), smooth))
    config = AllocationConfig(alpha=1.0, max_offset_qp=12, levels_qp=levels, budget_shift_qp=shift)
    return allocate(sensitivity, config)


@pytest.mark.parametrize("levels", [(-4, 4), BANK, tuple(range(-12, 13))])
@pytest.mark.parametrize("shift", [0, -5, 7])
@pytest.mark.parametrize("shape", [(23, 30), (1, 1), (1, 7), (9, 1), (68, 120)])
def test_round_trip_is_exact(levels, shift, shape):
    allocation = _allocation(levels, shift, shape=shape)
    decoded = decode_qp_map(encode_qp_map(allocation))
    np.testing.assert_array_equal(decoded.level_indices, allocation.level_indices)
    assert decoded.levels_qp == allocation.levels_qp
    assert decoded.budget_shift_qp == shift
    np.testing.assert_array_equal(decoded.offsets_qp, allocation.offsets_qp)


def test_spatially_smooth_maps_cost_well_under_the_packed_bits():
    allocation = _allocation(seed=4, smooth=1.5)
    rows, cols = allocation.level_indices.shape
    packed_bytes = rows * cols * 3 / 8  # 8 levels: 3 bits per macroblock
    assert len(encode_qp_map(allocation)) < 0.7 * packed_bytes


def test_unstructured_maps_cost_about_the_packed_bits():
    allocation = _allocation(seed=4)
    rows, cols = allocation.level_indices.shape
    assert len(encode_qp_map(allocation)) < 1.1 * rows * cols * 3 / 8 + 20


def test_flat_map_costs_a_few_dozen_bytes():
    flat = QPLevelMap(np.full((23, 30), 3, np.uint8), BANK)
    assert len(encode_qp_map(flat)) < 30


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[:5],
        lambda data: data[:-4] + data[-2:],
        lambda data: data[:20] + bytes([data[20] ^ 0x10]) + data[21:],
        lambda data: bytes([99]) + data[1:],
    ],
)
def test_damaged_bytes_raise_wire_format_error(mangle):
    with pytest.raises(WireFormatError):
        decode_qp_map(mangle(encode_qp_map(_allocation())))


def test_other_version_is_refused_even_with_a_valid_checksum():
    body = bytes([1]) + encode_qp_map(_allocation())[1:-2]
    with pytest.raises(WireFormatError, match="version"):
        decode_qp_map(body + binascii.crc_hqx(body, 0).to_bytes(2, "big"))


def _with_crc(body: bytes) -> bytes:
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


def _changed(level_map: QPLevelMap, fraction: float, seed: int = 1) -> QPLevelMap:
    """The same map with `fraction` of its macroblocks moved to another level."""
    rng = np.random.default_rng(seed)
    indices = level_map.level_indices.copy()
    chosen = rng.random(indices.shape) < fraction
    indices[chosen] = (indices[chosen] + 3) % len(level_map.levels_qp)
    return QPLevelMap(indices, level_map.levels_qp, level_map.budget_shift_qp)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 1.0])
def test_delta_round_trip_is_exact(fraction):
    reference = _allocation(shape=(36, 48), smooth=1.0)
    new = _changed(reference, fraction)
    data = encode_qp_map(new, reference)
    assert is_delta(data)
    decoded = decode_qp_map(data, reference)
    np.testing.assert_array_equal(decoded.level_indices, new.level_indices)
    assert decoded.levels_qp == new.levels_qp


def test_a_delta_with_few_changes_costs_a_fraction_of_a_key_map():
    reference = _allocation(shape=(36, 48), smooth=1.0)
    new = _changed(reference, 0.05)
    assert len(encode_qp_map(new, reference)) < 0.4 * len(encode_qp_map(new))


def test_a_delta_refuses_a_missing_or_wrong_reference():
    reference = _allocation(shape=(36, 48), seed=1)
    data = encode_qp_map(_changed(reference, 0.1), reference)
    with pytest.raises(WireFormatError, match="needs its reference"):
        decode_qp_map(data)
    with pytest.raises(WireFormatError, match="not the one"):
        decode_qp_map(data, _changed(reference, 0.01, seed=7))
    with pytest.raises(WireFormatError, match="shape"):
        decode_qp_map(data, _allocation(shape=(35, 48)))


def test_encoding_a_delta_against_another_bank_is_refused():
    with pytest.raises(ValueError, match="same shape and level bank"):
        encode_qp_map(_allocation(levels=BANK), _allocation(levels=(-4, 4)))


def test_a_forged_huge_map_is_refused_before_any_work():
    body = bytes([3, 0]) + (65535).to_bytes(2, "big") * 2 + bytes([0, 1, 0xFC, 4]) + b"\x55" * 8
    with pytest.raises(WireFormatError, match="out of bounds"):
        decode_qp_map(_with_crc(body))


def test_a_forged_code_with_a_valid_checksum_raises_the_domain_error():
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(200):
        header = bytes([3, 0, 0, 20, 0, 30, 0, 7])  # key map, 20 x 30, 8 levels
        levels = np.asarray(BANK, dtype=np.int8).tobytes()
        code = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            decode_qp_map(_with_crc(header + levels + code))
            outcomes.add("decoded")
        except WireFormatError:
            outcomes.add("refused")
    assert outcomes <= {"decoded", "refused"}
