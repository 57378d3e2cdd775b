"""The robot's H.264 access units as `foxglove_msgs/msg/CompressedVideo`, for Foxglove and
Lichtblick.

Why a second copy of the stream in the bag: those viewers play H.264 only from that message
type (stac_msgs/EncodedFrame is opaque to them), and their players hand every message to the
browser's WebCodecs `VideoDecoder` as one `EncodedVideoChunk`, so each message must be

- Annex B from byte 0 (no `description` is passed to the decoder, so no length prefixes),
- exactly one frame (one chunk in, one picture out; two pictures in a chunk break the count
  and the timestamps),
- self-contained at every IDR: SPS and PPS in front of the IDR slice (a player that seeks
  starts decoding at the nearest IDR and has seen no other parameter sets),
- free of B-frames (the players show decoder outputs in message order, with the message's
  timestamp).

`stac_codec.h264_encoder` already writes such access units (zero latency, repeat-headers);
`check_access_unit` verifies it for every message instead of trusting it.

There is no foxglove_msgs wheel: the .msg text below is registered with the rosbags typestore
(`register_compressed_video`). No ROS imports here (the architecture test keeps cores
ROS-free): the recorder node passes the EncodedFrame's fields in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rosbags.typesys import get_types_from_msg
from rosbags.typesys.store import Typestore

from stac_codec.annexb import (
    NAL_TYPE_PPS,
    NAL_TYPE_SLICE_IDR,
    NAL_TYPE_SPS,
    NalUnit,
    split_nal_units,
)
from stac_codec.h264_syntax import (
    SLICE_B,
    SLICE_I,
    SLICE_P,
    SLICE_SI,
    SLICE_SP,
    SyntaxCheckError,
    slice_start,
)

VIDEO_TOPIC = "/stac/video"
COMPRESSED_VIDEO_TYPE = "foxglove_msgs/msg/CompressedVideo"
# Field order and types as in foxglove_msgs (ros-foxglove-msgs) and the Foxglove schema; the
# order is the CDR layout, so it must not change.
COMPRESSED_VIDEO_MSG = """\
# A single frame of a compressed video bitstream

# Timestamp of video frame
builtin_interfaces/Time timestamp

# Frame of reference for the video.
string frame_id

# Compressed video frame data (for h264: Annex B, one frame per message)
uint8[] data

# Video format: h264, h265, vp9 or av1
string format
"""
H264_FORMAT = "h264"

NAL_TYPE_AUD = 9
# NAL units that open a new access unit when they follow a picture's slices (H.264 7.4.1.2.3).
_ACCESS_UNIT_OPENERS = frozenset({6, 7, 8, 9, 14, 15, 16, 17, 18})
_SLICE_TYPE_NAMES = {SLICE_P: "P", SLICE_B: "B", SLICE_I: "I", SLICE_SP: "SP", SLICE_SI: "SI"}


class VideoFrameError(ValueError):
    """An access unit that Foxglove/Lichtblick (WebCodecs) would not play as one frame."""


@dataclass(frozen=True)
class PlayableFrame:
    """What `check_access_unit` found in one access unit a viewer can play.

    keyframe: holds an IDR (a player may start decoding here); slice_types: the slices'
    types ("I", "P", ...) in order; codec: the WebCodecs codec string from the SPS
    ("avc1.PPCCLL"), or None when the access unit carries no SPS.
    """

    keyframe: bool
    slice_types: tuple[str, ...]
    codec: str | None


def register_compressed_video(typestore: Typestore) -> None:
    """Add foxglove_msgs/msg/CompressedVideo to a rosbags typestore (no-op when present)."""
    typestore.register(get_types_from_msg(COMPRESSED_VIDEO_MSG, COMPRESSED_VIDEO_TYPE))


def avc_codec_string(sps: NalUnit) -> str:
    """The WebCodecs/RFC 6381 codec string of an SPS: "avc1." + profile_idc, the constraint
    flags byte and level_idc in hex, as Foxglove and Lichtblick build it to configure the
    decoder."""
    if sps.nal_type != NAL_TYPE_SPS:
        raise ValueError(f"NAL unit type {sps.nal_type} is not an SPS")
    head = sps.rbsp(3)
    if len(head) < 3:
        raise VideoFrameError("SPS too short for profile, constraint flags and level")
    return "avc1." + head.hex().upper()


def check_access_unit(data: bytes) -> PlayableFrame:
    """Check that `data` is one H.264 frame a WebCodecs player decodes as one chunk (the rules
    in the module docstring); returns what it holds. Raises VideoFrameError saying which rule
    is broken."""
    data = bytes(data)
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        raise VideoFrameError(
            f"not Annex B from byte 0: starts with {data[:4].hex(' ') or 'nothing'}, "
            "expected the start code 00 00 01 or 00 00 00 01"
        )
    try:
        units = split_nal_units(data)
    except ValueError as error:
        raise VideoFrameError(f"not a valid Annex B access unit: {error}") from error
    parameter_sets: set[int] = set()
    codec = None
    slices: list[tuple[int, int, int]] = []  # (nal type, first_mb_in_slice, slice type)
    for index, unit in enumerate(units):
        if unit.is_slice:
            try:
                first_mb, slice_type = slice_start(unit)
            except SyntaxCheckError as error:
                raise VideoFrameError(str(error)) from error
            if slices and first_mb <= slices[-1][1]:
                raise VideoFrameError(
                    f"holds more than one frame (a slice starting at macroblock {first_mb} "
                    f"follows one starting at {slices[-1][1]}); a message must hold exactly one"
                )
            slices.append((unit.nal_type, first_mb, slice_type))
            continue
        if slices and unit.nal_type in _ACCESS_UNIT_OPENERS:
            raise VideoFrameError(
                f"NAL unit {index} (type {unit.nal_type}) follows the picture's slices and so "
                "starts another access unit; a message must hold exactly one frame"
            )
        if unit.nal_type == NAL_TYPE_AUD and index != 0:
            raise VideoFrameError("an access unit delimiter in the middle of the access unit")
        if unit.nal_type in (NAL_TYPE_SPS, NAL_TYPE_PPS):
            parameter_sets.add(unit.nal_type)
            if unit.nal_type == NAL_TYPE_SPS and codec is None:
                codec = avc_codec_string(unit)
    if not slices:
        raise VideoFrameError("holds no picture (no slice NAL unit)")
    if slices[0][1] != 0:
        raise VideoFrameError(
            f"starts mid-picture: its first slice begins at macroblock {slices[0][1]}, not 0"
        )
    idr = {nal_type == NAL_TYPE_SLICE_IDR for nal_type, _, _ in slices}
    if len(idr) > 1:
        raise VideoFrameError("mixes IDR and non-IDR slices, so it is not one picture")
    keyframe = idr == {True}
    if keyframe and parameter_sets != {NAL_TYPE_SPS, NAL_TYPE_PPS}:
        missing = " and ".join(
            name
            for name, kind in (("SPS", NAL_TYPE_SPS), ("PPS", NAL_TYPE_PPS))
            if kind not in parameter_sets
        )
        raise VideoFrameError(
            f"an IDR without {missing} in front: a player starting at this keyframe "
            "could not decode it"
        )
    if any(slice_type == SLICE_B for _, _, slice_type in slices):
        raise VideoFrameError("holds a B slice; the players need a stream without B-frames")
    return PlayableFrame(
        keyframe=keyframe,
        slice_types=tuple(_SLICE_TYPE_NAMES[slice_type] for _, _, slice_type in slices),
        codec=codec,
    )


def compressed_video(
    typestore: Typestore,
    *,
    sec: int,
    nanosec: int,
    frame_id: str,
    data: bytes,
    keyframe: bool | None = None,
    codec: str = H264_FORMAT,
) -> object:
    """A foxglove_msgs/msg/CompressedVideo (a rosbags message object of `typestore`, where
    `register_compressed_video` has been called) from an EncodedFrame's fields.

    sec/nanosec: the camera capture stamp (EncodedFrame.header.stamp), so the viewer lines the
    video up with the masks, which carry the same stamp; frame_id: EncodedFrame.header.frame_id;
    keyframe: EncodedFrame.keyframe, checked against the IDR slices when given; codec:
    EncodedFrame.codec. Raises VideoFrameError when the access unit breaks a rule of the module
    docstring, or the flag or the codec disagree with it.
    """
    if codec != H264_FORMAT:
        raise VideoFrameError(f"codec '{codec}' is not supported; only '{H264_FORMAT}' is")
    data = bytes(data)
    info = check_access_unit(data)
    if keyframe is not None and keyframe != info.keyframe:
        raise VideoFrameError(
            f"the keyframe flag says {keyframe} but the access unit "
            f"{'holds' if info.keyframe else 'holds no'} IDR slice"
        )
    time_type = typestore.types["builtin_interfaces/msg/Time"]
    video_type = typestore.types[COMPRESSED_VIDEO_TYPE]
    return video_type(
        timestamp=time_type(sec=sec, nanosec=nanosec),
        frame_id=frame_id,
        data=np.frombuffer(data, dtype=np.uint8),
        format=H264_FORMAT,
    )


def compressed_video_cdr(
    typestore: Typestore,
    *,
    sec: int,
    nanosec: int,
    frame_id: str,
    data: bytes,
    keyframe: bool | None = None,
    codec: str = H264_FORMAT,
) -> bytes:
    """`compressed_video` serialised as CDR (little endian), ready for a rosbags writer."""
    message = compressed_video(
        typestore,
        sec=sec,
        nanosec=nanosec,
        frame_id=frame_id,
        data=data,
        keyframe=keyframe,
        codec=codec,
    )
    return bytes(typestore.serialize_cdr(message, COMPRESSED_VIDEO_TYPE))
