"""The masks' wire forms: every coding round-trips (exactly where it is lossless, within its
promise where it is not), and a decoder of outside bytes that only ever raises MaskWireError
(never allocates what a forged header asks for)."""

from __future__ import annotations

import contextlib
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stac_codec.mask_wire import (
    ENCODING_NAME,
    FLAG_REFERENCED,
    FLAGS_OFFSET,
    MASK_CODINGS,
    RLE_DEFLATE_ENCODING,
    MaskCoding,
    MaskReceiver,
    MaskReferenceError,
    MaskSender,
    MaskWireError,
    decode_mask,
    decode_mask_or_keep,
    encode_keep,
    encode_mask,
    encode_mask_and_decoded,
    encoding_of,
    is_keep,
    is_numbered,
    mask_coding,
    mask_size,
    reduced_size,
)

V2_HEADER = struct.Struct(">BBHHHHB")


def street_like(height: int = 270, width: int = 480, seed: int = 0) -> np.ndarray:
    """Bands (sky, buildings, road) with slanted, curved boundaries and a few small objects:
    what masks look like."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    mask = np.zeros((height, width), np.uint8)
    mask[rows > height / 3 + 12 * np.sin(cols / 40.0)] = 1
    mask[rows > 2 * height / 3 - cols / 8] = 3
    for _ in range(12):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 30)
        mask[y : y + rng.integers(5, 20), x : x + rng.integers(3, 30)] = rng.integers(4, 11)
    return mask


def _v2(mode, width, height, coded_width, coded_height, stream: bytes, flags=0) -> bytes:
    body = V2_HEADER.pack(2, mode, width, height, coded_width, coded_height, flags) + stream
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("coding", sorted(MASK_CODINGS))
def test_every_coding_round_trips_to_what_the_encoder_promised(coding):
    mask = street_like()
    data, promised = encode_mask_and_decoded(mask, coding)
    assert encoding_of(data) == MASK_CODINGS[coding].encoding
    assert mask_size(data) == (480, 270)
    decoded = decode_mask(data, max_pixels=mask.size)
    np.testing.assert_array_equal(decoded, promised)
    if MASK_CODINGS[coding].lossless:
        np.testing.assert_array_equal(decoded, mask)
    else:
        assert (decoded == mask).mean() > 0.97
    assert len(data) < mask.size / 100  # far below raw mono8


def test_context_coding_is_smaller_than_run_length_and_deflate():
    mask = street_like()
    assert len(encode_mask(mask, "lossless")) < len(encode_mask(mask, "rle_deflate"))
    assert len(encode_mask(mask, "near_lossless")) <= len(encode_mask(mask, "lossless"))


def test_near_lossless_moves_only_large_boundaries_and_by_at_most_its_tolerance():
    mask = street_like()
    coding = mask_coding("near_lossless")
    decoded = decode_mask(encode_mask(mask, coding), max_pixels=mask.size)
    counts = np.bincount(mask.ravel(), minlength=256)
    small = np.flatnonzero((counts > 0) & (counts < coding.protected_share * mask.size))
    assert len(small) > 0
    assert np.array_equal(np.isin(decoded, small), np.isin(mask, small))  # small classes exact
    tolerance = coding.tolerance_px
    padded = np.pad(mask, tolerance, mode="edge")
    for y, x in zip(*np.nonzero(decoded != mask), strict=True):
        window = padded[y : y + 2 * tolerance + 1, x : x + 2 * tolerance + 1]
        assert decoded[y, x] in window  # the class it took is within the tolerance


def test_reduced_masks_travel_smaller_and_come_back_full_size():
    mask = street_like()
    data = encode_mask(mask, "reduced")
    _, _, width, height, coded_width, coded_height, _ = V2_HEADER.unpack_from(data)
    assert (width, height) == (480, 270)
    assert (coded_width, coded_height) == reduced_size(480, 270, 2) == (240, 135)
    assert decode_mask(data, max_pixels=mask.size).shape == (270, 480)


@pytest.mark.parametrize("coding", sorted(MASK_CODINGS))
@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((1, 1), np.uint8),
        np.full((3000, 3000), 7, np.uint8),  # one run longer than three varint bytes hold
        np.random.default_rng(1).integers(0, 255, (33, 17)).astype(np.uint8),
        np.random.default_rng(2).integers(0, 2, (7, 300)).astype(np.uint8) * 255,
    ],
    ids=["one_pixel", "one_long_run", "noise", "ids_0_and_255"],
)
def test_edge_cases_round_trip(coding, mask):
    data, promised = encode_mask_and_decoded(mask, coding)
    np.testing.assert_array_equal(decode_mask(data, max_pixels=mask.size), promised)
    if MASK_CODINGS[coding].lossless:
        np.testing.assert_array_equal(promised, mask)


def test_damage_and_forgery_are_refused():
    data = bytearray(encode_mask(street_like(), "rle_deflate"))
    data[20] ^= 0x10
    with pytest.raises(MaskWireError, match="checksum"):
        decode_mask(bytes(data), max_pixels=480 * 270)
    # a valid checksum over a header that promises a huge mask: refused before allocating
    body = struct.pack(">BHHI", 1, 16384, 16384, 1) + zlib.compress(b"\x00" + b"\xff\xff\x7f")
    forged = body + struct.pack(">I", zlib.crc32(body))
    with pytest.raises(MaskWireError, match="larger than"):
        decode_mask(forged, max_pixels=4096 * 4096)
    with pytest.raises(MaskWireError, match="do not cover"):
        decode_mask(forged, max_pixels=16384 * 16384)
    with pytest.raises(ValueError):
        encode_mask(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="choose one of"):
        encode_mask(np.zeros((4, 4), np.uint8), "jpeg")


def test_forged_version_2_headers_are_refused():
    stream = encode_mask(np.zeros((48, 64), np.uint8), "lossless")[V2_HEADER.size : -4]
    with pytest.raises(MaskWireError, match="larger than"):
        decode_mask(_v2(1, 16384, 16384, 16384, 16384, stream), max_pixels=64 * 48)
    with pytest.raises(MaskWireError, match="mode 9"):
        decode_mask(_v2(9, 64, 48, 64, 48, stream), max_pixels=64 * 48)
    with pytest.raises(MaskWireError, match="coded size"):
        decode_mask(_v2(2, 64, 48, 65, 48, stream), max_pixels=64 * 48)
    with pytest.raises(MaskWireError, match="coded size is not its size"):
        decode_mask(_v2(1, 64, 48, 32, 24, stream), max_pixels=64 * 48)
    with pytest.raises(MaskWireError, match="damaged"):
        decode_mask(_v2(1, 64, 48, 64, 48, stream[:1]), max_pixels=64 * 48)
    with pytest.raises(MaskWireError, match="version 3"):
        mask_size(bytes([3]) + bytes(20))


def test_encodings_name_the_versions():
    assert encoding_of(encode_mask(street_like(), "rle_deflate")) == RLE_DEFLATE_ENCODING
    assert encoding_of(encode_mask(street_like(), "lossless")) == ENCODING_NAME


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_random_bytes_only_raise_mask_wire_error(payload, runs, mode):
    framed = (payload, _with_valid_frame(payload, runs), _v2(mode, 64, 48, 64 // 2, 48, payload))
    for data in framed:
        with contextlib.suppress(MaskWireError):
            decode_mask(data, max_pixels=64 * 48)


def _with_valid_frame(payload: bytes, runs: int) -> bytes:
    body = struct.pack(">BHHI", 1, 64, 48, runs) + payload
    return body + struct.pack(">I", zlib.crc32(body))


# --- near_lossless_gated: keeps instead of masks that changed little ---------------------------


def _moved(mask: np.ndarray, shift: int) -> np.ndarray:
    return np.roll(mask, shift, axis=1)


def test_a_gated_sender_keeps_a_mask_that_did_not_change_at_most_max_kept_in_a_row():
    coding = MASK_CODINGS["near_lossless_gated"]
    assert coding.gated and not coding.lossless
    sender = MaskSender(coding)
    mask = street_like()
    kinds = []
    for _ in range(2 * (coding.max_kept + 1)):
        data, decoded = sender.encode_and_decoded(mask)
        kept = decode_mask_or_keep(data, max_pixels=mask.size)
        assert (kept is None) == (decoded is None) == is_keep(data)
        kinds.append("keep" if kept is None else "mask")
        if kept is not None:
            np.testing.assert_array_equal(kept, decoded)
    assert kinds == (["mask"] + ["keep"] * coding.max_kept) * 2
    assert len(encode_keep(480, 270)) == 15
    assert mask_size(encode_keep(480, 270)) == (480, 270)


def test_a_gated_sender_sends_a_mask_that_changed_and_after_a_reset():
    sender = MaskSender("near_lossless_gated")
    mask = street_like()
    assert not is_keep(sender.encode(mask))
    assert not is_keep(sender.encode(_moved(mask, 40)))  # everything moved: the mask goes
    sender.reset()
    assert not is_keep(sender.encode(_moved(mask, 40)))  # same mask, but after a reset
    assert sender.change(mask, mask) == 0.0
    assert (
        sender.change(mask, _moved(mask, 40))
        > MASK_CODINGS["near_lossless_gated"].keep_below_change
    )


def test_an_ungated_sender_sends_every_mask_as_encode_mask_does():
    sender = MaskSender("near_lossless")
    mask = street_like()
    for _ in range(3):
        assert sender.encode(mask) == encode_mask(mask, "near_lossless")


def test_a_keep_carries_no_mask_and_a_malformed_one_is_refused():
    keep = encode_keep(64, 48)
    assert decode_mask_or_keep(keep, max_pixels=64 * 48) is None
    with pytest.raises(MaskWireError, match="keep"):
        decode_mask(keep, max_pixels=64 * 48)  # the plain decoder wants a mask
    with pytest.raises(MaskWireError, match="larger"):
        decode_mask_or_keep(keep, max_pixels=64 * 48 - 1)
    for forged in (
        _v2(3, 64, 48, 64, 48, b""),
        _v2(3, 64, 48, 0, 0, b"\x00"),
        _v2(3, 64, 48, 0, 0, b"", 1),
    ):
        with pytest.raises(MaskWireError, match="nothing but its header"):
            decode_mask_or_keep(forged, max_pixels=64 * 48)
    damaged = bytearray(keep)
    damaged[3] ^= 1
    with pytest.raises(MaskWireError):
        decode_mask_or_keep(bytes(damaged), max_pixels=64 * 48)


# --- numbered masks coded against a reference (near_lossless_ref, near_lossless_keyref) ------

REFERENCED_CODINGS = ("near_lossless_ref", "near_lossless_keyref")


def _walking(count: int) -> list[np.ndarray]:
    """A street whose small objects move a pixel a mask: most of each mask as before."""
    base = street_like()
    masks = []
    for step in range(count):
        mask = base.copy()
        mask[100:130, 60 + step : 75 + step] = 9  # a walker
        masks.append(mask)
    return masks


def _referenced(data: bytes) -> bool:
    return is_numbered(data) and bool(data[FLAGS_OFFSET] & FLAG_REFERENCED)


@pytest.mark.parametrize("coding", REFERENCED_CODINGS)
def test_numbered_masks_round_trip_with_a_key_mask_every_key_interval(coding):
    chosen = mask_coding(coding, key_interval=3)
    assert chosen.referenced and chosen.key_interval == 3 and not chosen.lossless
    sender, receiver = MaskSender(chosen), MaskReceiver()
    masks = _walking(7)
    wire = []
    for mask in masks:
        data, promised = sender.encode_and_decoded(mask)
        decoded = receiver.decode(data, max_pixels=mask.size)
        np.testing.assert_array_equal(decoded, promised)
        assert (decoded == mask).mean() > 0.97
        assert encoding_of(data) == ENCODING_NAME and mask_size(data) == (480, 270)
        wire.append(data)
    assert [_referenced(data) for data in wire] == [False, True, True] * 2 + [False]
    assert [struct.unpack_from(">I", data, V2_HEADER.size)[0] for data in wire] == list(range(7))
    # what referencing is for: a mask mostly as before costs a fraction of one coded alone
    assert len(wire[1]) < 0.5 * len(encode_mask(masks[1], "near_lossless"))


@pytest.mark.parametrize("coding", REFERENCED_CODINGS)
def test_a_key_mask_decodes_alone_and_a_referenced_one_needs_its_reference(coding):
    sender = MaskSender(coding)
    masks = _walking(2)
    key, referenced = sender.encode(masks[0]), sender.encode(masks[1])
    assert not _referenced(key) and _referenced(referenced)
    assert decode_mask(key, max_pixels=masks[0].size).shape == (270, 480)
    with pytest.raises(MaskReferenceError, match="no mask is held") as refused:
        decode_mask(referenced, max_pixels=masks[0].size)
    assert refused.value.reason == "no_reference"
    with pytest.raises(MaskReferenceError) as refused:
        MaskReceiver().decode(referenced, max_pixels=masks[0].size)
    assert refused.value.reason == "no_reference"
    with pytest.raises(MaskWireError, match="larger"):  # the pixel budget comes first
        MaskReceiver().decode(referenced, max_pixels=masks[0].size - 1)


def test_a_referenced_mask_is_refused_unless_the_robot_holds_exactly_its_reference():
    masks = _walking(4)
    sender, receiver = MaskSender("near_lossless_ref"), MaskReceiver()
    wire = [sender.encode(mask) for mask in masks]
    receiver.decode(wire[0], max_pixels=masks[0].size)  # mask 1 is missed
    for data in wire[2:]:  # each names the one before: refused until a key mask
        with pytest.raises(MaskReferenceError, match="the masks held: 0") as refused:
            receiver.decode(data, max_pixels=masks[0].size)
        assert refused.value.reason == "reference_mismatch"
    # another edge's mask 0 differs: the same number, another CRC32, refused too
    other = MaskSender("near_lossless_ref")
    other.encode(_moved(masks[0], 3))
    stranger = other.encode(_moved(masks[1], 3))
    assert _referenced(stranger) and struct.unpack_from(">III", stranger, V2_HEADER.size)[1] == 0
    with pytest.raises(MaskReferenceError, match="coded against mask 0"):
        receiver.decode(stranger, max_pixels=masks[0].size)
    sender.reset()  # a keyframe request: the next mask goes alone and the robot recovers
    recovered = sender.encode(masks[3])
    assert not _referenced(recovered)
    assert receiver.decode(recovered, max_pixels=masks[0].size) is not None
    assert receiver.decode(sender.encode(masks[2]), max_pixels=masks[0].size) is not None


def test_a_keyref_robot_that_missed_a_mask_decodes_the_next_one():
    masks = _walking(4)
    sender, receiver = MaskSender("near_lossless_keyref"), MaskReceiver()
    wire = [sender.encode(mask) for mask in masks]
    assert [_referenced(data) for data in wire] == [False, True, True, True]
    for index in (0, 2, 3):  # mask 1 is missed; the others name the key mask 0
        receiver.decode(wire[index], max_pixels=masks[0].size)


def test_an_unnumbered_mask_clears_the_references():
    masks = _walking(3)
    sender, receiver = MaskSender("near_lossless_ref"), MaskReceiver()
    receiver.decode(sender.encode(masks[0]), max_pixels=masks[0].size)
    receiver.decode(encode_mask(masks[1], "near_lossless"), max_pixels=masks[0].size)
    with pytest.raises(MaskReferenceError) as refused:
        receiver.decode(sender.encode(masks[1]), max_pixels=masks[0].size)
    assert refused.value.reason == "no_reference"
    assert receiver.decode(encode_keep(480, 270), max_pixels=masks[0].size) is None


def test_forged_numbered_masks_are_refused():
    mask = _walking(1)[0]
    key = MaskSender("near_lossless_ref").encode(mask)
    body = bytearray(key[:-4])
    names_a_reference = bytearray(body)
    names_a_reference[V2_HEADER.size + 4 : V2_HEADER.size + 12] = struct.pack(">II", 3, 7)
    unknown_flag = bytearray(body)
    unknown_flag[FLAGS_OFFSET] |= 0x80
    other_coded_size = bytearray(body)
    other_coded_size[7:9] = struct.pack(">H", 240)
    short = body[: V2_HEADER.size + 5]
    for forged, match in (
        (names_a_reference, "names a reference"),
        (unknown_flag, "flags"),
        (other_coded_size, "coded size"),
        (short, "shorter than its numbers"),
    ):
        data = bytes(forged) + struct.pack(">I", zlib.crc32(bytes(forged)))
        with pytest.raises(MaskWireError, match=match):
            MaskReceiver().decode(data, max_pixels=mask.size)


def test_a_referenced_coding_is_full_resolution_v2_without_keeps():
    with pytest.raises(ValueError, match="full-resolution"):
        MaskCoding("x", reduction=2, key_interval=4)
    with pytest.raises(ValueError, match="reference"):
        MaskCoding("x", key_interval=4, reference="older")
    with pytest.raises(ValueError, match="key_interval"):
        mask_coding("near_lossless_ref", key_interval=0)
    assert mask_coding("near_lossless", key_interval=5) == MASK_CODINGS["near_lossless"]


def test_a_referenced_coding_with_an_extension_built_before_references_fails_at_once(
    monkeypatch,
):
    import stac_codec.mask_wire as mask_wire

    assert mask_wire.REFERENCES_BUILT  # this build has them
    monkeypatch.setattr(mask_wire, "REFERENCES_BUILT", False)
    with pytest.raises(RuntimeError, match="rebuild"):
        MaskSender("near_lossless_ref")
    MaskSender("near_lossless")  # the other codings do not need them
