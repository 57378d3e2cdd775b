"""Pixels of Image-shaped messages as numpy, without cv_bridge (not available as a wheel).

Plain Python: the readers take anything with sensor_msgs/Image's fields (an rclpy message, or
one that `rosbags` deserialised from a bag), so bag readers use them without ROS. Like
cv_bridge's core, this module knows nothing of nodes: it converts message fields and raises one
domain exception, `ImageConversionError`, with a message naming the problem. It also holds the
fast path for filling `uint8[]` message fields (see `to_uint8_field`);
`stac_ros_common.image_conversion` builds sensor_msgs/Image messages from arrays.
"""

from __future__ import annotations

import array

import numpy as np

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
    """A read-only uint8 view of a deserialized `uint8[]` field (array.array, bytes, a numpy
    array or a list); ImageConversionError for anything else (or list items outside 0..255)."""
    try:
        if isinstance(field, list):
            return np.asarray(field, dtype=np.uint8)
        if isinstance(field, np.ndarray):
            return np.ascontiguousarray(field).reshape(-1).view(np.uint8)
        return np.frombuffer(field, dtype=np.uint8)
    except (TypeError, ValueError, OverflowError) as error:
        raise ImageConversionError(f"image data is not a uint8 buffer: {error}") from error


def image_to_numpy(msg) -> np.ndarray:
    """Pixels of `msg` as HxWxC (C = 3) or HxW (mono8) uint8, honouring row padding (step).

    The returned array is a copy the caller may modify; the channel order is the message's
    (`msg.encoding` tells rgb8 from bgr8).
    """
    encoding = msg.encoding
    channels = CHANNELS_BY_ENCODING.get(encoding) if isinstance(encoding, str) else None
    if channels is None:
        raise ImageConversionError(
            f"unsupported image encoding '{encoding}'; "
            f"supported: {', '.join(sorted(CHANNELS_BY_ENCODING))}"
        )
    sizes = (msg.height, msg.width, msg.step)
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in sizes):
        raise ImageConversionError(f"height, width and step must be integers, got {sizes}")
    height, width, step = (int(v) for v in sizes)
    row_bytes = width * channels
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width*channels = {row_bytes} for {msg.encoding}"
        )
    # Sizes are checked against the bytes that arrived before anything is allocated: a forged
    # height or step cannot make this allocate more than the message holds.
    data = field_as_numpy(msg.data)
    if data.size < step * height:
        raise ImageConversionError(
            f"image data has {data.size} bytes, expected step*height = {step * height}"
        )
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels) if channels > 1 else rows
    return np.array(pixels, copy=True)


def image_to_rgb(msg) -> np.ndarray:
    """Pixels of an rgb8, bgr8 or mono8 message as HxWx3 RGB uint8."""
    pixels = image_to_numpy(msg)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[..., ::-1])
    if msg.encoding == "mono8":
        return np.repeat(pixels[..., None], 3, axis=2)
    return pixels
