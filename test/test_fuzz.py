"""Property-based fuzzing (hypothesis) of every decoder of outside bytes.

Each target gets arbitrary and mutated input; the properties: nothing but the module's domain
error comes out (WireFormatError, MaskWireError, ImageConversionError, SourceError,
ModelConfigError, CalibrationError; the H.264 decoders raise nothing at all and report
CORRUPT), no example runs past its deadline (no hang), no forged size makes anything allocate
more than the input holds (or, for masks, the receiver's budget), and a damaged H.264 access
unit never comes out as a picture other than the undamaged one.

Reproducible in CI: derandomize=True, no example database; the example counts keep the whole
module at about a minute on two shared cores. The targets that cost more than a second (H.264,
images, frame sources, model and calibration files) are marked slow: `scripts/test.sh --fast`
runs the wire formats' fuzzing only.
"""

from __future__ import annotations

import binascii
import json
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stac_codec.h264_decoder import DecodeStatus, H264Decoder
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_codec.mask_wire import (
    MASK_CODINGS,
    MaskReceiver,
    MaskSender,
    MaskWireError,
    encode_keep,
    encode_mask,
)
from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import WireFormatError, decode_qp_map, encode_qp_map
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder
from stac_edge_segmenter.loading import DEFAULT_CONFIG, ModelConfigError, read_spec
from stac_encoder.frame_sources import SourceError, SourceStats, read_frames
from stac_eval.bitflip import clip_frames
from stac_ros_common.image_pixels import ImageConversionError, image_to_numpy, image_to_rgb
from stac_sensitivity.calibration import CalibrationError, load_calibration

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WIDTH, HEIGHT, GOP, FRAMES = 96, 64, 4, 8


# --- QPMap wire form -------------------------------------------------------------------------

BANK = (-10, -6, -3, 0, 3, 6, 10)


def _level_map(seed: int, shape=(6, 9)) -> QPLevelMap:
    indices = np.random.default_rng(seed).integers(0, len(BANK), shape, dtype=np.uint8)
    return QPLevelMap(indices, BANK, 2)


REFERENCE = _level_map(1)
KEY_BYTES = encode_qp_map(_level_map(2))
DELTA_BYTES = encode_qp_map(_level_map(2), reference=REFERENCE)


def _decode_map(data: bytes, reference: QPLevelMap | None) -> None:
    try:
        level_map = decode_qp_map(data, reference)
    except WireFormatError:
        return
    rows, cols = level_map.shape
    assert rows * cols <= len(data) * 8 * 64  # nothing far beyond what the bytes could code
    assert int(level_map.level_indices.max()) < len(level_map.levels_qp)


@settings(FUZZ, max_examples=400)
@given(data=st.binary(max_size=200), with_reference=st.booleans())
def test_qp_map_wire_random_bytes(data, with_reference):
    _decode_map(data, REFERENCE if with_reference else None)


@settings(FUZZ, max_examples=400)
@given(
    version=st.sampled_from([3, 3, 3, 0, 2, 4, 255]),
    kind=st.sampled_from([0, 1, 1, 2, 255]),
    rows=st.one_of(st.integers(0, 12), st.sampled_from([6, 1024, 1025, 65535])),
    cols=st.one_of(st.integers(0, 12), st.sampled_from([9, 136, 1024, 65535])),
    shift=st.integers(-128, 127),
    last_level=st.one_of(st.integers(0, 25), st.integers(0, 255)),
    tail=st.binary(max_size=120),
    with_reference=st.booleans(),
)
def test_qp_map_wire_forged_headers_with_valid_checksums(
    version, kind, rows, cols, shift, last_level, tail, with_reference
):
    """A forged header behind a correct CRC16 reaches the bounds checks and the arithmetic
    decoder: still only WireFormatError, and never more than MAX_MACROBLOCKS of work."""
    body = struct.pack(">BBHHbB", version, kind, rows, cols, shift, last_level) + tail
    data = body + struct.pack(">H", binascii.crc_hqx(body, 0))
    _decode_map(data, REFERENCE if with_reference else None)


@settings(FUZZ, max_examples=300)
@given(
    which=st.sampled_from(["key", "delta"]),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 200)),
    fix_checksum=st.booleans(),
)
def test_qp_map_wire_mutated_real_maps(which, edits, cut, fix_checksum):
    data = bytearray(KEY_BYTES if which == "key" else DELTA_BYTES)
    for position, xor in edits:
        data[position % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    if fix_checksum and len(data) > 2:
        data[-2:] = struct.pack(">H", binascii.crc_hqx(bytes(data[:-2]), 0))
    _decode_map(bytes(data), REFERENCE)


# --- Mask wire form (the edge's masks back to the robot) -----------------------------------

MASK_SHAPE = (48, 64)


def _real_mask() -> np.ndarray:
    """Bands with a slanted boundary and two small objects (48x64)."""
    mask = np.repeat(np.arange(6, dtype=np.uint8), 8)[:, None].repeat(64, axis=1)
    rows, cols = np.mgrid[0:48, 0:64]
    mask[rows > 20 + cols // 4] = 7
    mask[5:9, 30:33] = 9
    mask[30:44, 50:52] = 2
    return mask


def _numbered_masks() -> tuple[bytes, bytes]:
    """A key mask and a mask coded against it (near_lossless_ref), as the edge sends them."""
    sender = MaskSender("near_lossless_ref")
    moved = _real_mask()
    moved[5:9, 31:34] = 9  # the small object moved a pixel
    return sender.encode(_real_mask()), sender.encode(moved)


MASK_BYTES = {coding: encode_mask(_real_mask(), coding) for coding in sorted(MASK_CODINGS)}
MASK_BYTES["keep"] = encode_keep(MASK_SHAPE[1], MASK_SHAPE[0])  # near_lossless_gated's keep
MASK_BYTES["numbered_key"], MASK_BYTES["numbered_referenced"] = _numbered_masks()
assert MASK_BYTES["numbered_referenced"][10] & 0x02  # coded against the key mask


def _decode_robot_mask(data: bytes) -> None:
    """The robot's budget is the frame it holds: whatever the bytes declare, only
    MaskWireError comes out and nothing much beyond that budget is allocated (Python's
    allocations are traced; the C++ coder's own are a fixed model of under 1 MB and one row of
    boundary positions). The robot holds the key mask, so bytes that name it as their
    reference reach the referenced decoder."""
    budget = MASK_SHAPE[0] * MASK_SHAPE[1]
    receiver = MaskReceiver()  # what the robot calls, holding the key mask
    receiver.decode(MASK_BYTES["numbered_key"], max_pixels=budget)
    tracemalloc.start()
    try:
        mask = receiver.decode(data, max_pixels=budget)
        assert mask is None or mask.size <= budget
    except MaskWireError:
        pass
    finally:
        _, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak_bytes < 64 * budget + 4 * len(data) + 2**16


@settings(FUZZ, max_examples=300)
@given(
    version=st.sampled_from([1, 1, 1, 0, 2, 255]),
    width=st.one_of(st.integers(0, 80), st.sampled_from([64, 16384, 65535])),
    height=st.one_of(st.integers(0, 60), st.sampled_from([48, 16384, 65535])),
    runs=st.one_of(st.integers(0, 4000), st.integers(0, 2**32 - 1)),
    payload=st.binary(max_size=200),
    deflate=st.booleans(),
)
def test_mask_wire_forged_headers_with_valid_checksums(
    version, width, height, runs, payload, deflate
):
    body = struct.pack(">BHHI", version, width, height, runs)
    body += zlib.compress(payload) if deflate else payload
    _decode_robot_mask(body + struct.pack(">I", zlib.crc32(body)))


@settings(FUZZ, max_examples=300)
@given(
    mode=st.sampled_from([1, 1, 2, 2, 0, 3, 4, 4, 255]),
    width=st.one_of(st.integers(0, 80), st.sampled_from([64, 16384, 65535])),
    height=st.one_of(st.integers(0, 60), st.sampled_from([48, 16384, 65535])),
    coded=st.tuples(st.integers(0, 80), st.integers(0, 60)),
    flags=st.integers(0, 255),
    stream=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([data[11:-4] for data in MASK_BYTES.values() if data[0] == 2]),
    ),
)
def test_mask_wire_v2_forged_headers_with_valid_checksums(
    mode, width, height, coded, flags, stream
):
    body = struct.pack(">BBHHHHB", 2, mode, width, height, *coded, flags) + stream
    _decode_robot_mask(body + struct.pack(">I", zlib.crc32(body)))


KEY_NUMBERS = MASK_BYTES["numbered_referenced"][11:23]  # sequence 1, against 0 and its CRC32


@settings(FUZZ, max_examples=300)
@given(
    size=st.sampled_from([(64, 48), (64, 48), (48, 64), (65535, 65535), (0, 48)]),
    flags=st.sampled_from([0, 1, 2, 3, 3, 4, 255]),
    numbers=st.one_of(
        st.just(KEY_NUMBERS),
        st.just(bytes(12)),
        st.binary(min_size=0, max_size=14),
    ),
    stream=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([MASK_BYTES[k][23:-4] for k in ("numbered_key", "numbered_referenced")]),
    ),
)
def test_mask_wire_forged_numbered_masks_with_valid_checksums(size, flags, numbers, stream):
    """Mode 4 with any numbers, flags and streams, often naming the reference the robot
    holds, so that a forged stream runs through the referenced decoder."""
    body = struct.pack(">BBHHHHB", 2, 4, *size, *size, flags) + numbers + stream
    _decode_robot_mask(body + struct.pack(">I", zlib.crc32(body)))


@settings(FUZZ, max_examples=300)
@given(
    coding=st.sampled_from(sorted(MASK_BYTES)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 200)),
    fix_checksum=st.booleans(),
)
def test_mask_wire_mutated_real_masks(coding, edits, cut, fix_checksum):
    data = bytearray(MASK_BYTES[coding])
    for position, xor in edits:
        data[position % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    if fix_checksum and len(data) > 4:
        data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    _decode_robot_mask(bytes(data))


# --- H.264 access units through the edge's decoders -----------------------------------------


@pytest.fixture(scope="module")
def stream():
    """Clean access units (in-band checksum on, as the robot sends) and their decodes."""
    frames = clip_frames(FRAMES, WIDTH, HEIGHT, seed=3)
    with QPMapEncoder(EncoderConfig(crf=26, gop_frames=GOP), WIDTH, HEIGHT) as encoder:
        packets = [encoder.encode(frame).data for frame in frames]
    decoder = H264Decoder(WIDTH, HEIGHT)
    images = [decoder.decode(data, seq).image for seq, data in enumerate(packets, start=1)]
    assert all(image is not None for image in images)
    return packets, images


def _mutate(data: bytes, draw_ops) -> bytes:
    out = bytearray(data)
    for op, position, value in draw_ops:
        if not out:
            break
        index = position % len(out)
        if op == "flip":
            out[index] ^= 1 << (value % 8)
        elif op == "set":
            out[index] = value
        elif op == "delete":
            del out[index : index + 1 + value % 8]
        elif op == "insert":
            out[index:index] = bytes([value]) * (1 + value % 4)
        elif op == "truncate":
            del out[index:]
    return bytes(out)


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "flip", "set", "delete", "insert", "truncate"]),
        st.integers(0, 1 << 20),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=3,
)


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(target=st.integers(0, FRAMES - 1), ops=MUTATIONS)
def test_h264_mutated_access_units_never_pass_as_good(stream, target, ops):
    """A mutated access unit in a stream: no exception, and every DECODED picture from it up to
    the next IDR is exactly the undamaged one (the in-band CRC32 and the syntax checks see the
    damage; a mutation that leaves every NAL unit intact, e.g. a leading zero byte, may pass)."""
    packets, images = stream
    damaged = _mutate(packets[target], ops)
    decoder = EncodedStreamDecoder()
    next_idr = (target // GOP + 1) * GOP
    for index, data in enumerate(packets[: min(FRAMES, next_idr + 1)]):
        result = decoder.decode(damaged if index == target else data, index + 1, WIDTH, HEIGHT)
        assert isinstance(result.status, DecodeStatus)
        if result.ok and index < next_idr:
            assert np.array_equal(result.image, images[index]), (index, result)
        if index == next_idr:
            assert result.ok  # the next keyframe recovers


@settings(FUZZ, max_examples=500)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"\x00\x00\x00\x01" + b),
        st.lists(st.tuples(st.integers(0, 31), st.binary(max_size=60)), max_size=6).map(
            lambda units: b"".join(
                b"\x00\x00\x01" + bytes([0x60 | kind]) + body for kind, body in units
            )
        ),
    ),
    synced=st.booleans(),
    frame_seq=st.one_of(st.none(), st.integers(-(2**63), 2**64)),
)
@pytest.mark.slow
def test_h264_random_bytes_are_corrupt_or_waiting(stream, data, synced, frame_seq):
    packets, _ = stream
    decoder = H264Decoder(WIDTH, HEIGHT)
    if synced:
        assert decoder.decode(packets[0]).ok
    result = decoder.decode(data, frame_seq)
    assert result.status is not DecodeStatus.DECODED or data in packets


@settings(FUZZ, max_examples=200)
@given(
    width=st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([WIDTH, WIDTH - 1, 0])),
    height=st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([HEIGHT, HEIGHT - 1, 0])),
    frame_seq=st.integers(-(2**63), 2**64),
)
def test_h264_lying_declared_sizes(stream, width, height, frame_seq):
    """Declared sizes from the network: only the true one (or the odd size the encoder padded
    by one row/column) decodes; any other is CORRUPT, never an exception or a cropped picture."""
    packets, images = stream
    honest = width in (WIDTH - 1, WIDTH) and height in (HEIGHT - 1, HEIGHT)
    decoder = EncodedStreamDecoder()
    for offset, (data, image) in enumerate(zip(packets[:2], images[:2], strict=True)):
        result = decoder.decode(data, frame_seq + offset, width, height)
        assert result.ok == honest
        if result.ok:
            assert np.array_equal(result.image, image[:height, :width])


# --- sensor_msgs/Image fields ----------------------------------------------------------------

SIZES = st.one_of(st.integers(-3, 40), st.integers(-(2**40), 2**40))


@settings(FUZZ, max_examples=800)
@given(
    height=SIZES,
    width=SIZES,
    step=SIZES,
    encoding=st.one_of(
        st.sampled_from(["rgb8", "bgr8", "mono8", "16UC1", ""]), st.text(max_size=6)
    ),
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(st.integers(-2, 300), max_size=60),
        st.none(),
    ),
)
@pytest.mark.slow
def test_image_fields_raise_only_image_conversion_error(height, width, step, encoding, data):
    msg = SimpleNamespace(height=height, width=width, step=step, encoding=encoding, data=data)
    for convert in (image_to_numpy, image_to_rgb):
        try:
            pixels = convert(msg)
        except ImageConversionError:
            continue
        held = len(data)
        assert pixels.shape[:2] == (height, width)
        # never more than the message holds (x3 for mono8 shown as RGB)
        assert pixels.nbytes <= 3 * held


# --- frame sources: files from elsewhere ------------------------------------------------------


def _read_all(uri: Path) -> None:
    stats = SourceStats()
    try:
        for frame in read_frames(str(uri), stats=stats):
            assert frame.image.ndim == 3 and frame.image.shape[2] == 3
    except SourceError as error:
        assert str(error)


@pytest.fixture(scope="module")
def real_bag(tmp_path_factory):
    """A small mcap bag of three rgb8 frames: its metadata.yaml and .mcap bytes."""
    from rosbags.rosbag2 import StoragePlugin
    from test_frame_sources import write_bag

    folder = tmp_path_factory.mktemp("bag") / "bag"
    frames = [np.full((4, 6, 3), 40 * i, np.uint8) for i in range(3)]
    write_bag(folder, frames, "rgb8", StoragePlugin.MCAP)
    return (folder / "metadata.yaml").read_text(), (folder / "bag.mcap").read_bytes()


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda value: yaml.safe_dump({"rosbag2_bagfile_information": value})),
)


@settings(FUZZ, max_examples=200)
@given(
    layout=st.sampled_from(["mcap", "db3", "bag-dir", "mp4", "metadata", "mutated-mcap"]),
    payload=st.binary(max_size=400),
    metadata=YAML_TEXT,
    ops=MUTATIONS,
)
@pytest.mark.slow
def test_frame_sources_raise_only_source_error(real_bag, layout, payload, metadata, ops):
    real_metadata, real_mcap = real_bag
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        bag = root / "bag"
        bag.mkdir()
        if layout == "mcap":
            uri = root / "x.mcap"
            uri.write_bytes(payload)
        elif layout == "db3":
            (bag / "metadata.yaml").write_text(real_metadata.replace("bag.mcap", "bag.db3"))
            uri = bag / "bag.db3"
            uri.write_bytes(b"SQLite format 3\x00" + payload)
        elif layout == "bag-dir":
            (bag / "metadata.yaml").write_text(real_metadata)
            (bag / "bag.mcap").write_bytes(payload)
            uri = bag
        elif layout == "mp4":
            uri = root / "clip.mp4"
            uri.write_bytes(payload)
        elif layout == "metadata":
            (bag / "metadata.yaml").write_text(metadata)
            (bag / "bag.mcap").write_bytes(real_mcap)
            uri = bag
        else:
            (bag / "metadata.yaml").write_text(real_metadata)
            (bag / "bag.mcap").write_bytes(_mutate(real_mcap, ops))
            uri = bag
        _read_all(uri)


# --- model YAML and calibration files ---------------------------------------------------------

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
MODEL_KEYS = ["name", "kind", "weights", "classes", "palette", "normalization", "input_size"]
MODEL_KEYS += ["architecture", "options", "extra"]


@settings(FUZZ, max_examples=300)
@given(
    replaced=st.dictionaries(st.sampled_from(MODEL_KEYS), JSONISH, max_size=3),
    removed=st.lists(st.sampled_from(MODEL_KEYS), max_size=2),
    raw_text=st.one_of(st.none(), st.text(max_size=200)),
)
@pytest.mark.slow
def test_model_configurations_raise_only_model_config_error(replaced, removed, raw_text):
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.update(replaced)
    for key in removed:
        config.pop(key, None)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.yaml"
        path.write_text(raw_text if raw_text is not None else yaml.safe_dump(config))
        try:
            spec = read_spec(path)
        except ModelConfigError as error:
            assert str(error)
            return
        assert np.all(np.isfinite(spec.mean)) and min(spec.std) > 0
        assert spec.palette.shape == (len(spec.classes), 3)


CALIBRATION_KEYS = ["alpha", "max_offset_qp", "levels_qp", "smoothing_sigma_mb"]
CALIBRATION_KEYS += ["class_weights", "aq_strength", "provenance", "format", "extra"]
GOOD_CALIBRATION = {
    "format": "stac-calibration-v1",
    "alpha": 0.5,
    "max_offset_qp": 10,
    "levels_qp": [-10, -5, 0, 5, 10],
    "smoothing_sigma_mb": 0.0,
    "class_weights": None,
    "aq_strength": 0.001,
    "provenance": {},
}


@settings(FUZZ, max_examples=300)
@given(
    replaced=st.dictionaries(st.sampled_from(CALIBRATION_KEYS), JSONISH, max_size=3),
    raw_text=st.one_of(st.none(), st.text(max_size=120), st.binary(max_size=60)),
)
@pytest.mark.slow
def test_calibration_files_raise_only_calibration_error(replaced, raw_text):
    data = {**GOOD_CALIBRATION, **replaced}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.stac_calibration.json"
        if isinstance(raw_text, bytes):
            path.write_bytes(raw_text)
        else:
            path.write_text(raw_text if raw_text is not None else json.dumps(data))
        try:
            calibration = load_calibration(path)
        except CalibrationError as error:
            assert str(error)
            return
        assert np.isfinite(calibration.alpha) and np.isfinite(calibration.smoothing_sigma_mb)
