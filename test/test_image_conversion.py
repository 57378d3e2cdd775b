"""sensor_msgs/Image <-> numpy for rgb8, bgr8 and mono8, with row padding and odd widths."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from stac_ros_common.image_conversion import numpy_to_image
from stac_ros_common.image_pixels import ImageConversionError, image_to_numpy, to_uint8_field

RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    ("encoding", "shape"),
    [("rgb8", (5, 7, 3)), ("bgr8", (4, 9, 3)), ("mono8", (3, 11)), ("rgb8", (1, 1, 3))],
)
def test_round_trip_through_serialization(encoding, shape):
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    msg = numpy_to_image(pixels, encoding, Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.encoding) == (shape[0], shape[1], encoding)
    assert msg.step == shape[1] * (3 if encoding != "mono8" else 1)
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(image_to_numpy(back), pixels)
    assert back.header.frame_id == "cam"


@pytest.mark.parametrize(("encoding", "channels"), [("rgb8", 3), ("bgr8", 3), ("mono8", 1)])
def test_padded_rows_are_cropped(encoding, channels):
    """A driver may pad each row (step > width * channels): the padding must not leak in."""
    height, width, pad = 6, 13, 5
    pixels = RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)
    step = width * channels + pad
    rows = np.full((height, step), 0xEE, dtype=np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, -1)
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = to_uint8_field(rows)
    out = image_to_numpy(msg)
    expected = pixels if channels == 3 else pixels[:, :, 0]
    np.testing.assert_array_equal(out, expected)
    assert out.flags.writeable


def test_channel_order_is_kept():
    """rgb8 and bgr8 keep the message's channel order; the caller decides on swaps."""
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    for encoding in ("rgb8", "bgr8"):
        assert image_to_numpy(numpy_to_image(pixels, encoding))[0, 0, 0] == 200


@pytest.mark.parametrize("encoding", ["16UC1", "yuv422", "bayer_rggb8", "rgba8"])
def test_unsupported_encoding_is_named(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=8)
    msg.data = to_uint8_field(bytes(16))
    with pytest.raises(ImageConversionError, match=encoding):
        image_to_numpy(msg)
    with pytest.raises(ImageConversionError, match=encoding):
        numpy_to_image(np.zeros((2, 2, 3), np.uint8), encoding)


def test_truncated_data_and_bad_step_are_rejected():
    msg = Image(height=4, width=4, encoding="rgb8", step=12)
    msg.data = to_uint8_field(bytes(40))
    with pytest.raises(ImageConversionError, match="expected step\\*height = 48"):
        image_to_numpy(msg)
    msg.step = 10
    with pytest.raises(ImageConversionError, match="step 10"):
        image_to_numpy(msg)


def test_wrong_array_shape_or_dtype_is_rejected():
    with pytest.raises(ImageConversionError, match="HxWx3"):
        numpy_to_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="uint8"):
        numpy_to_image(np.zeros((4, 4, 3), np.float32), "rgb8")


@pytest.mark.parametrize(
    ("height", "width", "step", "encoding", "data"),
    [
        (-2, 4, 12, "rgb8", bytes(100)),  # used to reach reshape(-2, 12): a raw ValueError
        (2, -4, 12, "rgb8", bytes(100)),
        (2, 4, -12, "rgb8", bytes(100)),
        (2, 4, 12, ["rgb8"], bytes(100)),  # unhashable: used to raise TypeError
        (2, 4, 12, None, bytes(100)),
        (2.5, 4, 12, "rgb8", bytes(100)),
        (2, 4, 12, "rgb8", [300] * 24),  # list items outside 0..255
        (2, 4, 12, "rgb8", "not bytes"),
        (2**31, 2**31, 2**33, "rgb8", bytes(100)),  # forged sizes: refused, nothing allocated
    ],
)
def test_forged_fields_raise_image_conversion_error_only(height, width, step, encoding, data):
    msg = SimpleNamespace(height=height, width=width, step=step, encoding=encoding, data=data)
    with pytest.raises(ImageConversionError):
        image_to_numpy(msg)
