"""stac_eval.foxglove_video: EncodedFrame fields -> foxglove_msgs/msg/CompressedVideo, and the
check that every message is one frame a WebCodecs player (Foxglove, Lichtblick) can decode.

Real access units from QPMapEncoder (and, for B-frames, which QPMapEncoder never writes, from
FFmpeg's libx264 through PyAV); each rule of the check is broken once on purpose.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from stac_codec.annexb import NAL_TYPE_PPS, NAL_TYPE_SPS, split_nal_units
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_eval.foxglove_video import (
    COMPRESSED_VIDEO_TYPE,
    VideoFrameError,
    check_access_unit,
    compressed_video,
    compressed_video_cdr,
    register_compressed_video,
)

WIDTH, HEIGHT = 320, 192


def frames(count: int) -> list[np.ndarray]:
    """Noisy frames with a sliding bright block, so P (and B) frames have something to code."""
    rng = np.random.default_rng(3)
    result = []
    for index in range(count):
        frame = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        frame[40:120, 8 * index : 8 * index + 80] = 220
        result.append(frame)
    return result


def encode(count: int, **config) -> list:
    """`count` access units from QPMapEncoder; frame 3 (when there is one) a forced IDR."""
    with QPMapEncoder(EncoderConfig(crf=28.0, **config), WIDTH, HEIGHT) as encoder:
        return [
            encoder.encode(frame, force_keyframe=index == 3)
            for index, frame in enumerate(frames(count))
        ]


def drop_nal_types(data: bytes, nal_types: set[int]) -> bytes:
    return b"".join(unit.data for unit in split_nal_units(data) if unit.nal_type not in nal_types)


@pytest.fixture(scope="module")
def typestore():
    store = get_typestore(Stores.ROS2_JAZZY)
    register_compressed_video(store)
    register_compressed_video(store)  # a second registration is harmless
    return store


@pytest.mark.parametrize("threads", [1, 3])  # 3 threads: several slices per picture
def test_encoder_access_units_pass(threads):
    packets = encode(6, threads=threads)
    for packet in packets:
        info = check_access_unit(packet.data)
        assert info.keyframe == packet.keyframe
        assert set(info.slice_types) <= {"I", "P"}
        assert (info.codec is not None) == packet.keyframe  # headers repeated at every IDR
    assert [p.keyframe for p in packets] == [True, False, False, True, False, False]
    if threads > 1:
        assert len(check_access_unit(packets[1].data).slice_types) > 1


@pytest.mark.parametrize(
    ("profile", "codec_prefix"), [("baseline", "avc1.42"), ("main", "avc1.4D"), ("high", "avc1.64")]
)
def test_codec_string_comes_from_the_sps(profile, codec_prefix):
    (packet,) = encode(1, profile=profile)
    codec = check_access_unit(packet.data).codec
    assert codec is not None and codec.startswith(codec_prefix) and len(codec) == len("avc1.") + 6
    sps = next(unit for unit in split_nal_units(packet.data) if unit.nal_type == NAL_TYPE_SPS)
    assert codec == "avc1." + sps.rbsp(3).hex().upper()


def test_not_annex_b_from_byte_0_is_refused():
    (packet,) = encode(1)
    units = split_nal_units(packet.data)
    length_prefixed = b"".join(
        len(unit.data[4:]).to_bytes(4, "big") + unit.data[4:] for unit in units
    )
    with pytest.raises(VideoFrameError, match="not Annex B from byte 0"):
        check_access_unit(length_prefixed)
    with pytest.raises(VideoFrameError, match="not Annex B from byte 0"):
        check_access_unit(b"\x09" + packet.data)
    with pytest.raises(VideoFrameError, match="not Annex B from byte 0"):
        check_access_unit(b"")


def test_two_frames_in_one_message_are_refused():
    packets = encode(3, checksum_sei=False)  # no SEI between the pictures: the slice check
    with pytest.raises(VideoFrameError, match="more than one frame"):
        check_access_unit(packets[1].data + packets[2].data)
    with pytest.raises(VideoFrameError, match="starts another access unit"):
        check_access_unit(packets[2].data + packets[0].data)  # P, then SPS PPS IDR


def test_idr_without_parameter_sets_is_refused():
    packets = encode(4)
    with pytest.raises(VideoFrameError, match="IDR without SPS and PPS"):
        check_access_unit(drop_nal_types(packets[3].data, {NAL_TYPE_SPS, NAL_TYPE_PPS}))
    with pytest.raises(VideoFrameError, match="IDR without PPS"):
        check_access_unit(drop_nal_types(packets[3].data, {NAL_TYPE_PPS}))


def test_a_message_without_a_picture_or_starting_mid_picture_is_refused():
    packets = encode(2, threads=3, checksum_sei=False)  # [1:] drops the first slice
    with pytest.raises(VideoFrameError, match="no slice"):
        check_access_unit(drop_nal_types(packets[0].data, {1, 5}))
    second_slice_on = b"".join(unit.data for unit in split_nal_units(packets[1].data)[1:])
    with pytest.raises(VideoFrameError, match="starts mid-picture"):
        check_access_unit(second_slice_on)


def test_b_frames_are_refused():
    """QPMapEncoder never writes B-frames; FFmpeg's libx264 with bframes=2 does."""
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {"bframes": "2", "preset": "veryfast", "b-adapt": "0"}
    packets = []
    for index, frame in enumerate(frames(10)):
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
        video_frame.pts = index
        packets += context.encode(video_frame)
    packets += context.encode(None)
    refused = []
    for packet in packets:
        try:
            check_access_unit(bytes(packet))
        except VideoFrameError as error:
            refused.append(str(error))
    assert refused and all("B slice" in reason for reason in refused), refused


def test_message_fields_and_cdr_round_trip(typestore):
    (packet,) = encode(1)
    cdr = compressed_video_cdr(
        typestore,
        sec=1_700_000_000,
        nanosec=123_456_789,
        frame_id="camera",
        data=packet.data,
        keyframe=True,
        codec="h264",
    )
    message = typestore.deserialize_cdr(cdr, COMPRESSED_VIDEO_TYPE)
    assert (message.timestamp.sec, message.timestamp.nanosec) == (1_700_000_000, 123_456_789)
    assert message.frame_id == "camera"
    assert message.format == "h264"
    assert bytes(message.data) == packet.data
    fields = [name for name, _ in typestore.fielddefs[COMPRESSED_VIDEO_TYPE][1]]
    assert fields == ["timestamp", "frame_id", "data", "format"]  # the CDR layout viewers expect


def test_keyframe_flag_and_codec_must_agree_with_the_data(typestore):
    packets = encode(2)
    fields = {"sec": 0, "nanosec": 0, "frame_id": "camera"}
    with pytest.raises(VideoFrameError, match="keyframe flag says False"):
        compressed_video(typestore, data=packets[0].data, keyframe=False, **fields)
    with pytest.raises(VideoFrameError, match="keyframe flag says True"):
        compressed_video(typestore, data=packets[1].data, keyframe=True, **fields)
    with pytest.raises(VideoFrameError, match="codec 'h265' is not supported"):
        compressed_video(typestore, data=packets[0].data, codec="h265", **fields)


def test_a_slice_header_that_ends_early_is_refused_as_unplayable():
    """The slice header is read by stac_codec.h264_syntax: a header cut inside its first
    Exp-Golomb code is the viewer check's VideoFrameError, naming the field."""
    truncated = b"\x00\x00\x00\x01\x65\x00"  # IDR slice whose first_mb_in_slice never ends
    with pytest.raises(VideoFrameError, match="first_mb_in_slice"):
        check_access_unit(truncated)
