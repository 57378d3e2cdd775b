"""Camera stand-ins: video files and rosbag2 (mcap, sqlite3) read as RGB frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from stac_encoder.frame_sources import SourceError, read_frames

RNG = np.random.default_rng(5)


def write_bag(path, frames_rgb, encoding: str, storage: StoragePlugin) -> None:
    typestore = get_typestore(Stores.ROS2_JAZZY)
    image_type = typestore.types["sensor_msgs/msg/Image"]
    header_type = typestore.types["std_msgs/msg/Header"]
    time_type = typestore.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=storage) as writer:
        other = writer.add_connection("/other/image", image_type.__msgtype__, typestore=typestore)
        camera = writer.add_connection("/camera/image", image_type.__msgtype__, typestore=typestore)
        for index, rgb in enumerate(frames_rgb):
            pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
            msg = image_type(
                header=header_type(stamp=time_type(sec=index, nanosec=0), frame_id="cam"),
                height=rgb.shape[0],
                width=rgb.shape[1],
                encoding=encoding,
                is_bigendian=0,
                step=rgb.shape[1] * 3,
                data=np.ascontiguousarray(pixels).reshape(-1),
            )
            raw = typestore.serialize_cdr(msg, image_type.__msgtype__)
            timestamp_ns = 1_000_000_000 + index * 100_000_000
            writer.write(camera, timestamp_ns, raw)
            writer.write(other, timestamp_ns, typestore.serialize_cdr(msg, image_type.__msgtype__))


@pytest.mark.parametrize(
    ("encoding", "storage"),
    [("rgb8", StoragePlugin.MCAP), ("bgr8", StoragePlugin.SQLITE3)],
)
def test_bag_frames_come_out_rgb_with_recorded_offsets(tmp_path, encoding, storage):
    frames = [RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8) for _ in range(3)]
    write_bag(tmp_path / "bag", frames, encoding, storage)
    out = list(read_frames(str(tmp_path / "bag"), bag_topic="/camera/image"))
    assert [f.index for f in out] == [0, 1, 2]
    assert [round(f.offset_s, 3) for f in out] == [0.0, 0.1, 0.2]
    for got, expected in zip(out, frames, strict=True):
        np.testing.assert_array_equal(got.image, expected)


def test_bag_without_the_topic_is_a_clear_error(tmp_path):
    write_bag(tmp_path / "bag", [np.zeros((2, 2, 3), np.uint8)], "rgb8", StoragePlugin.MCAP)
    with pytest.raises(SourceError, match="/missing"):
        list(read_frames(str(tmp_path / "bag"), bag_topic="/missing"))


def test_video_file_frames_and_limit(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 16))
    for value in range(5):
        writer.write(np.full((16, 32, 3), (value * 40, 0, 255 - value * 40), np.uint8))
    writer.release()
    out = list(read_frames(str(path), max_frames=3))
    assert [f.index for f in out] == [0, 1, 2]
    assert [f.offset_s for f in out] == [0.0, 0.05, 0.1]
    assert out[0].image.shape == (16, 32, 3)
    red, _, blue = out[0].image[8, 16].astype(int)  # written as BGR (0, 0, 255): pure red
    assert red > 200 and blue < 60


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        list(read_frames(str(tmp_path / "nothing.mp4")))
