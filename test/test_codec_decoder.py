"""H264Decoder survives lost and damaged access units; Annex B helpers (stac_encoder).

Synthetic moving texture, so these tests need no data set.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stac_codec import annexb
from stac_codec.h264_decoder import DecodeError, DecodeStatus, H264Decoder
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder

WIDTH, HEIGHT = 160, 96
GOP = 5
DECODED, CORRUPT, WAITING = (
    DecodeStatus.DECODED,
    DecodeStatus.CORRUPT,
    DecodeStatus.WAITING_FOR_KEYFRAME,
)


def moving_texture(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 256, (HEIGHT // 16, (WIDTH + 32) // 16, 3), dtype=np.uint8)
    texture = cv2.resize(coarse, (WIDTH + 32, HEIGHT), interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(texture[:, 2 * i : 2 * i + WIDTH]) for i in range(count)]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return moving_texture(12)


@pytest.fixture(scope="module")
def packets(frames) -> list[bytes]:
    with QPMapEncoder(EncoderConfig(crf=24, gop_frames=GOP), WIDTH, HEIGHT) as encoder:
        return [encoder.encode(frame).data for frame in frames]


def statuses(decoder: H264Decoder, stream, frame_seqs=None) -> list[DecodeStatus]:
    results = [
        decoder.decode(data, None if frame_seqs is None else frame_seqs[i])
        for i, data in enumerate(stream)
    ]
    for result in results:
        assert (result.image is not None) == result.ok
    return [result.status for result in results]


def flip_bytes(data: bytes, every: int = 37) -> bytes:
    damaged = bytearray(data)
    for index in range(len(data) // 3, len(data), every):
        damaged[index] ^= 0xFF
    return bytes(damaged)


def test_clean_stream_decodes_every_frame_close_to_the_input(frames, packets):
    decoder = H264Decoder(WIDTH, HEIGHT)
    results = [decoder.decode(data, seq) for seq, data in enumerate(packets, start=1)]
    assert [r.status for r in results] == [DECODED] * len(packets)
    assert [r.keyframe for r in results] == [i % GOP == 0 for i in range(len(packets))]
    for frame, result in zip(frames, results, strict=True):
        assert result.image.shape == (HEIGHT, WIDTH, 3) and result.image.dtype == np.uint8
        assert (
            np.mean(np.abs(frame.astype(int) - result.image)) < 6.0
        )  # chroma subsampling of saturated colours
    assert decoder.counters.decoded == len(packets) and decoder.counters.gaps == 0


def test_bgr_output_is_rgb_reversed(packets):
    rgb = H264Decoder(WIDTH, HEIGHT).decode(packets[0]).image
    bgr = H264Decoder(WIDTH, HEIGHT, output_format="bgr24").decode(packets[0]).image
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])


def test_lost_packet_is_noticed_from_frame_num_alone(packets):
    stream = packets[:2] + packets[3:]
    expected = [DECODED, DECODED] + [WAITING] * 2 + [DECODED] * (len(packets) - 5)
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert statuses(decoder, stream) == expected
    assert decoder.counters.gaps == 1
    assert decoder.counters.skipped_waiting_for_keyframe == 2


def test_lost_packet_is_noticed_from_frame_seq(packets):
    # Only the sequence numbers jump; the bytes are a clean stream.
    frame_seqs = [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    expected = [DECODED, DECODED, WAITING, WAITING, WAITING] + [DECODED] * 7
    assert statuses(H264Decoder(WIDTH, HEIGHT), packets, frame_seqs) == expected


@pytest.mark.parametrize(
    "damage",
    [flip_bytes, lambda data: data[: len(data) // 2]],
    ids=["flipped-bytes", "truncated"],
)
def test_damaged_packet_is_reported_and_the_stream_resumes_at_the_next_keyframe(packets, damage):
    stream = list(packets)
    stream[2] = damage(stream[2])
    expected = [DECODED, DECODED, CORRUPT, WAITING, WAITING] + [DECODED] * 7
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert statuses(decoder, stream) == expected
    assert decoder.counters.corrupt == 1


def test_damaged_keyframe_blocks_the_whole_gop(packets):
    stream = [flip_bytes(packets[0])] + packets[1:]
    expected = [CORRUPT] + [WAITING] * (GOP - 1) + [DECODED] * (len(packets) - GOP)
    assert statuses(H264Decoder(WIDTH, HEIGHT), stream) == expected


@pytest.mark.parametrize(
    "junk",
    [b"", b"\x01\x02\x03", b"\x00\x00\x01", b"\x00\x00\x01\x65" + bytes(100)],
    ids=["empty", "no-start-code", "empty-nal", "zeros-idr"],
)
def test_junk_is_corrupt_and_a_keyframe_recovers(packets, junk):
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert statuses(decoder, [junk, packets[1], packets[0]]) == [CORRUPT, WAITING, DECODED]


def test_joining_mid_stream_waits_for_a_keyframe(packets):
    expected = [WAITING] * 3 + [DECODED] * 7
    assert statuses(H264Decoder(WIDTH, HEIGHT), packets[2:]) == expected


def test_stream_size_is_kept_without_a_crop_size(packets):
    assert H264Decoder().decode(packets[0]).image.shape == (HEIGHT, WIDTH, 3)


def test_caller_errors_raise_decode_error(packets):
    with pytest.raises(DecodeError, match="bytes"):
        H264Decoder().decode("not bytes")
    with pytest.raises(DecodeError, match="smaller"):
        H264Decoder(WIDTH + 16, HEIGHT).decode(packets[0])
    with pytest.raises(DecodeError, match="output_format"):
        H264Decoder(output_format="gray")
    with pytest.raises(DecodeError, match="width and height"):
        H264Decoder(width=WIDTH)


def test_split_nal_units_round_trips_an_access_unit(packets):
    units = annexb.split_nal_units(packets[0])
    assert b"".join(unit.data for unit in units) == packets[0]
    assert [unit.nal_type for unit in units] == [7, 8, 6, 5]
    assert annexb.slice_bytes(packets[0]) == units[-1].size_bytes
    assert annexb.contains_idr(packets[0]) and not annexb.contains_idr(packets[1])
    with pytest.raises(ValueError, match="start code"):
        annexb.split_nal_units(b"\x42\x00\x00\x01\x65")


def test_frame_num_tracker_reports_only_real_gaps(packets):
    tracker = annexb.FrameNumTracker()
    in_order = [tracker.update(annexb.split_nal_units(data)) for data in packets]
    assert in_order == [""] * len(packets)
    tracker = annexb.FrameNumTracker()
    reports = [tracker.update(annexb.split_nal_units(data)) for data in packets[:2] + packets[3:]]
    assert reports[2].startswith("frame_num jumped from 1 to 3")
    assert reports[:2] + reports[3:] == [""] * (len(packets) - 2)
