"""Wire form of QP maps: exact round trip, compact size, typed errors on bad bytes."""

import numpy as np
import pytest

from stac_sensitivity.allocation import AllocationConfig, QPAllocation, allocate
from stac_sensitivity.wire import WireFormatError, bits_per_index, decode_qp_map, encode_qp_map


def _allocation(levels=(-10, -6, -3, 0, 3, 6, 10, 12), shift=0, seed=0, shape=(23, 30)):
    sensitivity = np.random.default_rng(seed).lognormal(size=shape)
    config = AllocationConfig(alpha=1.0, max_offset_qp=12, levels_qp=levels, budget_shift_qp=shift)
    return allocate(sensitivity, config)


@pytest.mark.parametrize("levels", [(-4, 4), (-10, -6, -3, 0, 3, 6, 10, 12), tuple(range(-12, 13))])
@pytest.mark.parametrize("shift", [0, -5, 7])
def test_round_trip_is_exact(levels, shift):
    allocation = _allocation(levels, shift)
    decoded = decode_qp_map(encode_qp_map(allocation))
    np.testing.assert_array_equal(decoded.level_indices, allocation.level_indices)
    assert decoded.levels_qp == allocation.levels_qp
    assert decoded.budget_shift_qp == shift
    np.testing.assert_array_equal(decoded.offsets_qp, allocation.offsets_qp)


def test_size_is_at_most_header_plus_packed_bits_plus_zlib_overhead():
    allocation = _allocation(seed=4)
    rows, cols = allocation.level_indices.shape
    packed_bytes = -(-rows * cols * bits_per_index(8) // 8)
    size = len(encode_qp_map(allocation))
    assert size <= 8 + 8 + packed_bytes + 16
    assert size < rows * cols  # well under one byte per macroblock


def test_flat_map_compresses_to_a_few_dozen_bytes():
    flat = QPAllocation(np.full((23, 30), 3, np.uint8), (-10, -6, -3, 0, 3, 6, 10, 12))
    assert len(encode_qp_map(flat)) < 40


def test_bits_per_index():
    assert [bits_per_index(n) for n in (2, 3, 4, 8, 9, 21, 256)] == [1, 2, 2, 3, 4, 5, 8]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[:5],
        lambda data: bytes([99]) + data[1:],
        lambda data: data[:-4],
        lambda data: data[:1] + bytes([7]) + data[2:],
    ],
)
def test_malformed_bytes_raise_wire_format_error(mangle):
    with pytest.raises(WireFormatError):
        decode_qp_map(mangle(encode_qp_map(_allocation())))
