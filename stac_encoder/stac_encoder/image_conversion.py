"""sensor_msgs/Image <-> numpy without cv_bridge (not available as a wheel).

Like cv_bridge's core, this module knows nothing of nodes: it converts message fields and
raises one domain exception, `ImageConversionError`, with a message naming the problem.
It also holds the fast path for filling `uint8[]` message fields (see `to_uint8_field`).
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

# encoding -> channels; all are 8 bits per channel.
CHANNELS_BY_ENCODING = {"rgb8": 3, "bgr8": 3, "mono8": 1}


class ImageConversionError(ValueError):
    """The message or array cannot be converted (unsupported encoding, bad sizes)."""


def to_uint8_field(buffer: bytes | bytearray | memoryview | np.ndarray) -> array.array:
    """Wrap bytes for a `uint8[]` message field.

    On Jazzy, assigning `bytes` costs ~21 ms/MB in serialization; `array.array('B')` ~0.5 ms/MB.
    """
    if isinstance(buffer, np.ndarray):
        buffer = np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1)
    field = array.array("B")
    field.frombytes(memoryview(buffer).cast("B"))  # one memcpy; array('B', view) iterates
    return field


def field_as_numpy(field) -> np.ndarray:
    """A read-only uint8 view of a deserialized `uint8[]` field (array.array, bytes or list)."""
    if isinstance(field, list):
        return np.asarray(field, dtype=np.uint8)
    return np.frombuffer(field, dtype=np.uint8)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Pixels of `msg` as HxWxC (C = 3) or HxW (mono8) uint8, honouring row padding (step).

    The returned array is a copy the caller may modify; the channel order is the message's
    (`msg.encoding` tells rgb8 from bgr8).
    """
    channels = CHANNELS_BY_ENCODING.get(msg.encoding)
    if channels is None:
        raise ImageConversionError(
            f"unsupported image encoding '{msg.encoding}'; "
            f"supported: {', '.join(sorted(CHANNELS_BY_ENCODING))}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*channels = {row_bytes} for {msg.encoding}"
        )
    data = field_as_numpy(msg.data)
    if data.size < step * height:
        raise ImageConversionError(
            f"image data has {data.size} bytes, expected step*height = {step * height}"
        )
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels) if channels > 1 else rows
    return np.array(pixels, copy=True)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Pixels of an rgb8, bgr8 or mono8 message as HxWx3 RGB uint8."""
    pixels = image_to_numpy(msg)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[..., ::-1])
    if msg.encoding == "mono8":
        return np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def numpy_to_image(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """An Image message holding `pixels` (HxWx3 for rgb8/bgr8, HxW or HxWx1 for mono8)."""
    channels = CHANNELS_BY_ENCODING.get(encoding)
    if channels is None:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}'; "
            f"supported: {', '.join(sorted(CHANNELS_BY_ENCODING))}"
        )
    if pixels.dtype != np.uint8:
        raise ImageConversionError(f"pixels must be uint8, got {pixels.dtype}")
    if channels == 1 and pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if pixels.ndim != expected_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ImageConversionError(
            f"{encoding} needs an array of shape "
            f"{'HxW' if channels == 1 else f'HxWx{channels}'}, got {pixels.shape}"
        )
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = to_uint8_field(pixels)
    return msg
