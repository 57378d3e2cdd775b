"""The masks' wire form: lossless, compact, and a decoder of outside bytes that only ever raises
MaskWireError (never allocates what a forged header asks for)."""

from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stac_codec.mask_wire import MaskWireError, decode_mask, encode_mask


def street_like(height: int = 270, width: int = 480, seed: int = 0) -> np.ndarray:
    """Horizontal bands (sky, buildings, road) with a few objects: what masks look like."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3 :] = 1
    mask[2 * height // 3 :] = 3
    for _ in range(12):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 30)
        mask[y : y + rng.integers(5, 20), x : x + rng.integers(3, 30)] = rng.integers(0, 11)
    return mask


def test_round_trip_is_exact_and_small():
    mask = street_like()
    data = encode_mask(mask)
    np.testing.assert_array_equal(decode_mask(data, max_pixels=mask.size), mask)
    assert len(data) < mask.size / 100  # far below raw mono8


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((1, 1), np.uint8),
        np.full((3000, 3000), 7, np.uint8),  # one run longer than three varint bytes hold
        np.random.default_rng(1).integers(0, 255, (33, 17)).astype(np.uint8),
    ],
    ids=["one_pixel", "one_long_run", "noise"],
)
def test_edge_cases_round_trip(mask):
    np.testing.assert_array_equal(decode_mask(encode_mask(mask), max_pixels=mask.size), mask)


def test_damage_and_forgery_are_refused():
    data = bytearray(encode_mask(street_like()))
    data[20] ^= 0x10
    with pytest.raises(MaskWireError, match="checksum"):
        decode_mask(bytes(data), max_pixels=480 * 270)
    # a valid checksum over a header that promises a huge mask: refused before allocating
    body = struct.pack(">BHHI", 1, 16384, 16384, 1) + zlib.compress(b"\x00" + b"\xff\xff\x7f")
    forged = body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(MaskWireError, match="larger than"):
        decode_mask(forged, max_pixels=4096 * 4096)
    with pytest.raises(MaskWireError, match="do not cover"):
        decode_mask(forged, max_pixels=16384 * 16384)
    with pytest.raises(ValueError):
        encode_mask(np.zeros((4, 4), np.int32))


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_random_bytes_only_raise_mask_wire_error(payload, runs):
    for data in (payload, _with_valid_frame(payload, runs)):
        with contextlib.suppress(MaskWireError):
            decode_mask(data, max_pixels=64 * 48)


def _with_valid_frame(payload: bytes, runs: int) -> bytes:
    body = struct.pack(">BHHI", 1, 64, 48, runs) + payload
    return body + struct.pack(">I", zlib.crc32(body))
