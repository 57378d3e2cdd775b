"""Compact wire form of a QP map: level indices packed to ceil(log2 L) bits, then zlib.

The feedback from edge to robot is part of STAC's cost, so the map travels as indices into the
offline level bank rather than as one byte per macroblock. Layout (big-endian):

    version u8 | layout u8 | rows u16 | cols u16 | shift i8 | L-1 u8 | L levels i8 | zlib payload

layout 0: indices bit-packed at ceil(log2 L) bits each; layout 1: one byte per index. zlib finds
byte-aligned repeats more easily, so smooth maps can be smaller in layout 1; the encoder keeps
whichever is smaller.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from stac_sensitivity.allocation import QPAllocation

WIRE_VERSION = 1
_HEADER = struct.Struct(">BBHHbB")
_LAYOUT_BITS = 0
_LAYOUT_BYTES = 1


class WireFormatError(ValueError):
    """A byte string that is not a QP map in this wire form."""


def bits_per_index(num_levels: int) -> int:
    """Bits needed for one level index in a bank of num_levels levels (at least 1)."""
    return max(1, math.ceil(math.log2(num_levels)))


def encode_qp_map(allocation: QPAllocation) -> bytes:
    """The wire bytes of an allocation; len() of the result is the map's feedback size."""
    rows, cols = allocation.level_indices.shape
    levels = allocation.levels_qp
    indices = allocation.level_indices.reshape(-1)
    bit_packed = zlib.compress(_pack_bits(indices, bits_per_index(len(levels))), 9)
    byte_packed = zlib.compress(indices.tobytes(), 9)
    layout, payload = min(
        (_LAYOUT_BITS, bit_packed), (_LAYOUT_BYTES, byte_packed), key=lambda item: len(item[1])
    )
    header = _HEADER.pack(
        WIRE_VERSION, layout, rows, cols, allocation.budget_shift_qp, len(levels) - 1
    )
    return header + np.asarray(levels, dtype=np.int8).tobytes() + payload


def decode_qp_map(data: bytes) -> QPAllocation:
    """Inverse of encode_qp_map; raises WireFormatError on anything malformed."""
    if len(data) < _HEADER.size:
        raise WireFormatError(f"{len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    version, layout, rows, cols, shift, last_level = _HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise WireFormatError(f"wire version {version}, this decoder reads {WIRE_VERSION}")
    num_levels = last_level + 1
    levels_end = _HEADER.size + num_levels
    levels = tuple(int(v) for v in np.frombuffer(data[_HEADER.size : levels_end], np.int8))
    if len(levels) != num_levels:
        raise WireFormatError("truncated level bank")
    try:
        payload = zlib.decompress(data[levels_end:])
    except zlib.error as error:
        raise WireFormatError(f"corrupt payload: {error}") from error
    count = rows * cols
    if layout == _LAYOUT_BITS:
        indices = _unpack_bits(payload, bits_per_index(num_levels), count)
    elif layout == _LAYOUT_BYTES:
        indices = np.frombuffer(payload, np.uint8)
    else:
        raise WireFormatError(f"unknown layout {layout}")
    if indices.size != count:
        raise WireFormatError(f"payload holds {indices.size} indices, expected {rows}x{cols}")
    try:
        return QPAllocation(indices.reshape(rows, cols).copy(), levels, shift)
    except ValueError as error:
        raise WireFormatError(str(error)) from error


def _pack_bits(indices: np.ndarray, bits: int) -> bytes:
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    planes = (indices[:, None] >> shifts) & 1
    return np.packbits(planes.reshape(-1).astype(np.uint8)).tobytes()


def _unpack_bits(payload: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(payload, np.uint8))
    if flat.size < count * bits:
        raise WireFormatError(f"payload holds {flat.size} bits, expected {count * bits}")
    planes = flat[: count * bits].reshape(count, bits).astype(np.uint16)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint16)
    return (planes @ weights).astype(np.uint8)
