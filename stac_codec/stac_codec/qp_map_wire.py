"""Compact wire form of a QP map: predicted level indices, adaptive arithmetic coding.

The feedback from edge to robot is part of STAC's cost, so the map travels as indices into the
offline level bank, not as one byte per macroblock. Neighbouring macroblocks tend to share a
level, so each index is predicted from its neighbours (left on the first row, above on the first
column, else the rounded mean of left and above) and the residual (index - prediction) mod L is
coded with an adaptive arithmetic coder (Witten, Neal & Cleary 1987, 32-bit integer precision;
counts start at 1 per symbol, so no table is sent). On CamVid maps this takes about half the
bytes of zlib over bit-packed indices. Layout (big-endian):

    version u8 | rows u16 | cols u16 | shift i8 | L-1 u8 | L levels i8 | arithmetic code | CRC16

The CRC (CCITT, 2 bytes) lets the robot reject a damaged map instead of applying garbage.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np

from stac_codec.qp_map import QPLevelMap

WIRE_VERSION = 2
_HEADER = struct.Struct(">BHHbB")
_PRECISION_BITS = 32
_TOP = (1 << _PRECISION_BITS) - 1
_HALF = 1 << (_PRECISION_BITS - 1)
_QUARTER = 1 << (_PRECISION_BITS - 2)


class WireFormatError(ValueError):
    """A byte string that is not a QP map in this wire form."""


def encode_qp_map(level_map: QPLevelMap) -> bytes:
    """The wire bytes of a level map; len() of the result is the map's feedback size."""
    rows, cols = level_map.level_indices.shape
    levels = level_map.levels_qp
    residuals = _residuals(level_map.level_indices.astype(np.int64), len(levels))
    header = _HEADER.pack(WIRE_VERSION, rows, cols, level_map.budget_shift_qp, len(levels) - 1)
    code = _arithmetic_encode(residuals.tolist(), len(levels))
    body = header + np.asarray(levels, dtype=np.int8).tobytes() + code
    return body + binascii.crc_hqx(body, 0).to_bytes(2, "big")


def decode_qp_map(data: bytes) -> QPLevelMap:
    """Inverse of encode_qp_map; raises WireFormatError on anything malformed."""
    if len(data) < _HEADER.size + 2:
        raise WireFormatError(f"{len(data)} bytes is shorter than header and checksum")
    data, checksum = bytes(data[:-2]), int.from_bytes(data[-2:], "big")
    if binascii.crc_hqx(data, 0) != checksum:
        raise WireFormatError("checksum mismatch: the map was damaged or truncated")
    version, rows, cols, shift, last_level = _HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise WireFormatError(f"wire version {version}, this decoder reads {WIRE_VERSION}")
    num_levels = last_level + 1
    levels_end = _HEADER.size + num_levels
    levels = tuple(int(v) for v in np.frombuffer(data[_HEADER.size : levels_end], np.int8))
    if len(levels) != num_levels or len(data) == levels_end:
        raise WireFormatError("truncated map: level bank or code missing")
    residuals = _arithmetic_decode(data[levels_end:], rows * cols, num_levels)
    indices = _indices_from_residuals(np.asarray(residuals).reshape(rows, cols), num_levels)
    try:
        return QPLevelMap(indices.astype(np.uint8), levels, shift)
    except ValueError as error:
        raise WireFormatError(str(error)) from error


def _predictions(indices: np.ndarray) -> np.ndarray:
    """Each macroblock's prediction from its already-coded neighbours (see module docstring)."""
    predicted = np.zeros_like(indices)
    predicted[0, 1:] = indices[0, :-1]
    predicted[1:, 0] = indices[:-1, 0]
    predicted[1:, 1:] = (indices[1:, :-1] + indices[:-1, 1:] + 1) // 2
    return predicted


def _residuals(indices: np.ndarray, num_levels: int) -> np.ndarray:
    return ((indices - _predictions(indices)) % num_levels).reshape(-1)


def _indices_from_residuals(residuals: np.ndarray, num_levels: int) -> np.ndarray:
    """Undo _residuals in raster order (each prediction needs the indices before it)."""
    rows, cols = residuals.shape
    indices = np.zeros((rows, cols), dtype=np.int64)
    for row in range(rows):
        for col in range(cols):
            if row == 0:
                predicted = indices[0, col - 1] if col else 0
            elif col == 0:
                predicted = indices[row - 1, 0]
            else:
                predicted = (indices[row, col - 1] + indices[row - 1, col] + 1) // 2
            indices[row, col] = (predicted + residuals[row, col]) % num_levels
    return indices


def _arithmetic_encode(symbols: list[int], alphabet: int) -> bytes:
    counts, total = [1] * alphabet, alphabet
    low, high, pending = 0, _TOP, 0
    bits: list[int] = []
    for symbol in symbols:
        below = sum(counts[:symbol])
        span = high - low + 1
        high = low + span * (below + counts[symbol]) // total - 1
        low = low + span * below // total
        while True:
            if high < _HALF:
                bits += [0] + [1] * pending
                pending = 0
            elif low >= _HALF:
                bits += [1] + [0] * pending
                pending = 0
                low, high = low - _HALF, high - _HALF
            elif low >= _QUARTER and high < 3 * _QUARTER:
                pending += 1
                low, high = low - _QUARTER, high - _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
        counts[symbol] += 1
        total += 1
    bits += [0] + [1] * (pending + 1) if low < _QUARTER else [1] + [0] * (pending + 1)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def _arithmetic_decode(code: bytes, count: int, alphabet: int) -> list[int]:
    bits = np.unpackbits(np.frombuffer(code, np.uint8)).tolist()
    bits += [0] * (2 * _PRECISION_BITS)  # reading ahead past the end reads zeros
    value = int("".join(map(str, bits[:_PRECISION_BITS])), 2)
    position = _PRECISION_BITS
    counts, total = [1] * alphabet, alphabet
    low, high = 0, _TOP
    symbols = []
    for _ in range(count):
        span = high - low + 1
        scaled = ((value - low + 1) * total - 1) // span
        symbol, below = 0, 0
        while symbol < alphabet - 1 and scaled >= below + counts[symbol]:
            below += counts[symbol]
            symbol += 1
        symbols.append(symbol)
        high = low + span * (below + counts[symbol]) // total - 1
        low = low + span * below // total
        while True:  # the encoder's renormalisation, step for step
            if high < _HALF:
                pass
            elif low >= _HALF:
                low, high, value = low - _HALF, high - _HALF, value - _HALF
            elif low >= _QUARTER and high < 3 * _QUARTER:
                low, high, value = low - _QUARTER, high - _QUARTER, value - _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
            value = 2 * value + bits[position]
            position += 1
        counts[symbol] += 1
        total += 1
    return symbols
