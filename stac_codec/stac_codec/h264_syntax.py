"""H.264 syntax checks of access units from outside, before FFmpeg sees them.

FFmpeg decodes what it can and conceals the rest; it accepts parameter sets with out-of-range
fields, pictures far larger than the caller expects, and slice headers whose fields make no
sense for the stream. `AccessUnitChecker` parses every SPS and PPS completely (ITU-T H.264
7.3.2.1, 7.3.2.2, Annex E VUI), every slice header up to the slice data (7.3.3), checks each
field against the range the standard gives it, checks the RBSP trailing bits (a flipped bit in
an Exp-Golomb code nearly always shifts the rest of the unit, so the stop bit lands elsewhere),
and checks the access unit as a whole: one primary picture, all slices of one kind and one
picture, the first slice at macroblock 0, slices in increasing macroblock order, parameter sets
known and referenced consistently, frame_num continuity (a lost picture), and the picture size
against the size the caller expects and a maximum. It raises `SyntaxCheckError` naming the
problem, and commits parameter sets to its state only when the whole access unit passed, so a
damaged unit never replaces a good SPS/PPS.

Memory is bounded: ids are range-checked (SPS 0..31, PPS 0..255), so at most 32 SPS and 256
PPS are kept, and no size from the stream drives an allocation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from stac_codec.annexb import (
    NAL_TYPE_PPS,
    NAL_TYPE_SEI,
    NAL_TYPE_SLICE,
    NAL_TYPE_SLICE_IDR,
    NAL_TYPE_SPS,
    NalUnit,
)

MAX_SPS_ID = 31
MAX_PPS_ID = 255
NAL_TYPE_AUD = 9
NAL_TYPE_END_OF_SEQUENCE = 10
NAL_TYPE_END_OF_STREAM = 11
NAL_TYPE_FILLER = 12
# What one access unit of a progressive, single-layer stream may hold.
ALLOWED_NAL_TYPES = frozenset(
    {
        NAL_TYPE_SLICE,
        NAL_TYPE_SLICE_IDR,
        NAL_TYPE_SEI,
        NAL_TYPE_SPS,
        NAL_TYPE_PPS,
        NAL_TYPE_AUD,
        NAL_TYPE_END_OF_SEQUENCE,
        NAL_TYPE_END_OF_STREAM,
        NAL_TYPE_FILLER,
    }
)
# profile_idc values whose SPS carries chroma format, bit depths and scaling matrices (FFmpeg's
# list, which includes the withdrawn 144).
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135, 144})
SLICE_P, SLICE_B, SLICE_I, SLICE_SP, SLICE_SI = range(5)
# Level 5.1/5.2 MaxFS: 4096x2304 (or 2304x4096).
DEFAULT_MAX_MACROBLOCKS = 36_864
MAX_SIDE_PIXELS = 8192

# In-band checksum: an SEI user_data_unregistered message (payloadType 5) with this UUID and the
# CRC32 (big-endian) of every other NAL unit of the access unit, start codes included, in order.
CHECKSUM_UUID = bytes.fromhex("5354414321c0ffee8a1d4b2e9f3c7a51")  # "STAC!" + random
_CHECKSUM_PAYLOAD_SIZE = len(CHECKSUM_UUID) + 4


class SyntaxCheckError(ValueError):
    """An access unit that breaks the H.264 syntax, its ranges, or what the caller expects."""


class MissingChecksumError(SyntaxCheckError):
    """The access unit carries no checksum SEI, but the caller requires one."""


class _Reader:
    """Bit reader over an RBSP with Exp-Golomb codes and range-checked reads.

    Each read costs O(bits read), whatever the size of the unit, so a huge hostile parameter
    set cannot make parsing quadratic."""

    def __init__(self, rbsp: bytes, what: str) -> None:
        self._data = rbsp
        self._total = 8 * len(rbsp)
        self._position = 0
        self._what = what
        # index of the rbsp_stop_one_bit: the last 1 bit of the payload (-1: none)
        body = rbsp.rstrip(b"\x00")
        last = body[-1] if body else 0
        self._stop = 8 * len(body) - (last & -last).bit_length() if body else -1

    def error(self, message: str) -> SyntaxCheckError:
        return SyntaxCheckError(f"{self._what}: {message}")

    def u(self, count: int, name: str = "") -> int:
        if self._position + count > self._total:
            raise self.error(f"ends inside {name or 'a field'}")
        first = self._position >> 3
        end = (self._position + count + 7) >> 3
        chunk = int.from_bytes(self._data[first:end], "big")
        shift = 8 * end - self._position - count
        self._position += count
        return (chunk >> shift) & ((1 << count) - 1)

    def flag(self, name: str = "") -> bool:
        return bool(self.u(1, name))

    def ue(self, name: str, low: int = 0, high: int = (1 << 32) - 2) -> int:
        zeros = 0
        while self.u(1, name) == 0:
            zeros += 1
            if zeros > 32:
                raise self.error(f"invalid Exp-Golomb code for {name}")
        value = (1 << zeros) - 1 + self.u(zeros, name)
        return self._check(value, name, low, high)

    def se(self, name: str, low: int, high: int) -> int:
        code = self.ue(name)
        value = (code + 1) // 2 if code % 2 else -(code // 2)
        return self._check(value, name, low, high)

    def _check(self, value: int, name: str, low: int, high: int) -> int:
        if not low <= value <= high:
            raise self.error(f"{name} = {value} out of range {low}..{high}")
        return value

    def more_rbsp_data(self) -> bool:
        return self._position < self._stop

    def byte_aligned(self) -> bool:
        return self._position % 8 == 0

    def trailing_bits(self) -> None:
        """rbsp_trailing_bits(): the stop bit here, then nothing but zero bits."""
        if self._position != self._stop:
            raise self.error(
                f"rbsp trailing bits not where the syntax ends (bit {self._position}, "
                f"stop bit at {self._stop})"
            )


def _scaling_list(reader: _Reader, size: int) -> None:
    last, following = 8, 8
    for _ in range(size):
        if following != 0:
            delta = reader.se("delta_scale", -128, 127)
            following = (last + delta + 256) % 256
        last = following or last


@dataclass(frozen=True)
class SequenceParameterSet:
    sps_id: int
    profile_idc: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    log2_max_frame_num: int
    pic_order_cnt_type: int
    log2_max_poc_lsb: int
    delta_pic_order_always_zero: bool
    max_num_ref_frames: int
    gaps_in_frame_num_allowed: bool
    width_mbs: int
    height_mbs: int  # of a frame
    frame_mbs_only: bool
    width: int  # cropped, in pixels
    height: int
    raw: bytes

    @property
    def macroblocks(self) -> int:
        return self.width_mbs * self.height_mbs

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_plane else self.chroma_format_idc


@dataclass(frozen=True)
class PictureParameterSet:
    pps_id: int
    sps_id: int
    entropy_coding_mode: bool
    bottom_field_pic_order_in_frame_present: bool
    num_ref_idx_default: tuple[int, int]
    weighted_pred: bool
    weighted_bipred_idc: int
    pic_init_qp: int
    deblocking_filter_control_present: bool
    redundant_pic_cnt_present: bool
    raw: bytes


@dataclass(frozen=True)
class SliceHeader:
    first_mb: int
    slice_type: int  # 0..4 (P, B, I, SP, SI)
    pps_id: int
    frame_num: int
    field_pic: bool
    idr_pic_id: int | None
    nal_type: int
    reference: bool


def slice_start(unit: NalUnit) -> tuple[int, int]:
    """(first_mb_in_slice, slice_type % 5) of a slice NAL unit: the two fields before any
    that need the stream's parameter sets, so one unit can be classified on its own (which
    picture it starts, I/P/B). SyntaxCheckError when the header ends early or the code is
    invalid."""
    reader = _Reader(unit.rbsp(16), "slice header")
    first_mb = reader.ue("first_mb_in_slice")
    return first_mb, reader.ue("slice_type", 0, 9) % 5


def parse_sps(unit: NalUnit) -> SequenceParameterSet:
    reader = _Reader(unit.rbsp(), "SPS")
    profile_idc = reader.u(8, "profile_idc")
    reader.u(8, "constraint flags")
    reader.u(8, "level_idc")
    sps_id = reader.ue("seq_parameter_set_id", 0, MAX_SPS_ID)
    chroma_format_idc, separate_colour_plane, bit_depth_luma = 1, False, 8
    if profile_idc in HIGH_PROFILES:
        chroma_format_idc = reader.ue("chroma_format_idc", 0, 3)
        if chroma_format_idc == 3:
            separate_colour_plane = reader.flag()
        bit_depth_luma = 8 + reader.ue("bit_depth_luma_minus8", 0, 6)
        reader.ue("bit_depth_chroma_minus8", 0, 6)
        reader.flag()  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format_idc != 3 else 12):
                if reader.flag():
                    _scaling_list(reader, 16 if index < 6 else 64)
    log2_max_frame_num = 4 + reader.ue("log2_max_frame_num_minus4", 0, 12)
    poc_type = reader.ue("pic_order_cnt_type", 0, 2)
    log2_max_poc_lsb, always_zero = 0, False
    if poc_type == 0:
        log2_max_poc_lsb = 4 + reader.ue("log2_max_pic_order_cnt_lsb_minus4", 0, 12)
    elif poc_type == 1:
        always_zero = reader.flag()
        reader.se("offset_for_non_ref_pic", -(2**31) + 1, 2**31 - 1)
        reader.se("offset_for_top_to_bottom_field", -(2**31) + 1, 2**31 - 1)
        cycle = reader.ue("num_ref_frames_in_pic_order_cnt_cycle", 0, 255)
        for _ in range(cycle):
            reader.se("offset_for_ref_frame", -(2**31) + 1, 2**31 - 1)
    max_num_ref_frames = reader.ue("max_num_ref_frames", 0, 16)
    gaps_allowed = reader.flag()
    width_mbs = 1 + reader.ue("pic_width_in_mbs_minus1", 0, MAX_SIDE_PIXELS // 16 - 1)
    map_units = 1 + reader.ue("pic_height_in_map_units_minus1", 0, MAX_SIDE_PIXELS // 16 - 1)
    frame_mbs_only = reader.flag()
    if not frame_mbs_only:
        reader.flag()  # mb_adaptive_frame_field_flag
    reader.flag()  # direct_8x8_inference_flag
    height_mbs = map_units * (1 if frame_mbs_only else 2)
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    crop_x = 1 if chroma_array_type == 0 else (2 if chroma_format_idc in (1, 2) else 1)
    crop_y = (1 if chroma_array_type in (0, 2, 3) else 2) * (1 if frame_mbs_only else 2)
    crop = [0, 0, 0, 0]
    if reader.flag():  # frame_cropping_flag
        crop = [reader.ue(name, 0, 2 * MAX_SIDE_PIXELS) for name in ("crop_l", "crop_r")] + [
            reader.ue(name, 0, 2 * MAX_SIDE_PIXELS) for name in ("crop_t", "crop_b")
        ]
    width = 16 * width_mbs - crop_x * (crop[0] + crop[1])
    height = 16 * height_mbs - crop_y * (crop[2] + crop[3])
    if width < 1 or height < 1:
        raise reader.error(f"cropping leaves no picture ({width}x{height})")
    if reader.flag():  # vui_parameters_present_flag
        _vui(reader, max_num_ref_frames)
    reader.trailing_bits()
    return SequenceParameterSet(
        sps_id=sps_id,
        profile_idc=profile_idc,
        chroma_format_idc=chroma_format_idc,
        separate_colour_plane=separate_colour_plane,
        bit_depth_luma=bit_depth_luma,
        log2_max_frame_num=log2_max_frame_num,
        pic_order_cnt_type=poc_type,
        log2_max_poc_lsb=log2_max_poc_lsb,
        delta_pic_order_always_zero=always_zero,
        max_num_ref_frames=max_num_ref_frames,
        gaps_in_frame_num_allowed=gaps_allowed,
        width_mbs=width_mbs,
        height_mbs=height_mbs,
        frame_mbs_only=frame_mbs_only,
        width=width,
        height=height,
        raw=unit.rbsp(),
    )


def _vui(reader: _Reader, max_num_ref_frames: int) -> None:
    # aspect_ratio_info_present_flag, then aspect_ratio_idc 255 (Extended_SAR) carries the SAR
    if reader.flag() and reader.u(8, "aspect_ratio_idc") == 255:
        reader.u(32, "sar")
    if reader.flag():  # overscan_info_present_flag
        reader.flag()
    if reader.flag():  # video_signal_type_present_flag
        reader.u(4, "video_format, video_full_range_flag")
        if reader.flag():  # colour_description_present_flag
            reader.u(24, "colour description")
    if reader.flag():  # chroma_loc_info_present_flag
        reader.ue("chroma_sample_loc_type_top_field", 0, 5)
        reader.ue("chroma_sample_loc_type_bottom_field", 0, 5)
    if reader.flag():  # timing_info_present_flag
        if reader.u(32, "num_units_in_tick") == 0 or reader.u(32, "time_scale") == 0:
            raise reader.error("num_units_in_tick and time_scale must be > 0")
        reader.flag()  # fixed_frame_rate_flag
    nal_hrd = reader.flag()
    if nal_hrd:
        _hrd(reader)
    vcl_hrd = reader.flag()
    if vcl_hrd:
        _hrd(reader)
    if nal_hrd or vcl_hrd:
        reader.flag()  # low_delay_hrd_flag
    reader.flag()  # pic_struct_present_flag
    if reader.flag():  # bitstream_restriction_flag
        reader.flag()  # motion_vectors_over_pic_boundaries_flag
        reader.ue("max_bytes_per_pic_denom", 0, 16)
        reader.ue("max_bits_per_mb_denom", 0, 16)
        reader.ue("log2_max_mv_length_horizontal", 0, 16)
        reader.ue("log2_max_mv_length_vertical", 0, 16)
        reorder = reader.ue("max_num_reorder_frames", 0, 16)
        buffering = reader.ue("max_dec_frame_buffering", max_num_ref_frames, 16)
        if reorder > buffering:
            raise reader.error(f"max_num_reorder_frames {reorder} > max_dec_frame_buffering")
        if reorder:
            raise reader.error(
                f"max_num_reorder_frames = {reorder}: pictures are reordered (B-frames), but "
                "this decoder needs a zero-delay stream"
            )


def _hrd(reader: _Reader) -> None:
    count = 1 + reader.ue("cpb_cnt_minus1", 0, 31)
    reader.u(8, "bit_rate_scale, cpb_size_scale")
    for _ in range(count):
        reader.ue("bit_rate_value_minus1")
        reader.ue("cpb_size_value_minus1")
        reader.flag()  # cbr_flag
    reader.u(20, "hrd delay lengths")


def parse_pps(unit: NalUnit, sps_by_id: dict[int, SequenceParameterSet]) -> PictureParameterSet:
    reader = _Reader(unit.rbsp(), "PPS")
    pps_id = reader.ue("pic_parameter_set_id", 0, MAX_PPS_ID)
    sps_id = reader.ue("seq_parameter_set_id", 0, MAX_SPS_ID)
    sps = sps_by_id.get(sps_id)
    if sps is None:
        raise reader.error(f"refers to SPS {sps_id}, which the stream has not sent")
    entropy = reader.flag()
    bottom_field_poc = reader.flag()
    if reader.ue("num_slice_groups_minus1", 0, 7) != 0:
        raise reader.error("slice groups (FMO) are not supported")
    l0 = 1 + reader.ue("num_ref_idx_l0_default_active_minus1", 0, 31)
    l1 = 1 + reader.ue("num_ref_idx_l1_default_active_minus1", 0, 31)
    weighted_pred = reader.flag()
    weighted_bipred_idc = reader.u(2, "weighted_bipred_idc")
    if weighted_bipred_idc == 3:
        raise reader.error("weighted_bipred_idc = 3 out of range 0..2")
    qp_offset = 6 * (sps.bit_depth_luma - 8)
    pic_init_qp = 26 + reader.se("pic_init_qp_minus26", -26 - qp_offset, 25)
    reader.se("pic_init_qs_minus26", -26, 25)
    reader.se("chroma_qp_index_offset", -12, 12)
    deblocking = reader.flag()
    reader.flag()  # constrained_intra_pred_flag
    redundant = reader.flag()
    if reader.more_rbsp_data():
        transform_8x8 = reader.flag()
        if reader.flag():  # pic_scaling_matrix_present_flag
            lists = 6 + (2 if sps.chroma_format_idc != 3 else 6) * transform_8x8
            for index in range(lists):
                if reader.flag():
                    _scaling_list(reader, 16 if index < 6 else 64)
        reader.se("second_chroma_qp_index_offset", -12, 12)
    reader.trailing_bits()
    return PictureParameterSet(
        pps_id=pps_id,
        sps_id=sps_id,
        entropy_coding_mode=entropy,
        bottom_field_pic_order_in_frame_present=bottom_field_poc,
        num_ref_idx_default=(l0, l1),
        weighted_pred=weighted_pred,
        weighted_bipred_idc=weighted_bipred_idc,
        pic_init_qp=pic_init_qp,
        deblocking_filter_control_present=deblocking,
        redundant_pic_cnt_present=redundant,
        raw=unit.rbsp(),
    )


def parse_slice_header(
    unit: NalUnit,
    pps_by_id: dict[int, PictureParameterSet],
    sps_by_id: dict[int, SequenceParameterSet],
) -> SliceHeader:
    """The slice header up to the slice data, every field range-checked (7.3.3, 7.4.3)."""
    idr = unit.nal_type == NAL_TYPE_SLICE_IDR
    reader = _Reader(unit.rbsp(), "slice header")
    first_mb = reader.ue("first_mb_in_slice")
    slice_type = reader.ue("slice_type", 0, 9) % 5
    pps_id = reader.ue("pic_parameter_set_id", 0, MAX_PPS_ID)
    pps = pps_by_id.get(pps_id)
    if pps is None:
        raise reader.error(f"refers to PPS {pps_id}, which the stream has not sent")
    sps = sps_by_id[pps.sps_id]
    if first_mb >= sps.macroblocks:
        raise reader.error(f"first_mb_in_slice {first_mb} >= {sps.macroblocks} macroblocks")
    if slice_type in (SLICE_SP, SLICE_SI):
        raise reader.error("SP/SI slices (Extended profile) are not supported")
    if idr and slice_type != SLICE_I:
        raise reader.error(f"IDR slice of type {'PBI'[slice_type]}")
    if unit.ref_idc == 0 and idr:
        raise reader.error("IDR slice with nal_ref_idc 0")
    if sps.separate_colour_plane:
        reader.u(2, "colour_plane_id")
    frame_num = reader.u(sps.log2_max_frame_num, "frame_num")
    if idr and frame_num != 0:
        raise reader.error(f"IDR slice with frame_num {frame_num}")
    field_pic = False
    if not sps.frame_mbs_only:
        field_pic = reader.flag()
        if field_pic:
            reader.flag()  # bottom_field_flag
    idr_pic_id = reader.ue("idr_pic_id", 0, 65535) if idr else None
    if sps.pic_order_cnt_type == 0:
        reader.u(sps.log2_max_poc_lsb, "pic_order_cnt_lsb")
        if pps.bottom_field_pic_order_in_frame_present and not field_pic:
            reader.se("delta_pic_order_cnt_bottom", -(2**31) + 1, 2**31 - 1)
    elif sps.pic_order_cnt_type == 1 and not sps.delta_pic_order_always_zero:
        reader.se("delta_pic_order_cnt[0]", -(2**31) + 1, 2**31 - 1)
        if pps.bottom_field_pic_order_in_frame_present and not field_pic:
            reader.se("delta_pic_order_cnt[1]", -(2**31) + 1, 2**31 - 1)
    if pps.redundant_pic_cnt_present:
        reader.ue("redundant_pic_cnt", 0, 127)
    if slice_type == SLICE_B:
        reader.flag()  # direct_spatial_mv_pred_flag
    max_refs = 32 if field_pic else 16
    refs = list(pps.num_ref_idx_default)
    if slice_type in (SLICE_P, SLICE_B):
        if reader.flag():  # num_ref_idx_active_override_flag
            refs[0] = 1 + reader.ue("num_ref_idx_l0_active_minus1", 0, max_refs - 1)
            if slice_type == SLICE_B:
                refs[1] = 1 + reader.ue("num_ref_idx_l1_active_minus1", 0, max_refs - 1)
        if refs[0] > max_refs or (slice_type == SLICE_B and refs[1] > max_refs):
            raise reader.error(f"{refs} reference indices, more than {max_refs}")
    lists = {SLICE_P: 1, SLICE_B: 2}.get(slice_type, 0)
    for _ in range(lists):  # ref_pic_list_modification()
        if reader.flag():
            for _ in range(max_refs + 1):
                idc = reader.ue("modification_of_pic_nums_idc", 0, 5)
                if idc == 3:
                    break
                if idc in (0, 1):
                    reader.ue("abs_diff_pic_num_minus1", 0, (1 << sps.log2_max_frame_num) * 2 - 1)
                elif idc == 2:
                    reader.ue("long_term_pic_num", 0, 2 * 16)
                else:
                    raise reader.error(f"modification_of_pic_nums_idc {idc} (MVC) not supported")
            else:
                raise reader.error("ref_pic_list_modification does not end")
    if (pps.weighted_pred and slice_type == SLICE_P) or (
        pps.weighted_bipred_idc == 1 and slice_type == SLICE_B
    ):
        _pred_weight_table(reader, sps, refs if slice_type == SLICE_B else refs[:1])
    if unit.ref_idc != 0:
        _dec_ref_pic_marking(reader, idr, sps)
    if pps.entropy_coding_mode and slice_type != SLICE_I:
        reader.ue("cabac_init_idc", 0, 2)
    qp_offset = 6 * (sps.bit_depth_luma - 8)
    reader.se("slice_qp_delta", -qp_offset - pps.pic_init_qp, 51 - pps.pic_init_qp)
    if (
        pps.deblocking_filter_control_present
        and reader.ue("disable_deblocking_filter_idc", 0, 2) != 1
    ):
        reader.se("slice_alpha_c0_offset_div2", -6, 6)
        reader.se("slice_beta_offset_div2", -6, 6)
    if pps.entropy_coding_mode:
        while not reader.byte_aligned():
            if not reader.flag():
                raise reader.error("cabac_alignment_one_bit is 0")
        if not reader.more_rbsp_data():
            raise reader.error("no slice data")
    return SliceHeader(
        first_mb=first_mb,
        slice_type=slice_type,
        pps_id=pps_id,
        frame_num=frame_num,
        field_pic=field_pic,
        idr_pic_id=idr_pic_id,
        nal_type=unit.nal_type,
        reference=unit.ref_idc != 0,
    )


def _pred_weight_table(reader: _Reader, sps: SequenceParameterSet, refs: list[int]) -> None:
    reader.ue("luma_log2_weight_denom", 0, 7)
    chroma = sps.chroma_array_type != 0
    if chroma:
        reader.ue("chroma_log2_weight_denom", 0, 7)
    for count in refs:
        for _ in range(count):
            if reader.flag():  # luma_weight_flag
                reader.se("luma_weight", -128, 127)
                reader.se("luma_offset", -128, 127)
            if chroma and reader.flag():  # chroma_weight_flag
                for _ in range(2):
                    reader.se("chroma_weight", -128, 127)
                    reader.se("chroma_offset", -128, 127)


def _dec_ref_pic_marking(reader: _Reader, idr: bool, sps: SequenceParameterSet) -> None:
    if idr:
        reader.flag()  # no_output_of_prior_pics_flag
        reader.flag()  # long_term_reference_flag
        return
    if not reader.flag():  # adaptive_ref_pic_marking_mode_flag
        return
    for _ in range(2 * 16 + 2):
        operation = reader.ue("memory_management_control_operation", 0, 6)
        if operation == 0:
            return
        if operation in (1, 3):
            reader.ue("difference_of_pic_nums_minus1", 0, (1 << sps.log2_max_frame_num) * 2 - 1)
        if operation == 2:
            reader.ue("long_term_pic_num", 0, 2 * 16)
        if operation in (3, 6):
            reader.ue("long_term_frame_idx", 0, 16)
        if operation == 4:
            reader.ue("max_long_term_frame_idx_plus1", 0, 16)
    raise reader.error("too many memory_management_control_operations")


def checksum_nal_unit(crc32: int) -> bytes:
    """The SEI NAL unit (with a 4-byte start code) that carries an access unit's CRC32."""
    payload = bytes([5, _CHECKSUM_PAYLOAD_SIZE]) + CHECKSUM_UUID + crc32.to_bytes(4, "big")
    return b"\x00\x00\x00\x01\x06" + escape_rbsp(payload + b"\x80")


def escape_rbsp(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes (00 00 0x with x <= 3 becomes 00 00 03 0x)."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def is_checksum_unit(unit: NalUnit) -> bool:
    if unit.nal_type != NAL_TYPE_SEI:
        return False
    rbsp = unit.rbsp(2 + _CHECKSUM_PAYLOAD_SIZE)
    return rbsp[:2] == bytes([5, _CHECKSUM_PAYLOAD_SIZE]) and rbsp[2:18] == CHECKSUM_UUID


def crc32_of_units(units: list[NalUnit]) -> int:
    crc = 0
    for unit in units:
        crc = zlib.crc32(unit.data, crc)
    return crc


def add_checksum(units: list[NalUnit]) -> bytes:
    """The access unit with a checksum SEI inserted before its first slice."""
    checksum = checksum_nal_unit(crc32_of_units(units))
    first_slice = next((i for i, u in enumerate(units) if u.is_slice), len(units))
    parts = [u.data for u in units]
    parts.insert(first_slice, checksum)
    return b"".join(parts)


def verify_checksum(units: list[NalUnit]) -> bool | None:
    """None when the access unit carries no checksum SEI; else whether its CRC32 matches."""
    carriers = [unit for unit in units if is_checksum_unit(unit)]
    if not carriers:
        return None
    if len(carriers) > 1:
        return False
    rbsp = carriers[0].rbsp()
    if len(rbsp) != 2 + _CHECKSUM_PAYLOAD_SIZE + 1 or rbsp[-1] != 0x80:
        return False
    expected = int.from_bytes(rbsp[18:22], "big")
    return crc32_of_units([unit for unit in units if unit is not carriers[0]]) == expected


@dataclass(frozen=True)
class AccessUnitInfo:
    """What the checker learned about one access unit that passed."""

    keyframe: bool
    width: int
    height: int
    frame_num_gap: str  # "" or a description of the picture(s) missing before this one
    checksum: bool | None  # None: no checksum SEI; True: it matched


class AccessUnitChecker:
    """Stateful syntax check of one stream's access units (see the module docstring).

    expected_size: (width, height) the pictures must have after the SPS cropping (for odd
    sizes the encoder pads one row/column: width + width % 2 is accepted too); None: any size
    within max_macroblocks and MAX_SIDE_PIXELS.
    """

    def __init__(
        self,
        expected_size: tuple[int, int] | None = None,
        max_macroblocks: int = DEFAULT_MAX_MACROBLOCKS,
    ) -> None:
        self.expected_size = expected_size
        self.max_macroblocks = max_macroblocks
        self._sps: dict[int, SequenceParameterSet] = {}
        self._pps: dict[int, PictureParameterSet] = {}
        self._previous: tuple[int, bool] | None = None  # (frame_num, reference)

    def check(
        self, units: list[NalUnit], require_checksum: bool = False, use_checksum: bool = True
    ) -> AccessUnitInfo:
        """Validate one access unit (split into NAL units); SyntaxCheckError on any problem.

        A checksum SEI, when present and use_checksum, must match; require_checksum: an access
        unit without one raises MissingChecksumError. The parameter sets the unit carries are
        kept only when the whole unit passes."""
        sps_by_id, pps_by_id = dict(self._sps), dict(self._pps)
        slices: list[SliceHeader] = []
        checksum = verify_checksum(units) if use_checksum else None
        if checksum is False:
            raise SyntaxCheckError("in-band checksum does not match the access unit")
        if checksum is None and require_checksum:
            raise MissingChecksumError("no in-band checksum, but this stream carries them")
        for unit in units:
            if unit.data[unit.data.index(1) + 1] & 0x80:
                raise SyntaxCheckError(
                    f"forbidden_zero_bit set in a NAL unit of type {unit.nal_type}"
                )
            if unit.nal_type not in ALLOWED_NAL_TYPES:
                raise SyntaxCheckError(f"unexpected NAL unit type {unit.nal_type}")
            if unit.nal_type in (NAL_TYPE_SPS, NAL_TYPE_PPS) and unit.ref_idc == 0:
                raise SyntaxCheckError(f"parameter set (type {unit.nal_type}) with nal_ref_idc 0")
            if unit.nal_type in (NAL_TYPE_SEI, NAL_TYPE_AUD, NAL_TYPE_FILLER) and unit.ref_idc:
                raise SyntaxCheckError(f"NAL unit type {unit.nal_type} with nal_ref_idc != 0")
            if slices and not unit.is_slice and unit.nal_type in (NAL_TYPE_SPS, NAL_TYPE_PPS):
                raise SyntaxCheckError("parameter set after the first slice of the picture")
            if unit.nal_type == NAL_TYPE_SPS:
                sps = parse_sps(unit)
                self._check_size(sps)
                sps_by_id[sps.sps_id] = sps
                # a new SPS content invalidates the PPSs that refer to it
                if self._sps.get(sps.sps_id, sps).raw != sps.raw:
                    pps_by_id = {k: p for k, p in pps_by_id.items() if p.sps_id != sps.sps_id}
            elif unit.nal_type == NAL_TYPE_PPS:
                pps = parse_pps(unit, sps_by_id)
                pps_by_id[pps.pps_id] = pps
            elif unit.is_slice:
                slices.append(parse_slice_header(unit, pps_by_id, sps_by_id))
        if not slices:
            raise SyntaxCheckError("no picture (no slice NAL unit) in this access unit")
        first = slices[0]
        if first.first_mb != 0:
            raise SyntaxCheckError(f"first slice starts at macroblock {first.first_mb}, not 0")
        for before, after in zip(slices, slices[1:], strict=False):
            if after.first_mb <= before.first_mb:
                raise SyntaxCheckError("slices out of macroblock order (or a second picture)")
            same = (before.nal_type, before.pps_id, before.frame_num, before.reference)
            if same != (after.nal_type, after.pps_id, after.frame_num, after.reference) or (
                before.idr_pic_id != after.idr_pic_id
            ):
                raise SyntaxCheckError("slices of one access unit disagree (two pictures?)")
        sps = sps_by_id[pps_by_id[first.pps_id].sps_id]
        self._check_size(sps)
        keyframe = first.nal_type == NAL_TYPE_SLICE_IDR
        gap = "" if keyframe else self._frame_num_gap(first, sps)
        self._sps, self._pps = sps_by_id, pps_by_id
        self._previous = (first.frame_num, first.reference)
        return AccessUnitInfo(keyframe, sps.width, sps.height, gap, checksum)

    @property
    def parameter_set_counts(self) -> tuple[int, int]:
        """(SPS, PPS) held: at most (32, 256)."""
        return len(self._sps), len(self._pps)

    def _check_size(self, sps: SequenceParameterSet) -> None:
        if self.expected_size is not None:
            width, height = self.expected_size
            if sps.width not in (width, width + width % 2) or sps.height not in (
                height,
                height + height % 2,
            ):
                raise SyntaxCheckError(
                    f"stream pictures are {sps.width}x{sps.height}, but the sender declared "
                    f"{width}x{height}"
                )
        if sps.macroblocks > self.max_macroblocks:
            raise SyntaxCheckError(
                f"stream pictures are {sps.width}x{sps.height} ({sps.macroblocks} macroblocks), "
                f"more than the {self.max_macroblocks} this decoder accepts"
            )

    def _frame_num_gap(self, first: SliceHeader, sps: SequenceParameterSet) -> str:
        if self._previous is None or sps.gaps_in_frame_num_allowed:
            return ""
        previous_num, previous_reference = self._previous
        maximum = 1 << sps.log2_max_frame_num
        expected = (previous_num + 1) % maximum if previous_reference else previous_num
        if first.frame_num != expected:
            return (
                f"frame_num jumped from {previous_num} to {first.frame_num} (expected {expected})"
            )
        return ""
