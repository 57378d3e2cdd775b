"""numpy arrays -> sensor_msgs/Image messages (the reverse direction: `image_pixels`)."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from stac_ros_common.image_pixels import CHANNELS_BY_ENCODING, ImageConversionError, to_uint8_field


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
