"""Compact wire form of a QP map: level indices, context-modelled adaptive arithmetic coding.

The feedback from edge to robot is part of STAC's cost, so a map travels as indices into the
offline level bank, not as one byte per macroblock, in one of two kinds:

* key: each index is predicted from its already-coded neighbours (left on the first row, above
  on the first column, else the rounded mean of left and above) and the residual
  (index - prediction) mod L is coded. Decodable on its own.
* delta: the residual (index - reference index) mod L against a map the robot already holds
  (named by the message carrying the bytes). Consecutive maps of one scene differ in few
  macroblocks, so most residuals are 0 and a delta costs a fraction of a key map.

Residuals are coded with an adaptive arithmetic coder (Witten, Neal & Cleary 1987, 32-bit
integer precision; counts start at 1 per symbol and grow by 8, so no table is sent and the
model learns a skewed delta within a few dozen macroblocks). On 768x576 maps (1728
macroblocks, 21 levels) of a street scene a key map takes about 590 bytes, about 2.7 bits per
macroblock. Layout (big-endian):

    key:   version u8 | kind u8 | rows u16 | cols u16 | shift i8 | L-1 u8 | L levels i8 |
           arithmetic code | CRC16
    delta: version u8 | kind u8 | rows u16 | cols u16 | shift i8 | L-1 u8 |
           CRC16 of the reference's level bank and indices | arithmetic code | CRC16

A delta takes the level bank from its reference. The trailing CRC (CCITT) lets the robot reject
a damaged map instead of applying garbage; the reference CRC makes a delta refuse a reference
other than the one it was coded against (an edge that restarted, a map the robot never saw).
Sizes are bounded before anything is allocated: no forged header can make the decoder work on
more than `MAX_MACROBLOCKS`.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np

from stac_codec.qp_map import QPLevelMap

WIRE_VERSION = 3
KIND_KEY = 0
KIND_DELTA = 1
MAX_SIDE_MACROBLOCKS = 1024  # 16384 px, the largest picture side H.264 levels allow
MAX_MACROBLOCKS = 139_264  # H.264 level 6.2's MaxFS (8192x4320 is 138,240)
_HEADER = struct.Struct(">BBHHbB")
_CRC = struct.Struct(">H")
_COUNT_INCREMENT = 8
_PRECISION_BITS = 32
_TOP = (1 << _PRECISION_BITS) - 1
_HALF = 1 << (_PRECISION_BITS - 1)
_QUARTER = 1 << (_PRECISION_BITS - 2)


class WireFormatError(ValueError):
    """A byte string that is not a QP map in this wire form (or not for this reference)."""


def encode_qp_map(level_map: QPLevelMap, reference: QPLevelMap | None = None) -> bytes:
    """The wire bytes of a level map (a delta against `reference` when given).

    len() of the result is the map's feedback size. Raises ValueError when the reference has
    another shape or level bank (send a key map then).
    """
    rows, cols = level_map.shape
    if not (1 <= rows <= MAX_SIDE_MACROBLOCKS and 1 <= cols <= MAX_SIDE_MACROBLOCKS):
        raise ValueError(f"a {rows}x{cols} map is outside the wire form's bounds")
    levels = level_map.levels_qp
    indices = level_map.level_indices.astype(np.int64)
    if reference is None:
        kind, side_info = KIND_KEY, np.asarray(levels, dtype=np.int8).tobytes()
        residuals = (indices - _predictions(indices)) % len(levels)
    else:
        if reference.shape != level_map.shape or reference.levels_qp != levels:
            raise ValueError("a delta needs a reference of the same shape and level bank")
        kind, side_info = KIND_DELTA, _CRC.pack(_reference_crc(reference))
        residuals = (indices - reference.level_indices.astype(np.int64)) % len(levels)
    header = _HEADER.pack(
        WIRE_VERSION, kind, rows, cols, level_map.budget_shift_qp, len(levels) - 1
    )
    body = header + side_info + _arithmetic_encode(residuals, len(levels))
    return body + _CRC.pack(binascii.crc_hqx(body, 0))


def is_delta(data: bytes) -> bool:
    """True when `data` is a delta map (decoding needs its reference); False for a key map.

    Raises WireFormatError when the bytes are too short to tell.
    """
    if len(data) < _HEADER.size:
        raise WireFormatError(f"{len(data)} bytes is shorter than the header")
    return data[1] == KIND_DELTA


def decode_qp_map(data: bytes, reference: QPLevelMap | None = None) -> QPLevelMap:
    """Inverse of encode_qp_map; raises WireFormatError on anything malformed, and on a delta
    whose reference is missing or is not the map it was coded against."""
    data = bytes(data)
    if len(data) < _HEADER.size + _CRC.size:
        raise WireFormatError(f"{len(data)} bytes is shorter than header and checksum")
    body, (checksum,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if binascii.crc_hqx(body, 0) != checksum:
        raise WireFormatError("checksum mismatch: the map was damaged or truncated")
    version, kind, rows, cols, shift, last_level = _HEADER.unpack_from(body)
    if version != WIRE_VERSION:
        raise WireFormatError(f"wire version {version}, this decoder reads {WIRE_VERSION}")
    _check_bounds(kind, rows, cols)
    num_levels = last_level + 1
    if kind == KIND_KEY:
        position = _HEADER.size + num_levels
        levels = tuple(int(v) for v in np.frombuffer(body[_HEADER.size : position], np.int8))
        if len(levels) != num_levels:
            raise WireFormatError("truncated map: level bank missing")
    else:
        position = _HEADER.size + _CRC.size
        reference = _checked_reference(body, reference, (rows, cols), num_levels)
        levels = reference.levels_qp
    if position >= len(body):
        raise WireFormatError("truncated map: no code")
    residuals = _arithmetic_decode(body[position:], rows, cols, num_levels)
    if kind == KIND_KEY:
        indices = _indices_from_residuals(residuals, num_levels)
    else:
        indices = (reference.level_indices.astype(np.int64) + residuals) % num_levels
    try:
        return QPLevelMap(indices.astype(np.uint8), levels, shift)
    except ValueError as error:
        raise WireFormatError(str(error)) from error


def _check_bounds(kind: int, rows: int, cols: int) -> None:
    if kind not in (KIND_KEY, KIND_DELTA):
        raise WireFormatError(f"unknown map kind {kind}")
    if not (1 <= rows <= MAX_SIDE_MACROBLOCKS and 1 <= cols <= MAX_SIDE_MACROBLOCKS):
        raise WireFormatError(f"map of {rows}x{cols} macroblocks is out of bounds")
    if rows * cols > MAX_MACROBLOCKS:
        raise WireFormatError(f"map of {rows * cols} macroblocks exceeds {MAX_MACROBLOCKS}")


def _checked_reference(
    body: bytes, reference: QPLevelMap | None, shape: tuple[int, int], num_levels: int
) -> QPLevelMap:
    """The reference a delta names, after checking it is the map the delta was coded on."""
    if len(body) < _HEADER.size + _CRC.size:
        raise WireFormatError("truncated delta: reference checksum missing")
    if reference is None:
        raise WireFormatError("a delta map needs its reference map, which is not held")
    (expected,) = _CRC.unpack_from(body, _HEADER.size)
    if reference.shape != shape or len(reference.levels_qp) != num_levels:
        raise WireFormatError("the reference map has another shape or level bank")
    if _reference_crc(reference) != expected:
        raise WireFormatError("the reference map held is not the one this delta was coded on")
    return reference


def _reference_crc(level_map: QPLevelMap) -> int:
    levels = np.asarray(level_map.levels_qp, dtype=np.int8).tobytes()
    indices = np.ascontiguousarray(level_map.level_indices).tobytes()
    return binascii.crc_hqx(levels + indices, 0)


def _predictions(indices: np.ndarray) -> np.ndarray:
    """Each macroblock's prediction from its already-coded neighbours (see module docstring)."""
    predicted = np.zeros_like(indices)
    predicted[0, 1:] = indices[0, :-1]
    predicted[1:, 0] = indices[:-1, 0]
    predicted[1:, 1:] = (indices[1:, :-1] + indices[:-1, 1:] + 1) // 2
    return predicted


def _indices_from_residuals(residuals: np.ndarray, num_levels: int) -> np.ndarray:
    """Undo the key map's prediction in raster order (each prediction needs the indices before)."""
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


class _AdaptiveModel:
    """Adaptive symbol counts: every symbol starts at 1, a coded symbol grows by 8."""

    def __init__(self, alphabet: int) -> None:
        self.counts = [1] * alphabet
        self.total = alphabet

    def interval(self, symbol: int) -> tuple[int, int]:
        below = sum(self.counts[:symbol])
        return below, below + self.counts[symbol]

    def update(self, symbol: int) -> None:
        self.counts[symbol] += _COUNT_INCREMENT
        self.total += _COUNT_INCREMENT


def _arithmetic_encode(residuals: np.ndarray, alphabet: int) -> bytes:
    model = _AdaptiveModel(alphabet)
    low, high, pending = 0, _TOP, 0
    bits: list[int] = []
    for symbol in residuals.reshape(-1).tolist():
        below, above = model.interval(symbol)
        span = high - low + 1
        high = low + span * above // model.total - 1
        low = low + span * below // model.total
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
        model.update(symbol)
    bits += [0] + [1] * (pending + 1) if low < _QUARTER else [1] + [0] * (pending + 1)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def _arithmetic_decode(code: bytes, rows: int, cols: int, alphabet: int) -> np.ndarray:
    """rows x cols residuals; bits past the end of `code` read as zeros (bounded by the count)."""
    bits = np.unpackbits(np.frombuffer(code, np.uint8)).tolist()
    available = len(bits)

    def bit(index: int) -> int:
        return bits[index] if index < available else 0

    value = 0
    for index in range(_PRECISION_BITS):
        value = 2 * value + bit(index)
    position = _PRECISION_BITS
    model = _AdaptiveModel(alphabet)
    low, high = 0, _TOP
    residuals = np.zeros(rows * cols, dtype=np.int64)
    for index in range(rows * cols):
        span = high - low + 1
        scaled = ((value - low + 1) * model.total - 1) // span
        symbol, below = 0, 0
        while symbol < alphabet - 1 and scaled >= below + model.counts[symbol]:
            below += model.counts[symbol]
            symbol += 1
        residuals[index] = symbol
        high = low + span * (below + model.counts[symbol]) // model.total - 1
        low = low + span * below // model.total
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
            value = 2 * value + bit(position)
            position += 1
        if not low <= value <= high:  # never in a stream the encoder wrote
            raise WireFormatError("corrupt arithmetic code")
        model.update(symbol)
    return residuals.reshape(rows, cols)
