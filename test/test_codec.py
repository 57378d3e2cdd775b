"""QPMapEncoder: the QP map really reaches x264's macroblock quantizers (stac_codec.h264_encoder).

Real frames from ../shared/data/video/solidWhiteRight.mp4; one encoder thread unless a test is
about threads. Quality and size claims are measured with our decoder and with OpenCV's.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from stac_codec import annexb
from stac_codec.h264_decoder import H264Decoder
from stac_codec.h264_encoder import EncodedPacket, EncoderConfig, EncoderError, QPMapEncoder
from stac_codec.qp_map import macroblock_grid, validate_qp_map
from stac_codec.variance_aq import variance_aq_offsets
from stac_codec.x264_ctypes import X264LibraryError, load_x264, open_x264

CLIP = "video/solidWhiteRight.mp4"
FRAME_COUNT = 3


@pytest.fixture(scope="module")
def clip_frames(data_dir) -> list[np.ndarray]:
    """The clip's first frames, 960x540 rgb24."""
    path = data_dir / CLIP
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == FRAME_COUNT:
                return frames
    pytest.fail(f"{path} has fewer than {FRAME_COUNT} frames")


@pytest.fixture(scope="module")
def small_frames(clip_frames) -> list[np.ndarray]:
    """The same frames at 320x180, for tests whose claim does not depend on size."""
    return [cv2.resize(frame, (320, 180), interpolation=cv2.INTER_AREA) for frame in clip_frames]


def encode_all(
    frames, config=None, qp_map=None, pixel_format="rgb24", **encode_kwargs
) -> list[EncodedPacket]:
    height, width = frames[0].shape[:2]
    with QPMapEncoder(config or EncoderConfig(crf=28), width, height, pixel_format) as encoder:
        return [encoder.encode(frame, qp_map=qp_map, **encode_kwargs) for frame in frames]


def decode_all(packets, width, height) -> list[np.ndarray]:
    decoder = H264Decoder(width, height)
    results = [decoder.decode(packet.data) for packet in packets]
    assert all(result.ok for result in results), [result.detail for result in results]
    return [result.image for result in results]


def psnr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    error = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def half_map(grid, left_qp: int, right_qp: int) -> np.ndarray:
    qp_map = np.full(grid, right_qp, dtype=np.int8)
    qp_map[:, : grid[1] // 2] = left_qp
    return qp_map


def half_psnrs(frames, packets) -> list[tuple[float, float]]:
    height, width = frames[0].shape[:2]
    split_px = (macroblock_grid(width, height)[1] // 2) * 16
    decoded = decode_all(packets, width, height)
    return [
        (psnr_db(f[:, :split_px], d[:, :split_px]), psnr_db(f[:, split_px:], d[:, split_px:]))
        for f, d in zip(frames, decoded, strict=True)
    ]


@pytest.mark.parametrize("threads", [1, 2])
def test_left_right_map_moves_quality_to_the_finer_half(clip_frames, threads):
    config = EncoderConfig(crf=28, threads=threads)
    grid = macroblock_grid(960, 540)
    finer_left = half_psnrs(clip_frames, encode_all(clip_frames, config, half_map(grid, -8, 8)))
    finer_right = half_psnrs(clip_frames, encode_all(clip_frames, config, half_map(grid, 8, -8)))
    for left_db, right_db in finer_left:
        assert left_db >= right_db + 3.0
    for left_db, right_db in finer_right:
        assert right_db >= left_db + 3.0


def test_map_works_in_bitrate_mode(small_frames):
    config = EncoderConfig(rate_control="bitrate", bitrate_kbps=300)
    grid = macroblock_grid(320, 180)
    packets = encode_all(small_frames, config, half_map(grid, -8, 8))
    for left_db, right_db in half_psnrs(small_frames, packets):
        assert left_db >= right_db + 3.0


def test_all_zero_map_costs_the_same_as_no_map(clip_frames):
    zero_map = np.zeros(macroblock_grid(960, 540), dtype=np.int8)
    without_map = sum(p.size_bytes for p in encode_all(clip_frames))
    with_zero_map = sum(p.size_bytes for p in encode_all(clip_frames, qp_map=zero_map))
    assert abs(with_zero_map - without_map) <= 0.03 * without_map


def test_stricter_uniform_map_costs_more_bytes(clip_frames):
    grid = macroblock_grid(960, 540)
    sizes = [
        sum(p.size_bytes for p in encode_all(clip_frames, qp_map=np.full(grid, qp, np.int8)))
        for qp in (-4, 0, 4)
    ]
    assert sizes[0] > sizes[1] > sizes[2]


def test_lower_bitrate_target_gives_fewer_bytes(small_frames):
    sizes = [
        sum(
            p.size_bytes
            for p in encode_all(small_frames, EncoderConfig(rate_control="bitrate", bitrate_kbps=k))
        )
        for k in (100, 1000)
    ]
    assert sizes[0] < sizes[1]


@pytest.mark.parametrize("size", [(200, 120), (321, 181), (50, 34)])
def test_sizes_not_divisible_by_16_round_trip(small_frames, size):
    width, height = size
    frames = [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in small_frames]
    grid = macroblock_grid(width, height)
    assert grid == (-(-height // 16), -(-width // 16))
    packets = encode_all(frames, EncoderConfig(crf=18), qp_map=np.zeros(grid, np.int8))
    decoded = decode_all(packets, width, height)
    for frame, image in zip(frames, decoded, strict=True):
        assert image.shape == (height, width, 3)
        assert psnr_db(frame, image) > 30.0


def test_bgr_input_gives_the_same_stream_as_rgb(small_frames):
    bgr_frames = [np.ascontiguousarray(frame[:, :, ::-1]) for frame in small_frames]
    from_rgb = encode_all(small_frames, pixel_format="rgb24")
    from_bgr = encode_all(bgr_frames, pixel_format="bgr24")
    assert [p.data for p in from_rgb] == [p.data for p in from_bgr]
    decoded = decode_all(from_rgb, 320, 180)
    assert psnr_db(small_frames[0], decoded[0]) > 30.0  # channels not swapped on the way


def test_opencv_decodes_the_stream_to_the_same_frames(small_frames, tmp_path):
    size = (200, 120)  # not a multiple of 16: the SPS cropping must be honoured too
    frames = [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in small_frames]
    grid = macroblock_grid(*size)
    packets = encode_all(frames, qp_map=half_map(grid, -6, 6))
    path = tmp_path / "stream.h264"
    path.write_bytes(b"".join(p.data for p in packets))
    capture = cv2.VideoCapture(str(path))
    opencv_frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        opencv_frames.append(image)
    capture.release()
    assert len(opencv_frames) == len(frames)
    ours = decode_all(packets, *size)
    for bgr, rgb in zip(opencv_frames, ours, strict=True):
        assert bgr.shape == (120, 200, 3)
        assert psnr_db(bgr[:, :, ::-1], rgb) > 40.0


def test_every_frame_comes_out_at_once_with_slices_only_where_expected(small_frames):
    packets = encode_all(small_frames * 2, EncoderConfig(crf=28, gop_frames=4))
    assert [p.frame_index for p in packets] == list(range(6))
    assert [p.keyframe for p in packets] == [True, False, False, False, True, False]
    for packet in packets:
        assert packet.slice_bytes == annexb.slice_bytes(packet.data) > 0
        assert annexb.contains_idr(packet.data) == packet.keyframe
        header_types = {annexb.NAL_TYPE_SPS, annexb.NAL_TYPE_PPS}
        assert header_types.issubset(packet.nal_types) == packet.keyframe


@pytest.mark.parametrize(
    ("config", "new_base_quality"),
    [
        (EncoderConfig(crf=20), 40.0),
        (EncoderConfig(rate_control="bitrate", bitrate_kbps=4000), 100),
    ],
    ids=["crf", "bitrate"],
)
def test_base_quality_moves_mid_stream_without_a_keyframe(small_frames, config, new_base_quality):
    frames = small_frames * 3
    with QPMapEncoder(config, 320, 180) as encoder:
        before = [encoder.encode(frame) for frame in frames[:4]]
        encoder.set_base_quality(new_base_quality)
        after = [encoder.encode(frame) for frame in frames[4:]]
    assert not any(packet.keyframe for packet in after)
    assert sum(p.size_bytes for p in after[-3:]) < 0.5 * sum(p.size_bytes for p in before[-3:])
    decode_all(before + after, 320, 180)


@pytest.mark.parametrize("far_preset", ["medium", "slow"])
def test_far_frames_get_the_far_presets_analysis_mid_stream(small_frames, far_preset):
    """Far frames are what the far preset makes of them, byte for byte; the others are not;
    switching needs no keyframe and delays nothing."""
    frames = small_frames * 2
    quiet = {"crf": 28.0, "emit_version_sei": False}
    far_alone = encode_all(frames, EncoderConfig(preset=far_preset, **quiet))
    far_config = EncoderConfig(far_preset=far_preset, **quiet)
    all_far = encode_all(frames, far_config, far=True)
    assert [p.data for p in all_far] == [p.data for p in far_alone]
    assert all(p.far for p in all_far)
    with QPMapEncoder(far_config, 320, 180) as encoder:
        mixed = [encoder.encode(frame, far=index % 2 == 1) for index, frame in enumerate(frames)]
    assert [p.far for p in mixed] == [False, True] * 3
    assert [p.keyframe for p in mixed] == [True] + [False] * 5
    assert [p.data for p in mixed] != [p.data for p in far_alone]
    decode_all(mixed, 320, 180)
    with pytest.raises(ValueError, match="far_preset"):
        encode_all(frames[:1], EncoderConfig(), far=True)


def test_base_quality_out_of_range_is_rejected():
    with (
        QPMapEncoder(EncoderConfig(crf=20), 32, 32) as encoder,
        pytest.raises(ValueError, match="crf"),
    ):
        encoder.set_base_quality(60.0)
    assert encoder.config.crf == 20


def test_force_keyframe_makes_an_idr(small_frames):
    height, width = small_frames[0].shape[:2]
    with QPMapEncoder(EncoderConfig(crf=28), width, height) as encoder:
        flags = [encoder.encode(small_frames[0]).keyframe for _ in range(3)]
        forced = encoder.encode(small_frames[1], force_keyframe=True)
    assert flags == [True, False, False]
    assert forced.keyframe and annexb.contains_idr(forced.data)


@pytest.mark.parametrize(
    "config",
    [
        EncoderConfig(crf=28, gop_frames=4, refresh="intra_refresh"),
        EncoderConfig(crf=28, gop_frames=4, refresh="intra_refresh", mbtree=True),
        EncoderConfig(crf=28, gop_frames=4, refresh="none", mbtree=True),
        EncoderConfig(crf=28, gop_frames=4, refresh="none", mbtree=True, threads=2),
    ],
    ids=["intra_refresh", "intra_refresh_mbtree", "none_mbtree", "none_mbtree_2_threads"],
)
def test_refresh_without_idr_keeps_zero_delay_and_answers_requests_with_an_idr(
    small_frames, config
):
    """No periodic IDR after the first picture (intra refresh sweeps intra macroblocks over
    gop_frames frames instead), frame n out of the call that takes frame n, and a forced
    keyframe is an IDR picture with its headers, from which a fresh decoder starts."""
    frames = small_frames * 4
    with QPMapEncoder(config, 320, 180) as encoder:
        packets = [encoder.encode(frame, force_keyframe=i == 9) for i, frame in enumerate(frames)]
    assert [p.frame_index for p in packets] == list(range(len(frames)))
    assert [i for i, p in enumerate(packets) if p.keyframe] == [0, 9]
    assert all(annexb.contains_idr(p.data) == p.keyframe for p in packets)
    assert {annexb.NAL_TYPE_SPS, annexb.NAL_TYPE_PPS}.issubset(packets[9].nal_types)
    decode_all(packets, 320, 180)
    decode_all(packets[9:], 320, 180)


def test_intra_refresh_spreads_the_refresh_over_p_frames(clip_frames):
    """Past the first picture a periodic IDR is the largest frame by far; with intra refresh
    each P-frame carries a column of intra macroblocks instead, no picture near that size."""
    frames = clip_frames[:1] * 24
    largest = {}
    for refresh in ("idr", "intra_refresh"):
        packets = encode_all(frames, EncoderConfig(crf=28, gop_frames=8, refresh=refresh))
        largest[refresh] = max(p.size_bytes for p in packets[1:])
    assert largest["intra_refresh"] < 0.5 * largest["idr"]


def test_version_sei_can_be_left_out_and_slice_bytes_do_not_change(small_frames):
    with_sei = encode_all(small_frames[:1])[0]
    without_sei = encode_all(
        small_frames[:1], EncoderConfig(crf=28, emit_version_sei=False, checksum_sei=False)
    )[0]
    assert annexb.NAL_TYPE_SEI in with_sei.nal_types
    assert annexb.NAL_TYPE_SEI not in without_sei.nal_types
    assert without_sei.slice_bytes == with_sei.slice_bytes
    assert without_sei.size_bytes < with_sei.size_bytes


def test_two_threads_use_slices_without_delay(small_frames):
    packets = encode_all(small_frames, EncoderConfig(crf=28, threads=2))
    assert len(packets) == len(small_frames)
    assert all(p.nal_types.count(annexb.NAL_TYPE_SLICE) == 2 for p in packets[1:])
    decode_all(packets, 320, 180)


@pytest.mark.parametrize(
    ("qp_map", "message"),
    [
        (np.zeros((11, 20), np.int8), "shape"),
        (np.zeros((12, 21), np.int8), "shape"),
        (np.zeros((12, 20), np.int16), "dtype"),
        (np.zeros((12, 20), np.float32), "dtype"),
        (np.full((12, 20), 52, np.int8), "offsets"),
        (np.full((12, 20), -128, np.int8), "offsets"),
        ([[0] * 20] * 12, "numpy"),
    ],
)
def test_bad_qp_maps_are_rejected(small_frames, qp_map, message):
    assert macroblock_grid(320, 180) == (12, 20)
    with (
        QPMapEncoder(EncoderConfig(), 320, 180) as encoder,
        pytest.raises(ValueError, match=message),
    ):
        encoder.encode(small_frames[0], qp_map=qp_map)


def test_extreme_valid_offsets_are_accepted():
    grid = (12, 20)
    assert validate_qp_map(np.full(grid, 51, np.int8), grid).shape == grid
    assert validate_qp_map(np.full(grid, -51, np.int8), grid).shape == grid


def test_bad_frames_are_rejected(small_frames):
    with QPMapEncoder(EncoderConfig(), 320, 180) as encoder:
        with pytest.raises(ValueError, match="shape"):
            encoder.encode(small_frames[0][:-1])
        with pytest.raises(ValueError, match="uint8"):
            encoder.encode(small_frames[0].astype(np.float32))
        with pytest.raises(ValueError, match="shape"):
            encoder.encode(small_frames[0][:, :, :1])
    with pytest.raises(EncoderError, match="closed"):
        encoder.encode(small_frames[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aq_strength": 0.0},
        {"rate_control": "cqp"},
        {"crf": 52.0},
        {"preset": "warp9"},
        {"threads": 0},
        {"gop_frames": 0},
        {"bitrate_kbps": 0},
        {"profile": "high10"},
        {"refresh": "gradual"},
        {"mbtree": True},
        {"far_preset": "warp9"},
    ],
)
def test_bad_configs_are_rejected(kwargs):
    with pytest.raises(ValueError, match="EncoderConfig"):
        EncoderConfig(**kwargs)


@pytest.mark.parametrize(
    ("override", "message"),
    [({"aq-strength": "0"}, "adaptive quantization off"), ({"bframes": "2"}, "delay")],
)
def test_encoder_refuses_x264_settings_that_ignore_the_map_or_delay_frames(
    monkeypatch, override, message
):
    original = EncoderConfig.x264_options
    monkeypatch.setattr(EncoderConfig, "x264_options", lambda self: {**original(self), **override})
    with pytest.raises(EncoderError, match=message):
        QPMapEncoder(EncoderConfig(), 64, 64)


def test_bad_sizes_and_pixel_formats_are_rejected():
    with pytest.raises(ValueError, match="2x2"):
        QPMapEncoder(EncoderConfig(), 1, 16)
    with pytest.raises(ValueError, match="pixel_format"):
        QPMapEncoder(EncoderConfig(), 32, 16, "yuv420p")


def test_the_bundled_libx264_is_build_165_and_other_libraries_are_refused(tmp_path):
    library = load_x264()
    assert library.path.name.startswith("libx264") and library.path.name.endswith(".so.165")
    with pytest.raises(X264LibraryError, match="cannot load"):
        open_x264(tmp_path / "missing.so")
    # PyAV's wheel ships FFmpeg's libraries beside libx264: a real library that is not x264
    avutil = next(library.path.parent.glob("libavutil*"), None)
    assert avutil is not None, f"no libavutil beside {library.path}"
    with pytest.raises(X264LibraryError, match="not libx264 API build 165"):
        open_x264(avutil)


def _sizes(frames, aq_strength: float, variance_aq_strength: float) -> list[int]:
    height, width = frames[0].shape[:2]
    encoder = QPMapEncoder(EncoderConfig(crf=28, aq_strength=aq_strength), width, height)
    return [
        encoder.encode(frame, None, variance_aq_strength=variance_aq_strength).size_bytes
        for frame in frames
    ]


def test_variance_aq_computed_outside_x264_is_x264s_own(clip_frames):
    """x264 at the offsets-only strength plus stac_codec.variance_aq at 0.5 codes the clip as
    x264's own AQ at 0.5 does (the same offsets up to x264's log2 table), and unlike no AQ."""
    own = _sizes(clip_frames, 0.5, 0.0)
    computed = _sizes(clip_frames, 0.001, 0.5)
    none = _sizes(clip_frames, 0.001, 0.0)
    assert abs(sum(computed) - sum(own)) < 0.25 * abs(sum(none) - sum(own))
    assert computed != none


def test_variance_aq_energy_is_x264s_formula_on_padded_pictures():
    """The macroblock energy, from integral images, equals x264's definition summed directly:
    per plane sum(x^2) - sum(x)^2 // n over each block, luma 16x16 and chroma 8x8, the picture
    padded to whole macroblocks by repeating its last row and column."""
    rng = np.random.default_rng(1)
    width, height = 50, 34  # 4 x 3 macroblocks, both padded
    i420 = rng.integers(0, 256, width * height * 3 // 2, dtype=np.uint8)
    planes = [
        (i420[: width * height].reshape(height, width), 16),
        (i420[width * height : width * height * 5 // 4].reshape(height // 2, width // 2), 8),
        (i420[width * height * 5 // 4 :].reshape(height // 2, width // 2), 8),
    ]
    energy = np.zeros((3, 4), np.int64)
    for plane, block in planes:
        padded = np.pad(
            plane, ((0, 3 * block - plane.shape[0]), (0, 4 * block - plane.shape[1])), "edge"
        )
        for row in range(3):
            for col in range(4):
                pixels = padded[row * block : (row + 1) * block, col * block : (col + 1) * block]
                pixels = pixels.astype(np.int64)
                energy[row, col] += (pixels**2).sum() - pixels.sum() ** 2 // block**2
    expected = 1.0397 * (np.log2(np.maximum(energy, 1)) - 14.427)
    offsets = variance_aq_offsets(i420, width, height, 1.0)
    np.testing.assert_allclose(offsets, expected, rtol=0, atol=1e-5)


def test_variance_aq_offsets_follow_block_energy():
    """Flat macroblocks get lower offsets (finer quantizers) than textured ones; the strength
    scales them; odd sizes and wrong buffers are refused."""
    rng = np.random.default_rng(0)
    rgb = np.full((32, 48, 3), 128, np.uint8)
    rgb[:, 16:32] = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    offsets = variance_aq_offsets(i420, 48, 32, 1.0)
    assert offsets.shape == (2, 3) and offsets.dtype == np.float32
    assert (offsets[:, 1] > 0).all() and (offsets[:, 0] < offsets[:, 1]).all()
    np.testing.assert_allclose(variance_aq_offsets(i420, 48, 32, 0.5), offsets * 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="even"):
        variance_aq_offsets(i420, 47, 32, 1.0)
    with pytest.raises(ValueError, match="I420"):
        variance_aq_offsets(i420[:-1], 48, 32, 1.0)
