"""H.264 Annex B byte streams: split access units into NAL units, count and check what they carry.

Rate-distortion experiments must count the bits that code the picture (slice NAL units), not the
SPS/PPS in front of every keyframe nor x264's version SEI; `slice_bytes` gives exactly that.
`FrameNumTracker` reads frame_num from slice headers so that a lost access unit is noticed even
when the transport has no sequence numbers (FFmpeg conceals such gaps without a word).
"""

from __future__ import annotations

from dataclasses import dataclass

NAL_TYPE_SLICE = 1
NAL_TYPE_SLICE_IDR = 5
NAL_TYPE_SEI = 6
NAL_TYPE_SPS = 7
NAL_TYPE_PPS = 8
SLICE_NAL_TYPES = frozenset({NAL_TYPE_SLICE, NAL_TYPE_SLICE_IDR})

_START_CODE = b"\x00\x00\x01"


@dataclass(frozen=True)
class NalUnit:
    """One NAL unit of an Annex B stream: its header fields and its bytes with start code."""

    nal_type: int
    ref_idc: int
    data: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    @property
    def is_slice(self) -> bool:
        return self.nal_type in SLICE_NAL_TYPES

    def rbsp(self, max_bytes: int | None = None) -> bytes:
        """Payload after the one-byte header, emulation-prevention bytes removed."""
        body = self.data[self.data.index(1) + 2 :]
        if max_bytes is not None:
            body = body[: max_bytes + max_bytes // 2]  # room for removed 0x03 bytes
        rbsp = body.replace(b"\x00\x00\x03", b"\x00\x00")
        return rbsp if max_bytes is None else rbsp[:max_bytes]


def split_nal_units(access_unit: bytes) -> list[NalUnit]:
    """NAL units of an Annex B byte string, each with its own (3- or 4-byte) start code.

    Raises ValueError when the data does not start with a start code or holds an empty unit.
    """
    data = bytes(access_unit)
    first = data.find(_START_CODE)
    if first < 0 or data[:first].strip(b"\x00"):
        raise ValueError("not an Annex B byte stream: no start code at the beginning")
    starts = []
    position = first
    while position >= 0:
        starts.append(position)
        position = data.find(_START_CODE, position + len(_START_CODE))
    units = []
    for index, start in enumerate(starts):
        # A zero byte before 00 00 01 belongs to the next unit's 4-byte start code.
        begin = start - 1 if start > 0 and data[start - 1] == 0 else start
        end = starts[index + 1] if index + 1 < len(starts) else len(data)
        if index + 1 < len(starts) and data[end - 1] == 0:
            end -= 1
        header_at = start + len(_START_CODE)
        if header_at >= end:
            raise ValueError(f"empty NAL unit at byte {start}")
        header = data[header_at]
        units.append(
            NalUnit(nal_type=header & 0x1F, ref_idc=(header >> 5) & 0x3, data=data[begin:end])
        )
    return units


def slice_bytes(access_unit: bytes) -> int:
    """Bytes of the slice NAL units (start codes included), without SPS, PPS and SEI."""
    return sum(unit.size_bytes for unit in split_nal_units(access_unit) if unit.is_slice)


def contains_idr(access_unit: bytes) -> bool:
    """True when the access unit holds an IDR slice, i.e. decoding can (re)start here."""
    return any(unit.nal_type == NAL_TYPE_SLICE_IDR for unit in split_nal_units(access_unit))


class _BitReader:
    """Big-endian bit reader with Exp-Golomb codes (H.264 clause 9.1)."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._total_bits = 8 * len(data)
        self._position = 0

    def bits(self, count: int) -> int:
        if self._position + count > self._total_bits:
            raise ValueError("header ends early")
        shift = self._total_bits - self._position - count
        self._position += count
        return (self._value >> shift) & ((1 << count) - 1)

    def ue(self) -> int:
        leading_zeros = 0
        while self.bits(1) == 0:
            leading_zeros += 1
            if leading_zeros > 31:
                raise ValueError("invalid Exp-Golomb code")
        return (1 << leading_zeros) - 1 + self.bits(leading_zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


# profile_idc values whose SPS carries chroma format, bit depths and scaling matrices (7.3.2.1.1)
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_SLICE_HEADER_BYTES = 32


@dataclass(frozen=True)
class _SpsFields:
    log2_max_frame_num: int
    separate_colour_plane: bool


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last_scale, next_scale = 8, 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last_scale + reader.se() + 256) % 256
        last_scale = next_scale or last_scale


def _parse_sps(unit: NalUnit) -> tuple[int, _SpsFields]:
    """(sps id, the fields needed to find frame_num in a slice header)."""
    reader = _BitReader(unit.rbsp())
    profile_idc = reader.bits(8)
    reader.bits(16)  # constraint flags, level_idc
    sps_id = reader.ue()
    if sps_id > 31:
        raise ValueError(f"seq_parameter_set_id {sps_id} out of range 0..31")
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = reader.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = bool(reader.bits(1))
        reader.ue()  # bit_depth_luma_minus8
        reader.ue()  # bit_depth_chroma_minus8
        reader.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if reader.bits(1):  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.bits(1):
                    _skip_scaling_list(reader, 16 if index < 6 else 64)
    log2_max_frame_num = reader.ue() + 4
    if log2_max_frame_num > 16:
        raise ValueError(f"log2_max_frame_num {log2_max_frame_num} out of range")
    return sps_id, _SpsFields(log2_max_frame_num, separate_colour_plane)


def _parse_pps_ids(unit: NalUnit) -> tuple[int, int]:
    reader = _BitReader(unit.rbsp(_SLICE_HEADER_BYTES))
    pps_id, sps_id = reader.ue(), reader.ue()
    if pps_id > 255 or sps_id > 31:
        raise ValueError(f"PPS id {pps_id} or its SPS id {sps_id} out of range (0..255, 0..31)")
    return pps_id, sps_id


class FrameNumTracker:
    """Follows frame_num across access units and reports when one went missing.

    Assumes gaps_in_frame_num_value_allowed_flag = 0, as x264 and nearly all encoders write.
    Parameter set ids are range-checked (SPS 0..31, PPS 0..255), so its memory is bounded.
    (The decoder uses the complete checks of `stac_codec.h264_syntax`.)
    """

    def __init__(self) -> None:
        self._sps: dict[int, _SpsFields] = {}
        self._pps_to_sps: dict[int, int] = {}
        self._previous: tuple[int, bool] | None = None  # (frame_num, was a reference picture)

    def update(self, units: list[NalUnit]) -> str:
        """Digest one access unit; returns "" or a description of the gap before it.

        Raises ValueError on unreadable parameter sets or slice headers.
        """
        for unit in units:
            if unit.nal_type == NAL_TYPE_SPS:
                sps_id, fields = _parse_sps(unit)
                self._sps[sps_id] = fields
            elif unit.nal_type == NAL_TYPE_PPS:
                pps_id, sps_id = _parse_pps_ids(unit)
                self._pps_to_sps[pps_id] = sps_id
        first_slice = next((unit for unit in units if unit.is_slice), None)
        if first_slice is None:
            return ""
        frame_num, max_frame_num = self._read_frame_num(first_slice)
        if frame_num is None:
            return ""  # parameter sets not seen yet: nothing to compare against
        previous, self._previous = self._previous, (frame_num, first_slice.ref_idc != 0)
        if first_slice.nal_type == NAL_TYPE_SLICE_IDR or previous is None:
            return ""
        previous_num, previous_was_reference = previous
        expected = (previous_num + 1) % max_frame_num if previous_was_reference else previous_num
        if frame_num != expected:
            return f"frame_num jumped from {previous_num} to {frame_num} (expected {expected})"
        return ""

    def _read_frame_num(self, unit: NalUnit) -> tuple[int | None, int]:
        reader = _BitReader(unit.rbsp(_SLICE_HEADER_BYTES))
        reader.ue()  # first_mb_in_slice
        reader.ue()  # slice_type
        pps_id = reader.ue()
        sps = self._sps.get(self._pps_to_sps.get(pps_id, -1))
        if sps is None:
            return None, 0
        if sps.separate_colour_plane:
            reader.bits(2)  # colour_plane_id
        return reader.bits(sps.log2_max_frame_num), 1 << sps.log2_max_frame_num
