"""Spatially adaptive H.264: encode frames with a per-macroblock QP offset map, zero delay.

Route: libx264's own API through ctypes (`stac_codec.x264_ctypes`), with the map handed to
x264 as `x264_picture_t.prop.quant_offsets` (one float per 16x16 macroblock, raster order).
The alternative, FFmpeg's region-of-interest side data through PyAV, was rejected because:

* PyAV 18 exposes frame side data read-only; writing AVRegionOfInterest entries needs ctypes
  pokes into PyAV's private Cython object layout, which no version pin documents and any PyAV
  release may change silently. The libx264 route depends only on x264's public C ABI, which x264
  versions by renaming `x264_encoder_open_<BUILD>`; we check that symbol and measure the struct
  sizes at load time, so a mismatch fails loudly instead of writing into the wrong field.
* FFmpeg turns ROI rectangles into quant offsets (qoffset * 51, overlapping rectangles, its own
  rounding); with quant_offsets we say exactly which QP offset each macroblock gets.
* The libx264 route skips PyAV frame/packet objects and FFmpeg's wrapper: one copy of the frame
  into an I420 buffer, one C call, the Annex B bytes out. Threads are x264's sliced threads.
  Pinned: av==18.1.0 (its wheel ships libx264 API build 165, found in site-packages/av.libs;
  STAC_LIBX264 can point at another libx264.so.165).

Traps handled here (each measured on this encoder build):

* x264 only reads quant_offsets inside adaptive quantization: AQ mode must be >= 1 and the
  strength > 0 (x264 silently switches AQ off at strength 0, and constant-QP mode disables AQ).
  So rate control is CRF or ABR only, `aq_strength` 0 is rejected, and after opening we read the
  effective parameters back from x264 and refuse to run if AQ ended up off. The default strength
  0.001 makes x264's own variance AQ negligible, so the map alone redistributes bits ("map only");
  1.0 adds x264's variance AQ on top of the map.
* The offsets are absolute QP deltas on top of the frame QP chosen by rate control (a uniform +6
  halves the bytes); x264 clamps every macroblock QP to [0, 51], so large offsets saturate.
* Zero delay: tune zerolatency (no B-frames, no lookahead, no mb-tree, sliced threads); the
  encoder checks x264_encoder_maximum_delayed_frames == 0, so frame n's access unit is returned
  by the call that takes frame n.
* One encoder with every frame forced to IDR drifts in CRF; intra-only rate-distortion
  experiments should use a fresh encoder per frame and count `EncodedPacket.slice_bytes`.
* threads=1 gives deterministic bitstreams; sliced threads may vary between runs.
* A frame far from its reference (keyframe mode's keyframes, several camera frames apart) can
  get a slower preset's analysis (`far_preset`): the encoder opens with that preset, so its
  reference count and weighted prediction are there, and switches the analysis (motion
  search, subpel refinement, partitions, trellis, psy, references used) per frame with
  x264_encoder_reconfig, which takes effect on the next frame without a keyframe.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from stac_codec.annexb import NAL_TYPE_SEI, NAL_TYPE_SLICE_IDR, SLICE_NAL_TYPES, split_nal_units
from stac_codec.h264_syntax import add_checksum
from stac_codec.qp_map import macroblock_grid, validate_qp_map
from stac_codec.variance_aq import variance_aq_offsets
from stac_codec.x264_ctypes import (
    X264_CSP_I420,
    X264_TYPE_AUTO,
    X264_TYPE_IDR,
    X264Nal,
    X264Param,
    X264Picture,
    load_x264,
)

RATE_CONTROLS = ("crf", "bitrate")
# x264 reads quant_offsets only with AQ on; at this strength its own AQ is negligible and the
# offsets alone redistribute bits ("map only")
OFFSETS_ONLY_AQ_STRENGTH = 0.001
# How the stream refreshes every gop_frames: an IDR picture; x264's periodic intra refresh (a
# column of intra macroblocks sweeping the picture over gop_frames frames, no IDR after the
# first); or not at all (only the first picture and requested keyframes are IDR).
REFRESH_MODES = ("idr", "intra_refresh", "none")
# x264_param_t.analyse fields x264_encoder_reconfig applies (encoder.c encoder_try_reconfig):
# what a preset's analysis is, besides the reference count
ANALYSIS_FIELDS = (
    "intra",
    "inter",
    "b_transform_8x8",
    "i_me_method",
    "i_me_range",
    "i_subpel_refine",
    "b_chroma_me",
    "b_mixed_references",
    "i_trellis",
    "b_fast_pskip",
    "b_dct_decimate",
    "f_psy_rd",
    "f_psy_trellis",
)
PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
PROFILES = ("baseline", "main", "high")  # 8-bit 4:2:0 profiles x264 can apply
PIXEL_FORMATS = {"rgb24": cv2.COLOR_RGB2YUV_I420, "bgr24": cv2.COLOR_BGR2YUV_I420}
_X264_VERSION_SEI_MARK = b"x264 - core"


class EncoderError(RuntimeError):
    """libx264 failed to open or to encode a frame."""


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder settings the ROS node maps its parameters onto.

    rate_control: "crf" (constant quality, `crf` 0-51, lower = better) or "bitrate" (ABR with a
    VBV of `vbv_buffer_s` seconds at `bitrate_kbps`). The QP map redistributes bits around
    this base. gop_frames: the refresh period in frames; refresh: what happens every
    gop_frames (REFRESH_MODES: "idr", "intra_refresh", "none"); a forced keyframe is an IDR
    picture in every mode (the edge asks for one after a loss). mbtree: x264's MB-tree
    without lookahead (each frame's macroblocks get a lower QP where the previous frame was
    predicted from the picture before it, extrapolated one frame ahead; the QP map's offsets
    weight that propagation); x264 allows it only without periodic IDR pictures, so it needs
    refresh "intra_refresh" or "none". scenecut: let x264 insert extra keyframes on scene
    changes. aq_strength:
    x264 variance-AQ strength, > 0 (0.001 = map only, 1.0 = x264's default AQ plus the map).
    far_preset: "" or a slower x264 preset whose analysis `encode(far=True)` spends on a frame
    (the encoder opens with it and encodes every other frame with `preset`'s analysis).
    emit_version_sei: keep x264's version SEI (~600 bytes in the first access unit).
    checksum_sei: put the CRC32 of each access unit in an SEI user_data_unregistered message
    before its first slice (28 bytes per frame), so the edge's decoder can tell a damaged
    access unit from a good one where FFmpeg cannot (`stac_codec.h264_syntax`).
    """

    rate_control: str = "crf"
    crf: float = 23.0
    bitrate_kbps: int = 2000
    vbv_buffer_s: float = 1.0
    fps: float = 25.0
    preset: str = "veryfast"
    gop_frames: int = 25
    refresh: str = "idr"
    mbtree: bool = False
    scenecut: bool = False
    threads: int = 1
    aq_strength: float = OFFSETS_ONLY_AQ_STRENGTH
    far_preset: str = ""
    profile: str = "high"
    emit_version_sei: bool = True
    checksum_sei: bool = True
    log_level: int = 0  # x264 log level: -1 none, 0 errors, 1 warnings, 2 info

    def __post_init__(self) -> None:
        checks = [
            (self.rate_control in RATE_CONTROLS, f"rate_control must be one of {RATE_CONTROLS}"),
            (0.0 <= self.crf <= 51.0, "crf must be in [0, 51]"),
            (self.bitrate_kbps > 0, "bitrate_kbps must be > 0"),
            (self.vbv_buffer_s > 0.0, "vbv_buffer_s must be > 0"),
            (self.fps > 0.0, "fps must be > 0"),
            (self.preset in PRESETS, f"preset must be one of {PRESETS}"),
            (
                self.far_preset in ("", *PRESETS),
                f"far_preset must be '' or one of {PRESETS}",
            ),
            (self.gop_frames >= 1, "gop_frames must be >= 1"),
            (self.refresh in REFRESH_MODES, f"refresh must be one of {REFRESH_MODES}"),
            (
                not self.mbtree or self.refresh != "idr",
                "mbtree needs refresh 'intra_refresh' or 'none' (x264 drops lookahead-less "
                "MB-tree under periodic IDR pictures)",
            ),
            (self.profile in PROFILES, f"profile must be one of {PROFILES}"),
            (self.threads >= 1, "threads must be >= 1"),
            (
                0.0 < self.aq_strength <= 3.0,
                "aq_strength must be in (0, 3]; at 0 x264 turns AQ off and ignores the QP map",
            ),
            (-1 <= self.log_level <= 3, "log_level must be in [-1, 3]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EncoderConfig: {message}")

    def x264_options(self) -> dict[str, str]:
        """The x264 command-line options this config stands for (applied after the preset)."""
        options = {
            "threads": str(self.threads),
            "sliced-threads": "1",
            "bframes": "0",
            "rc-lookahead": "0",
            "sync-lookahead": "0",
            "mbtree": "1" if self.mbtree else "0",
            "keyint": "infinite" if self.refresh == "none" else str(self.gop_frames),
            "min-keyint": str(self.gop_frames if not self.scenecut else 1),
            "intra-refresh": "1" if self.refresh == "intra_refresh" else "0",
            "scenecut": "40" if self.scenecut else "0",
            "aq-mode": "1",
            "aq-strength": repr(self.aq_strength),
            "fps": repr(self.fps),
            "force-cfr": "1",
            "annexb": "1",
            "repeat-headers": "1",
            "colorprim": "smpte170m",
            "transfer": "smpte170m",
            "colormatrix": "smpte170m",
            "fullrange": "off",
            "log": str(self.log_level),
        }
        if self.rate_control == "crf":
            options["crf"] = repr(self.crf)
        else:
            options["bitrate"] = str(self.bitrate_kbps)
            options["vbv-maxrate"] = str(self.bitrate_kbps)
            options["vbv-bufsize"] = str(max(1, round(self.bitrate_kbps * self.vbv_buffer_s)))
        return options


@dataclass(frozen=True)
class EncodedPacket:
    """One H.264 access unit (Annex B) for one input frame.

    size_bytes counts everything in `data`; slice_bytes only the slice NAL units (no SPS, PPS,
    SEI), the number intra-only rate-distortion experiments should use. far: encoded with the
    encoder's far_preset analysis.
    """

    data: bytes
    frame_index: int
    keyframe: bool
    slice_bytes: int
    nal_types: tuple[int, ...] = field(default=())
    far: bool = False

    @property
    def size_bytes(self) -> int:
        return len(self.data)


class QPMapEncoder:
    """H.264 encoder for one fixed frame size whose quantizers follow a per-macroblock QP map.

    encode() takes an HxWx3 uint8 frame (rgb24 or bgr24) and returns its access unit at once;
    set_base_quality() moves the CRF or bitrate mid-stream.
    Frames of odd size are padded by one replicated row/column for 4:2:0 chroma; x264 pads to
    whole macroblocks and writes the cropping into the SPS, so decoders output the even size
    (the decoder here crops to the exact size it is given). Not thread-safe: one caller.
    """

    def __init__(
        self, config: EncoderConfig, width: int, height: int, pixel_format: str = "rgb24"
    ) -> None:
        if width < 2 or height < 2:
            raise ValueError(f"frame size must be at least 2x2, got {width}x{height}")
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {sorted(PIXEL_FORMATS)}")
        self.config = config
        self.width = width
        self.height = height
        self.pixel_format = pixel_format
        self.grid = macroblock_grid(width, height)
        self._coded_width = width + width % 2
        self._coded_height = height + height % 2
        self._lib = load_x264()
        self._handle = self._open()
        self._far = False  # whether x264 now runs far_preset's analysis
        if self.config.far_preset:
            self._set_analysis(far=False)
        self._frame_index = 0
        self._i420 = np.empty(0, np.uint8)  # planar Y, U, V of the frame being encoded

    def _build_param(self, preset: str | None = None) -> X264Param:
        param = X264Param()
        preset = preset or self.config.far_preset or self.config.preset
        self._lib.param_default_preset(param, preset, "zerolatency")
        param.i_width = self._coded_width
        param.i_height = self._coded_height
        param.i_csp = X264_CSP_I420
        for name, value in self.config.x264_options().items():
            self._lib.param_parse(param, name, value)
        self._lib.param_apply_profile(param, self.config.profile)
        return param

    def _open(self) -> int:
        param = self._build_param()
        cdll = self._lib.cdll
        handle = cdll.x264_encoder_open_165(ctypes.byref(param))
        cdll.x264_param_cleanup(ctypes.byref(param))
        if not handle:
            raise EncoderError(
                f"x264_encoder_open failed for {self._coded_width}x{self._coded_height} "
                f"with {self.config} (set log_level=1 to see x264's reason)"
            )
        try:
            self._check_effective_params(handle)
        except EncoderError:
            cdll.x264_encoder_close(handle)
            raise
        return handle

    def _check_effective_params(self, handle: int) -> None:
        """Refuse settings under which x264 would ignore the map or delay frames."""
        effective = X264Param()
        self._lib.cdll.x264_encoder_parameters(handle, ctypes.byref(effective))
        if effective.rc.i_aq_mode == 0 or effective.rc.f_aq_strength <= 0.0:
            raise EncoderError(
                "x264 switched adaptive quantization off: the QP map would be ignored"
            )
        if bool(effective.rc.b_mb_tree) != self.config.mbtree:
            raise EncoderError(f"x264 left MB-tree {'off' if self.config.mbtree else 'on'}")
        if bool(effective.b_intra_refresh) != (self.config.refresh == "intra_refresh"):
            raise EncoderError("x264 did not take the intra-refresh setting")
        delayed = self._lib.cdll.x264_encoder_maximum_delayed_frames(handle)
        if delayed != 0:
            raise EncoderError(f"x264 would delay output by up to {delayed} frames; expected 0")

    def encode(
        self,
        frame: np.ndarray,
        qp_map: np.ndarray | None = None,
        force_keyframe: bool = False,
        variance_aq_strength: float = 0.0,
        far: bool = False,
    ) -> EncodedPacket:
        """Encode one frame; qp_map is int8 (rows, cols) of QP offsets, None = all zero.
        variance_aq_strength > 0 adds x264's variance AQ at that strength for this frame
        (`stac_codec.variance_aq`), on top of the encoder's own (open it at 0.001). far: with
        `far_preset`'s analysis (ValueError without a far_preset)."""
        if self._handle is None:
            raise EncoderError("encoder is closed")
        if not 0.0 <= variance_aq_strength <= 3.0:
            raise ValueError(f"variance_aq_strength must be in [0, 3], got {variance_aq_strength}")
        if far and not self.config.far_preset:
            raise ValueError("encode(far=True) needs an encoder with a far_preset")
        if far != self._far:
            self._set_analysis(far)
        self._convert_to_i420(frame)
        offsets = None
        if qp_map is not None:
            offsets = np.ascontiguousarray(validate_qp_map(qp_map, self.grid), dtype=np.float32)
        if variance_aq_strength > 0.0:
            aq = variance_aq_offsets(
                self._i420, self._coded_width, self._coded_height, variance_aq_strength
            )
            offsets = aq if offsets is None else np.ascontiguousarray(offsets + aq)
        picture = self._picture(offsets, force_keyframe)
        return self._encode_picture(picture)

    def _convert_to_i420(self, frame: np.ndarray) -> None:
        expected = (self.height, self.width, 3)
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != expected:
            got = (
                f"{frame.dtype} {frame.shape}"
                if isinstance(frame, np.ndarray)
                else type(frame).__name__
            )
            raise ValueError(f"frame must be a uint8 array of shape {expected}, got {got}")
        pad_bottom = self._coded_height - self.height
        pad_right = self._coded_width - self.width
        if pad_bottom or pad_right:
            frame = cv2.copyMakeBorder(frame, 0, pad_bottom, 0, pad_right, cv2.BORDER_REPLICATE)
        self._i420 = np.ascontiguousarray(cv2.cvtColor(frame, PIXEL_FORMATS[self.pixel_format]))

    def _picture(self, offsets: np.ndarray | None, force_keyframe: bool) -> X264Picture:
        picture = X264Picture()
        self._lib.cdll.x264_picture_init(ctypes.byref(picture))
        width, height = self._coded_width, self._coded_height
        base = self._i420.ctypes.data
        plane_offsets = (0, width * height, width * height + (width // 2) * (height // 2))
        picture.img.i_csp = X264_CSP_I420
        picture.img.i_plane = 3
        for plane, (offset, stride) in enumerate(
            zip(plane_offsets, (width, width // 2, width // 2), strict=True)
        ):
            picture.img.i_stride[plane] = stride
            picture.img.plane[plane] = ctypes.cast(base + offset, ctypes.POINTER(ctypes.c_uint8))
        picture.i_type = X264_TYPE_IDR if force_keyframe else X264_TYPE_AUTO
        picture.i_pts = self._frame_index
        if offsets is not None:
            picture.prop.quant_offsets = offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        # x264 copies the image and applies the offsets inside x264_encoder_encode, so the
        # buffers (held by encode()) only need to live for the duration of that call.
        return picture

    def _encode_picture(self, picture: X264Picture) -> EncodedPacket:
        nals = ctypes.POINTER(X264Nal)()
        nal_count = ctypes.c_int(0)
        picture_out = X264Picture()
        size = self._lib.cdll.x264_encoder_encode(
            self._handle,
            ctypes.byref(nals),
            ctypes.byref(nal_count),
            ctypes.byref(picture),
            ctypes.byref(picture_out),
        )
        if size < 0:
            raise EncoderError(f"x264_encoder_encode failed on frame {self._frame_index}")
        if size == 0:
            raise EncoderError(f"x264 returned no access unit for frame {self._frame_index}")
        chunks, nal_types, slice_total = [], [], 0
        for index in range(nal_count.value):
            nal = nals[index]
            payload = ctypes.string_at(nal.p_payload, nal.i_payload)
            if not self.config.emit_version_sei and _is_x264_version_sei(nal.i_type, payload):
                continue
            chunks.append(payload)
            nal_types.append(nal.i_type)
            if nal.i_type in SLICE_NAL_TYPES:
                slice_total += nal.i_payload
        data = b"".join(chunks)
        if self.config.checksum_sei:
            data = add_checksum(split_nal_units(data))
            first_slice = next(
                (i for i, t in enumerate(nal_types) if t in SLICE_NAL_TYPES), len(nal_types)
            )
            nal_types.insert(first_slice, NAL_TYPE_SEI)
        packet = EncodedPacket(
            data=data,
            frame_index=self._frame_index,
            keyframe=NAL_TYPE_SLICE_IDR in nal_types,
            slice_bytes=slice_total,
            nal_types=tuple(nal_types),
            far=self._far,
        )
        self._frame_index += 1
        return packet

    def set_base_quality(self, base_quality: float) -> None:
        """Move the budget knob from the next frame on, without a keyframe.

        base_quality means what EncodedFrame.base_quality means: the CRF in "crf" mode, the
        target in kbit/s in "bitrate" mode (the VBV follows). Raises ValueError when out of range.
        """
        if self._handle is None:
            raise EncoderError("encoder is closed")
        if self.config.rate_control == "crf":
            config = replace(self.config, crf=float(base_quality))
        else:
            config = replace(self.config, bitrate_kbps=round(base_quality))
        param = X264Param()
        self._lib.cdll.x264_encoder_parameters(self._handle, ctypes.byref(param))
        param.rc.f_rf_constant = config.crf
        if config.rate_control == "bitrate":
            options = config.x264_options()
            param.rc.i_bitrate = config.bitrate_kbps
            param.rc.i_vbv_max_bitrate = int(options["vbv-maxrate"])
            param.rc.i_vbv_buffer_size = int(options["vbv-bufsize"])
        if self._lib.cdll.x264_encoder_reconfig(self._handle, ctypes.byref(param)) < 0:
            raise EncoderError(f"x264 refused base quality {base_quality}")
        self.config = config

    def _set_analysis(self, far: bool) -> None:
        """Switch x264 to far_preset's analysis (far) or preset's, from the next frame on."""
        preset = self.config.far_preset if far else self.config.preset
        target = self._build_param(preset)
        param = X264Param()
        self._lib.cdll.x264_encoder_parameters(self._handle, ctypes.byref(param))
        param.i_frame_reference = target.i_frame_reference  # at most the opened count
        for name in ANALYSIS_FIELDS:
            setattr(param.analyse, name, getattr(target.analyse, name))
        if self._lib.cdll.x264_encoder_reconfig(self._handle, ctypes.byref(param)) < 0:
            raise EncoderError(f"x264 refused the analysis of preset {preset!r}")
        self._far = far

    def close(self) -> None:
        """Free x264's encoder; further encode() calls raise EncoderError."""
        if self._handle is not None:
            self._lib.cdll.x264_encoder_close(self._handle)
            self._handle = None

    def __enter__(self) -> QPMapEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is not None:
            self.close()


def _is_x264_version_sei(nal_type: int, payload: bytes) -> bool:
    return nal_type == NAL_TYPE_SEI and _X264_VERSION_SEI_MARK in payload
