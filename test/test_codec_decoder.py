"""H264Decoder survives lost and damaged access units; Annex B helpers (stac_encoder).

Synthetic moving texture, so these tests need no data set.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import pytest

from stac_codec import annexb, h264_syntax
from stac_codec.h264_decoder import DecodeError, DecodeStatus, H264Decoder
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder

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
    with pytest.raises(DecodeError, match="frame_seq"):
        H264Decoder().decode(packets[0], frame_seq="1")
    with pytest.raises(DecodeError, match="expected_crc32"):
        H264Decoder().decode(packets[0], expected_crc32=-1)
    with pytest.raises(DecodeError, match="checksums"):
        H264Decoder(checksums="maybe")
    with pytest.raises(DecodeError, match="output_format"):
        H264Decoder(output_format="gray")
    with pytest.raises(DecodeError, match="width and height"):
        H264Decoder(width=WIDTH)


def test_split_nal_units_round_trips_an_access_unit(packets):
    units = annexb.split_nal_units(packets[0])
    assert b"".join(unit.data for unit in units) == packets[0]
    assert [unit.nal_type for unit in units] == [7, 8, 6, 6, 5]  # version SEI, checksum SEI
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


# --- Outside bytes: the decoder never raises for them and never passes damage on as good. ---


@pytest.fixture(scope="module")
def plain_packets(frames) -> list[bytes]:
    """The same clip without the in-band checksum, to exercise the syntax checks alone."""
    config = EncoderConfig(crf=24, gop_frames=GOP, checksum_sei=False)
    with QPMapEncoder(config, WIDTH, HEIGHT) as encoder:
        return [encoder.encode(frame).data for frame in frames]


def replace_unit(data: bytes, index: int, new_unit: bytes) -> bytes:
    units = annexb.split_nal_units(data)
    return b"".join(new_unit if i == index else unit.data for i, unit in enumerate(units))


def ue_bits(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def rewrite_rbsp_bits(unit: annexb.NalUnit, start: int, old_length: int, new_bits: str) -> bytes:
    """The NAL unit (4-byte start code) with bits [start, start+old_length) of its RBSP
    replaced by new_bits; emulation prevention re-applied."""
    bits = "".join(f"{byte:08b}" for byte in unit.rbsp())
    stop = bits.rstrip("0")[:-1]  # without the stop bit and the alignment
    body = stop[:start] + new_bits + stop[start + old_length :] + "1"
    body += "0" * (-len(body) % 8)
    rbsp = int(body, 2).to_bytes(len(body) // 8, "big")
    header = unit.data[unit.data.index(1) + 1 : unit.data.index(1) + 2]
    return b"\x00\x00\x00\x01" + header + h264_syntax.escape_rbsp(rbsp)


def test_lying_declared_sizes_are_corrupt_and_never_raise(packets):
    """EncodedFrame.width/height come from the network: 0, negative, larger or smaller than the
    stream, or absurd, must give CORRUPT (no exception, no silent crop); the true size then
    decodes from the next keyframe."""
    decoder = EncodedStreamDecoder()
    lies = [(0, 0), (WIDTH, 0), (-WIDTH, HEIGHT), (WIDTH + 16, HEIGHT), (WIDTH, HEIGHT + 32)]
    lies += [(WIDTH - 32, HEIGHT), (WIDTH // 2, HEIGHT // 2), (8192, 4320), (10**9, 10**9)]
    for seq, (width, height) in enumerate(lies, start=1):
        result = decoder.decode(packets[0], seq, width, height)
        assert result.status is CORRUPT, (width, height, result)
        assert result.image is None and result.detail
    result = decoder.decode(packets[0], len(lies) + 1, WIDTH, HEIGHT)
    assert result.ok and result.image.shape == (HEIGHT, WIDTH, 3)


def test_every_single_bit_flip_of_the_parameter_sets_is_handled(plain_packets):
    """About 3% of SPS flips used to raise DecodeError (a cropping field made the picture
    smaller than declared) or an FFmpeg OSError; none may raise, and none may come out as a
    picture other than the undamaged one, except flips of fields that are valid either way
    (colour description, slice QP): those pass only without a checksum, and must then decode
    to a full-size picture."""
    clean = H264Decoder(WIDTH, HEIGHT).decode(plain_packets[0]).image
    units = annexb.split_nal_units(plain_packets[0])
    header_bytes = sum(len(u.data) for u in units if u.nal_type in (7, 8))
    outcomes = {DECODED: 0, CORRUPT: 0}
    for bit in range(8 * header_bytes):
        damaged = bytearray(plain_packets[0])
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        result = H264Decoder(WIDTH, HEIGHT).decode(bytes(damaged), 1)
        outcomes[result.status] += 1
        if result.ok:
            assert result.image.shape == clean.shape
    assert outcomes[CORRUPT] > outcomes[DECODED] > 0


def test_parameter_set_ids_are_range_checked_and_memory_stays_bounded(plain_packets):
    sps, pps = annexb.split_nal_units(plain_packets[0])[:2]
    sps_id_40 = rewrite_rbsp_bits(sps, 24, 1, ue_bits(40))  # ue(0) is the single bit '1'
    pps_id_300 = rewrite_rbsp_bits(pps, 0, 1, ue_bits(300))
    decoder = H264Decoder(WIDTH, HEIGHT)
    result = decoder.decode(sps_id_40 + plain_packets[0], 1)
    assert result.status is CORRUPT and "seq_parameter_set_id = 40 out of range" in result.detail
    result = decoder.decode(plain_packets[0] + b"", 2)
    assert result.ok
    result = decoder.decode(replace_unit(plain_packets[0], 1, pps_id_300), 3)
    assert result.status is CORRUPT and "pic_parameter_set_id = 300" in result.detail
    for sps_id in range(32):  # every legal id once: the most a stream can make it keep
        decoder.decode(rewrite_rbsp_bits(sps, 24, 1, ue_bits(sps_id)) + plain_packets[0], 4)
    assert decoder.parameter_set_counts[0] <= 32 and decoder.parameter_set_counts[1] <= 256


def test_a_stream_larger_than_allowed_is_refused_before_decoding(plain_packets):
    sps = annexb.split_nal_units(plain_packets[0])[0]
    parsed = h264_syntax.parse_sps(sps)
    assert (parsed.width, parsed.height) == (WIDTH, HEIGHT)
    result = H264Decoder(max_macroblocks=parsed.macroblocks - 1).decode(plain_packets[0])
    assert result.status is CORRUPT and "more than the" in result.detail
    assert H264Decoder(max_macroblocks=parsed.macroblocks).decode(plain_packets[0]).ok


def test_a_stream_whose_size_changes_midway_is_corrupt_not_cropped(frames, packets):
    small = [np.ascontiguousarray(f[: HEIGHT // 2, : WIDTH // 2]) for f in frames[:3]]
    with QPMapEncoder(EncoderConfig(crf=24, gop_frames=GOP), WIDTH // 2, HEIGHT // 2) as encoder:
        small_packets = [encoder.encode(frame).data for frame in small]
    bigger = [np.ascontiguousarray(np.tile(f, (2, 2, 1))) for f in frames[:3]]
    with QPMapEncoder(EncoderConfig(crf=24, gop_frames=GOP), 2 * WIDTH, 2 * HEIGHT) as encoder:
        big_packets = [encoder.encode(frame).data for frame in bigger]
    # The sender keeps declaring WIDTH x HEIGHT while its stream changes size.
    for other in (small_packets, big_packets):
        decoder = H264Decoder(WIDTH, HEIGHT)
        assert decoder.decode(packets[0], 1).ok
        results = [decoder.decode(data, seq) for seq, data in enumerate(other, start=2)]
        assert [r.status for r in results] == [CORRUPT, WAITING, WAITING]
        assert "declared" in results[0].detail
    # Declared honestly, the edge's decoder follows the change from the new keyframe.
    decoder = EncodedStreamDecoder()
    assert decoder.decode(packets[0], 1, WIDTH, HEIGHT).ok
    result = decoder.decode(small_packets[0], 2, WIDTH // 2, HEIGHT // 2)
    assert result.ok and result.image.shape == (HEIGHT // 2, WIDTH // 2, 3)
    # Without a declared size the picture size follows the stream at its keyframes.
    decoder = H264Decoder()
    shapes = [decoder.decode(data).image.shape[:2] for data in packets[:2] + small_packets[:2]]
    assert shapes == [(HEIGHT, WIDTH)] * 2 + [(HEIGHT // 2, WIDTH // 2)] * 2


def test_a_loss_that_ends_in_a_keyframe_resyncs_at_that_keyframe(packets):
    """frame_seq jumps over the lost frames to the next IDR: decoding resumes at that IDR and
    its P-frames (it used to skip the frame_num tracker there and drop one more whole GOP)."""
    stream = packets[:2] + packets[GOP:]
    seqs = [1, 2] + list(range(GOP + 1, len(packets) + 1))
    assert statuses(H264Decoder(WIDTH, HEIGHT), stream, seqs) == [DECODED] * len(stream)


def test_an_encoder_restart_resyncs_at_its_first_keyframe(packets):
    """A restarted robot encoder starts again at frame_seq 1 with an IDR."""
    stream = packets[:4] + packets[:6]
    seqs = [101, 102, 103, 104, 1, 2, 3, 4, 5, 6]
    assert statuses(H264Decoder(WIDTH, HEIGHT), stream, seqs) == [DECODED] * len(stream)


def test_the_in_band_checksum_catches_what_the_syntax_checks_cannot(packets):
    units = annexb.split_nal_units(packets[1])
    checksum = next(u for u in units if h264_syntax.is_checksum_unit(u))
    assert h264_syntax.verify_checksum(units) is True
    assert len(checksum.data) <= 32
    # A flip in the CABAC data of a P-slice (which FFmpeg decodes silently about one in ten
    # times): every one of a hundred flips is CORRUPT.
    slice_start = packets[1].index(units[-1].data) + 8
    rng = np.random.default_rng(3)
    for bit in rng.integers(8 * slice_start, 8 * len(packets[1]), 100):
        damaged = bytearray(packets[1])
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        decoder = H264Decoder(WIDTH, HEIGHT)
        assert decoder.decode(packets[0], 1).ok
        result = decoder.decode(bytes(damaged), 2)
        assert result.status is CORRUPT and "checksum" in result.detail


def test_a_stream_that_carried_checksums_must_keep_carrying_them(packets, plain_packets):
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert decoder.decode(packets[0], 1).ok
    result = decoder.decode(plain_packets[1], 2)  # its checksum SEI lost
    assert result.status is CORRUPT and "no in-band checksum" in result.detail
    # Two keyframes in a row without one: the sender stopped sending them (a restart).
    assert decoder.decode(plain_packets[GOP], GOP + 1).status is CORRUPT
    assert statuses(decoder, plain_packets[2 * GOP :]) == [DECODED] * (len(packets) - 2 * GOP)
    strict = H264Decoder(WIDTH, HEIGHT, checksums="required")
    assert strict.decode(plain_packets[0]).status is CORRUPT
    assert H264Decoder(WIDTH, HEIGHT, checksums="ignored").decode(plain_packets[0]).ok


def test_an_expected_crc32_from_the_transport_is_checked(packets):
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert decoder.decode(packets[0], 1, expected_crc32=zlib.crc32(packets[0])).ok
    result = decoder.decode(packets[1], 2, expected_crc32=zlib.crc32(packets[1]) ^ 1)
    assert result.status is CORRUPT and "CRC32" in result.detail
    assert decoder.decode(packets[2], 3).status is WAITING


@pytest.mark.parametrize(
    "build",
    [
        lambda p: p[1] + p[2],  # two pictures
        lambda p: b"".join(u.data for u in annexb.split_nal_units(p[0]) if not u.is_slice),
        lambda p: bytes([0, 0, 0, 1, 0x80 | p[1][4]]) + p[1][5:],  # forbidden_zero_bit
        lambda p: b"\x00\x00\x00\x01\x7f" + bytes(20),  # NAL type 31
    ],
    ids=["two-pictures", "no-slice", "forbidden-bit", "unspecified-nal-type"],
)
def test_malformed_access_units_are_corrupt(plain_packets, build):
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert decoder.decode(plain_packets[0]).ok
    assert decoder.decode(build(plain_packets)).status is CORRUPT


def test_garbage_between_the_units_of_a_stream_does_not_interrupt_it(packets):
    """A message that is not an access unit, or fails its checks, is refused without touching
    the decoder: the stream around it decodes on (a rogue publisher cannot stall it)."""
    decoder = H264Decoder(WIDTH, HEIGHT)
    results = []
    for seq, data in enumerate(packets[:4], start=1):
        results.append(decoder.decode(data, seq))
        results.append(decoder.decode(b"\xde\xad\xbe\xef" * 64, 2**63))
        results.append(decoder.decode(flip_bytes(packets[seq + 4]), 2**62))
    assert [r.status for r in results[0::3]] == [DECODED] * 4
    assert all(r.status is CORRUPT and r.refused for r in results[1::3] + results[2::3])


def test_a_damaged_unit_of_the_stream_itself_still_costs_a_resync(packets):
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert decoder.decode(packets[0], 1).ok and decoder.decode(packets[1], 2).ok
    assert decoder.decode(flip_bytes(packets[2]), 3).refused
    assert decoder.decode(packets[3], 4).status is WAITING  # the gap shows on the next unit


def test_units_of_a_foreign_size_do_not_replace_the_stream_until_they_decode(frames, packets):
    other = [cv2.resize(f, (96, 64)) for f in frames[:3]]
    with QPMapEncoder(EncoderConfig(crf=24, gop_frames=GOP), 96, 64) as encoder:
        other_packets = [encoder.encode(frame).data for frame in other]
    stream = EncodedStreamDecoder()
    assert stream.decode(packets[0], 1, WIDTH, HEIGHT).ok
    garbage = stream.decode(b"\x00\x00\x01\x65" + bytes(40), 7, 320, 240)
    assert not garbage.ok
    assert stream.decode(packets[1], 2, WIDTH, HEIGHT).ok  # the stream goes on
    assert stream.decode(other_packets[0], 1, 96, 64).ok  # a real new stream, from its IDR
    assert stream.decode(other_packets[1], 2, 96, 64).ok


def test_the_edge_decoder_keeps_the_picture_before_the_last_one(frames, packets):
    """What a map for P-frames measures its residual against: the previous decoded picture
    of the same size, never one of a failed unit or of another size."""
    decoder = EncodedStreamDecoder()
    first = decoder.decode(packets[0], 1, WIDTH, HEIGHT)
    assert first.ok and decoder.reference_image is None  # a stream's first picture
    second = decoder.decode(packets[1], 2, WIDTH, HEIGHT)
    assert second.ok and decoder.reference_image is first.image
    assert not np.shares_memory(first.image, second.image)  # each picture its own array
    assert not decoder.decode(b"junk", 3, WIDTH, HEIGHT).ok
    assert decoder.reference_image is first.image  # a failed unit changes nothing
    small = np.ascontiguousarray(frames[0][: HEIGHT // 2, : WIDTH // 2])
    with QPMapEncoder(EncoderConfig(crf=24), WIDTH // 2, HEIGHT // 2) as encoder:
        keyframe = encoder.encode(small).data
    assert decoder.decode(keyframe, 4, WIDTH // 2, HEIGHT // 2).ok
    assert decoder.reference_image is None  # a new size: nothing to predict from
