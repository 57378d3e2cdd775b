"""ctypes binding to libx264 (API build 165), the library shipped inside the pinned PyAV wheel.

Why ctypes on libx264 and not FFmpeg's region-of-interest side data through PyAV: see the module
docstring of `stac_codec.h264_encoder`. This module only knows x264's C API: it mirrors the
structs of x264.h for X264_BUILD 165 (x264_param_t, x264_picture_t, x264_nal_t), loads the
library, and proves at load time that the mirror matches the binary:

* the library must export `x264_encoder_open_165` (x264 renames the symbol on every ABI change);
* `x264_param_default` and `x264_picture_init` memset exactly sizeof(struct) bytes, so filling a
  larger buffer with a sentinel and looking where the memset stopped measures the C struct size;
* a few documented defaults (fps 25/1, CRF 23, AQ mode 1 strength 1.0, keyint 250, I420, 8 bit)
  must appear at the mirrored offsets, which pins fields at the start, middle and end.

Any mismatch raises `X264LibraryError` instead of corrupting memory later.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

X264_BUILD = 165
LIBRARY_ENV_VAR = "STAC_LIBX264"  # optional explicit path to a libx264.so.165

X264_CSP_I420 = 0x0002
X264_TYPE_AUTO = 0x0000
X264_TYPE_IDR = 0x0001
X264_PARAM_BAD_NAME = -1
X264_PARAM_BAD_VALUE = -2

_SENTINEL = 0xA5
_SENTINEL_SLACK_BYTES = 256

c_int = ctypes.c_int
c_float = ctypes.c_float
c_ptr = ctypes.c_void_p


class X264LibraryError(RuntimeError):
    """libx264 is missing, has another API build, or does not match the ctypes mirror."""


class X264Nal(ctypes.Structure):
    """x264_nal_t: one NAL unit, Annex B encapsulated when b_annexb is set."""

    _fields_ = [
        ("i_ref_idc", c_int),
        ("i_type", c_int),
        ("b_long_startcode", c_int),
        ("i_first_mb", c_int),
        ("i_last_mb", c_int),
        ("i_payload", c_int),
        ("p_payload", ctypes.POINTER(ctypes.c_uint8)),
        ("i_padding", c_int),
    ]


class _Vui(ctypes.Structure):
    _fields_ = [
        ("i_sar_height", c_int),
        ("i_sar_width", c_int),
        ("i_overscan", c_int),
        ("i_vidformat", c_int),
        ("b_fullrange", c_int),
        ("i_colorprim", c_int),
        ("i_transfer", c_int),
        ("i_colmatrix", c_int),
        ("i_chroma_loc", c_int),
    ]


class _Analyse(ctypes.Structure):
    _fields_ = [
        ("intra", ctypes.c_uint),
        ("inter", ctypes.c_uint),
        ("b_transform_8x8", c_int),
        ("i_weighted_pred", c_int),
        ("b_weighted_bipred", c_int),
        ("i_direct_mv_pred", c_int),
        ("i_chroma_qp_offset", c_int),
        ("i_me_method", c_int),
        ("i_me_range", c_int),
        ("i_mv_range", c_int),
        ("i_mv_range_thread", c_int),
        ("i_subpel_refine", c_int),
        ("b_chroma_me", c_int),
        ("b_mixed_references", c_int),
        ("i_trellis", c_int),
        ("b_fast_pskip", c_int),
        ("b_dct_decimate", c_int),
        ("i_noise_reduction", c_int),
        ("f_psy_rd", c_float),
        ("f_psy_trellis", c_float),
        ("b_psy", c_int),
        ("b_mb_info", c_int),
        ("b_mb_info_update", c_int),
        ("i_luma_deadzone", c_int * 2),
        ("b_psnr", c_int),
        ("b_ssim", c_int),
    ]


class _RateControl(ctypes.Structure):
    _fields_ = [
        ("i_rc_method", c_int),
        ("i_qp_constant", c_int),
        ("i_qp_min", c_int),
        ("i_qp_max", c_int),
        ("i_qp_step", c_int),
        ("i_bitrate", c_int),
        ("f_rf_constant", c_float),
        ("f_rf_constant_max", c_float),
        ("f_rate_tolerance", c_float),
        ("i_vbv_max_bitrate", c_int),
        ("i_vbv_buffer_size", c_int),
        ("f_vbv_buffer_init", c_float),
        ("f_ip_factor", c_float),
        ("f_pb_factor", c_float),
        ("b_filler", c_int),
        ("i_aq_mode", c_int),
        ("f_aq_strength", c_float),
        ("b_mb_tree", c_int),
        ("i_lookahead", c_int),
        ("b_stat_write", c_int),
        ("psz_stat_out", c_ptr),
        ("b_stat_read", c_int),
        ("psz_stat_in", c_ptr),
        ("f_qcompress", c_float),
        ("f_qblur", c_float),
        ("f_complexity_blur", c_float),
        ("zones", c_ptr),
        ("i_zones", c_int),
        ("psz_zones", c_ptr),
    ]


class _CropRect(ctypes.Structure):
    _fields_ = [("i_left", c_int), ("i_top", c_int), ("i_right", c_int), ("i_bottom", c_int)]


class _MasteringDisplay(ctypes.Structure):
    _fields_ = [
        ("b_mastering_display", c_int),
        ("i_green_x", c_int),
        ("i_green_y", c_int),
        ("i_blue_x", c_int),
        ("i_blue_y", c_int),
        ("i_red_x", c_int),
        ("i_red_y", c_int),
        ("i_white_x", c_int),
        ("i_white_y", c_int),
        ("i_display_max", ctypes.c_int64),
        ("i_display_min", ctypes.c_int64),
    ]


class _ContentLightLevel(ctypes.Structure):
    _fields_ = [("b_cll", c_int), ("i_max_cll", c_int), ("i_max_fall", c_int)]


class X264Param(ctypes.Structure):
    """x264_param_t of X264_BUILD 165, field for field."""

    _fields_ = [
        ("cpu", ctypes.c_uint32),
        ("i_threads", c_int),
        ("i_lookahead_threads", c_int),
        ("b_sliced_threads", c_int),
        ("b_deterministic", c_int),
        ("b_cpu_independent", c_int),
        ("i_sync_lookahead", c_int),
        ("i_width", c_int),
        ("i_height", c_int),
        ("i_csp", c_int),
        ("i_bitdepth", c_int),
        ("i_level_idc", c_int),
        ("i_frame_total", c_int),
        ("i_nal_hrd", c_int),
        ("vui", _Vui),
        ("i_frame_reference", c_int),
        ("i_dpb_size", c_int),
        ("i_keyint_max", c_int),
        ("i_keyint_min", c_int),
        ("i_scenecut_threshold", c_int),
        ("b_intra_refresh", c_int),
        ("i_bframe", c_int),
        ("i_bframe_adaptive", c_int),
        ("i_bframe_bias", c_int),
        ("i_bframe_pyramid", c_int),
        ("b_open_gop", c_int),
        ("b_bluray_compat", c_int),
        ("i_avcintra_class", c_int),
        ("i_avcintra_flavor", c_int),
        ("b_deblocking_filter", c_int),
        ("i_deblocking_filter_alphac0", c_int),
        ("i_deblocking_filter_beta", c_int),
        ("b_cabac", c_int),
        ("i_cabac_init_idc", c_int),
        ("b_interlaced", c_int),
        ("b_constrained_intra", c_int),
        ("i_cqm_preset", c_int),
        ("psz_cqm_file", c_ptr),
        ("cqm_4iy", ctypes.c_uint8 * 16),
        ("cqm_4py", ctypes.c_uint8 * 16),
        ("cqm_4ic", ctypes.c_uint8 * 16),
        ("cqm_4pc", ctypes.c_uint8 * 16),
        ("cqm_8iy", ctypes.c_uint8 * 64),
        ("cqm_8py", ctypes.c_uint8 * 64),
        ("cqm_8ic", ctypes.c_uint8 * 64),
        ("cqm_8pc", ctypes.c_uint8 * 64),
        ("pf_log", c_ptr),
        ("p_log_private", c_ptr),
        ("i_log_level", c_int),
        ("b_full_recon", c_int),
        ("psz_dump_yuv", c_ptr),
        ("analyse", _Analyse),
        ("rc", _RateControl),
        ("crop_rect", _CropRect),
        ("i_frame_packing", c_int),
        ("mastering_display", _MasteringDisplay),
        ("content_light_level", _ContentLightLevel),
        ("i_alternative_transfer", c_int),
        ("b_aud", c_int),
        ("b_repeat_headers", c_int),
        ("b_annexb", c_int),
        ("i_sps_id", c_int),
        ("b_vfr_input", c_int),
        ("b_pulldown", c_int),
        ("i_fps_num", ctypes.c_uint32),
        ("i_fps_den", ctypes.c_uint32),
        ("i_timebase_num", ctypes.c_uint32),
        ("i_timebase_den", ctypes.c_uint32),
        ("b_tff", c_int),
        ("b_pic_struct", c_int),
        ("b_fake_interlaced", c_int),
        ("b_stitchable", c_int),
        ("b_opencl", c_int),
        ("i_opencl_device", c_int),
        ("opencl_device_id", c_ptr),
        ("psz_clbin_file", c_ptr),
        ("i_slice_max_size", c_int),
        ("i_slice_max_mbs", c_int),
        ("i_slice_min_mbs", c_int),
        ("i_slice_count", c_int),
        ("i_slice_count_max", c_int),
        ("param_free", c_ptr),
        ("nalu_process", c_ptr),
        ("opaque", c_ptr),
    ]


class _Image(ctypes.Structure):
    _fields_ = [
        ("i_csp", c_int),
        ("i_plane", c_int),
        ("i_stride", c_int * 4),
        ("plane", ctypes.POINTER(ctypes.c_uint8) * 4),
    ]


class _ImageProperties(ctypes.Structure):
    _fields_ = [
        ("quant_offsets", ctypes.POINTER(c_float)),
        ("quant_offsets_free", c_ptr),
        ("mb_info", c_ptr),
        ("mb_info_free", c_ptr),
        ("f_ssim", ctypes.c_double),
        ("f_psnr_avg", ctypes.c_double),
        ("f_psnr", ctypes.c_double * 3),
        ("f_crf_avg", ctypes.c_double),
    ]


class _Hrd(ctypes.Structure):
    _fields_ = [
        ("cpb_initial_arrival_time", ctypes.c_double),
        ("cpb_final_arrival_time", ctypes.c_double),
        ("cpb_removal_time", ctypes.c_double),
        ("dpb_output_time", ctypes.c_double),
    ]


class _Sei(ctypes.Structure):
    _fields_ = [("num_payloads", c_int), ("payloads", c_ptr), ("sei_free", c_ptr)]


class X264Picture(ctypes.Structure):
    """x264_picture_t of X264_BUILD 165: input image, per-MB quant offsets, output type."""

    _fields_ = [
        ("i_type", c_int),
        ("i_qpplus1", c_int),
        ("i_pic_struct", c_int),
        ("b_keyframe", c_int),
        ("i_pts", ctypes.c_int64),
        ("i_dts", ctypes.c_int64),
        ("param", ctypes.POINTER(X264Param)),
        ("img", _Image),
        ("prop", _ImageProperties),
        ("hrd_timing", _Hrd),
        ("extra_sei", _Sei),
        ("opaque", c_ptr),
    ]


@dataclass(frozen=True)
class X264Library:
    """The loaded libx264 with typed entry points; one per process (see `load_x264`)."""

    path: Path
    cdll: ctypes.CDLL

    def param_default_preset(self, param: X264Param, preset: str, tune: str | None) -> None:
        tune_arg = tune.encode() if tune else None
        if self.cdll.x264_param_default_preset(ctypes.byref(param), preset.encode(), tune_arg):
            raise ValueError(f"x264 rejected preset {preset!r} / tune {tune!r}")

    def param_parse(self, param: X264Param, name: str, value: str) -> None:
        """Set one option by its x264 command-line name (version-stable, unlike offsets)."""
        status = self.cdll.x264_param_parse(ctypes.byref(param), name.encode(), value.encode())
        if status == X264_PARAM_BAD_NAME:
            raise ValueError(f"x264 has no option {name!r}")
        if status != 0:
            raise ValueError(f"x264 rejected {name}={value!r}")

    def param_apply_profile(self, param: X264Param, profile: str) -> None:
        if self.cdll.x264_param_apply_profile(ctypes.byref(param), profile.encode()):
            raise ValueError(f"x264 cannot apply profile {profile!r} to these settings")


def _candidate_paths() -> list[Path]:
    """An explicit override first, then the copy inside PyAV's wheel, then the system one."""
    candidates = []
    if override := os.environ.get(LIBRARY_ENV_VAR):
        candidates.append(Path(override))
    try:
        import av  # only to locate the libraries bundled in its wheel

        libs_dir = Path(av.__file__).resolve().parent.parent / "av.libs"
        candidates.extend(sorted(libs_dir.glob(f"libx264*.so.{X264_BUILD}")))
    except ImportError:
        pass
    candidates.append(Path(f"libx264.so.{X264_BUILD}"))
    return candidates


def _declare_signatures(cdll: ctypes.CDLL) -> None:
    param_p = ctypes.POINTER(X264Param)
    picture_p = ctypes.POINTER(X264Picture)
    nal_pp = ctypes.POINTER(ctypes.POINTER(X264Nal))
    signatures = {
        "x264_param_default": (None, [param_p]),
        "x264_param_default_preset": (c_int, [param_p, ctypes.c_char_p, ctypes.c_char_p]),
        "x264_param_parse": (c_int, [param_p, ctypes.c_char_p, ctypes.c_char_p]),
        "x264_param_apply_profile": (c_int, [param_p, ctypes.c_char_p]),
        "x264_param_cleanup": (None, [param_p]),
        "x264_picture_init": (None, [picture_p]),
        f"x264_encoder_open_{X264_BUILD}": (c_ptr, [param_p]),
        "x264_encoder_parameters": (None, [c_ptr, param_p]),
        "x264_encoder_reconfig": (c_int, [c_ptr, param_p]),
        "x264_encoder_encode": (
            c_int,
            [c_ptr, nal_pp, ctypes.POINTER(c_int), picture_p, picture_p],
        ),
        "x264_encoder_maximum_delayed_frames": (c_int, [c_ptr]),
        "x264_encoder_close": (None, [c_ptr]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(cdll, name)
        function.restype = restype
        function.argtypes = argtypes


def _measured_struct_size(init_function, struct_type) -> int:
    """Size that the C library memsets, measured with a sentinel-filled oversize buffer."""
    capacity = ctypes.sizeof(struct_type) + _SENTINEL_SLACK_BYTES
    buffer = (ctypes.c_uint8 * capacity)(*([_SENTINEL] * capacity))
    init_function(ctypes.cast(buffer, ctypes.POINTER(struct_type)))
    raw = bytes(buffer)
    size = len(raw.rstrip(bytes([_SENTINEL])))
    # The last field (`opaque`) is a zeroed pointer, so rstrip stops exactly at the struct end.
    return size


def _verify_layout(cdll: ctypes.CDLL, path: Path) -> None:
    for init_name, struct_type in (
        ("x264_param_default", X264Param),
        ("x264_picture_init", X264Picture),
    ):
        measured = _measured_struct_size(getattr(cdll, init_name), struct_type)
        if measured != ctypes.sizeof(struct_type):
            raise X264LibraryError(
                f"{path}: {init_name} writes {measured} bytes but the ctypes mirror of "
                f"{struct_type.__name__} has {ctypes.sizeof(struct_type)}; x264.h changed"
            )
    param = X264Param()
    cdll.x264_param_default(ctypes.byref(param))
    observed = {
        "i_csp": param.i_csp,
        "i_bitdepth": param.i_bitdepth,
        "i_keyint_max": param.i_keyint_max,
        "rc.f_rf_constant": param.rc.f_rf_constant,
        "rc.i_aq_mode": param.rc.i_aq_mode,
        "rc.f_aq_strength": param.rc.f_aq_strength,
        "b_annexb": param.b_annexb,
        "i_fps_num": param.i_fps_num,
        "i_fps_den": param.i_fps_den,
    }
    expected = {
        "i_csp": X264_CSP_I420,
        "i_bitdepth": 8,
        "i_keyint_max": 250,
        "rc.f_rf_constant": 23.0,
        "rc.i_aq_mode": 1,
        "rc.f_aq_strength": 1.0,
        "b_annexb": 1,
        "i_fps_num": 25,
        "i_fps_den": 1,
    }
    wrong = {k: v for k, v in observed.items() if v != expected[k]}
    if wrong:
        raise X264LibraryError(
            f"{path}: x264_param_default gave unexpected values {wrong} (expected "
            f"{ {k: expected[k] for k in wrong} }); the ctypes mirror does not match this build"
        )


def open_x264(path: Path | str) -> X264Library:
    """Load one libx264 file and verify it against the mirror; raises X264LibraryError."""
    path = Path(path)
    try:
        cdll = ctypes.CDLL(str(path))
    except OSError as error:
        raise X264LibraryError(f"cannot load {path}: {error}") from error
    if not hasattr(cdll, f"x264_encoder_open_{X264_BUILD}"):
        raise X264LibraryError(
            f"{path} is not libx264 API build {X264_BUILD} (no x264_encoder_open_{X264_BUILD})"
        )
    _declare_signatures(cdll)
    _verify_layout(cdll, path)
    return X264Library(path=path, cdll=cdll)


@cache
def load_x264() -> X264Library:
    """The first loadable libx264 build 165 (see `_candidate_paths`), verified, once per process."""
    failures = []
    for path in _candidate_paths():
        try:
            return open_x264(path)
        except X264LibraryError as error:
            failures.append(str(error))
    raise X264LibraryError(
        f"no usable libx264 build {X264_BUILD} ({'; '.join(failures)}); install av==18.1.0, "
        f"whose wheel bundles it, or set {LIBRARY_ENV_VAR} to a libx264.so.{X264_BUILD}"
    )
