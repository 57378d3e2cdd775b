"""Camera stand-ins: video files and rosbag2 (mcap, sqlite3) read as RGB frames."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from stac_encoder.frame_sources import SourceError, SourceStats, read_frames

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


# --- Damaged sources: SourceError with a clear message, never a rosbags or OpenCV exception. ---


def write_image_bag(path, messages, storage=StoragePlugin.MCAP) -> None:
    """A bag whose /camera/image holds `messages`: (encoding, HxWxC pixels) pairs."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    image_type = typestore.types["sensor_msgs/msg/Image"]
    header_type = typestore.types["std_msgs/msg/Header"]
    time_type = typestore.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=9, storage_plugin=storage) as writer:
        camera = writer.add_connection("/camera/image", image_type.__msgtype__, typestore=typestore)
        for index, (encoding, pixels) in enumerate(messages):
            data = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
            msg = image_type(
                header=header_type(stamp=time_type(sec=index, nanosec=0), frame_id="cam"),
                height=pixels.shape[0],
                width=pixels.shape[1],
                encoding=encoding,
                is_bigendian=0,
                step=data.size // pixels.shape[0],
                data=data,
            )
            raw = typestore.serialize_cdr(msg, image_type.__msgtype__)
            writer.write(camera, 1_000_000_000 + index * 100_000_000, raw)


def rgb(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_unsupported_images_are_skipped_and_counted(tmp_path):
    depth = np.full((4, 6), 1000, np.uint16)
    write_image_bag(
        tmp_path / "bag",
        [
            ("rgb8", rgb(10)),
            ("16UC1", depth),
            ("rgb8", rgb(20)),
            ("16UC1", depth),
            ("rgb8", rgb(30)),
        ],
    )
    stats = SourceStats()
    out = list(read_frames(str(tmp_path / "bag"), stats=stats))
    assert [f.index for f in out] == [0, 1, 2]
    assert [int(f.image[0, 0, 0]) for f in out] == [10, 20, 30]
    assert [round(f.offset_s, 3) for f in out] == [0.0, 0.2, 0.4]  # recorded times kept
    assert stats.frames == 3 and stats.skipped == 2
    assert stats.skip_reasons == {"unsupported image encoding '16UC1'": 2}


def test_a_topic_without_a_single_usable_image_is_an_error(tmp_path):
    write_image_bag(tmp_path / "bag", [("16UC1", np.zeros((4, 6), np.uint16))] * 2)
    with pytest.raises(SourceError, match="no usable image.*2 x unsupported image encoding"):
        list(read_frames(str(tmp_path / "bag")))


def test_a_message_that_does_not_deserialize_is_skipped(tmp_path):
    typestore = get_typestore(Stores.ROS2_JAZZY)
    image_type = typestore.types["sensor_msgs/msg/Image"]
    with Writer(tmp_path / "bag2", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection("/camera/image", image_type.__msgtype__, typestore=typestore)
        writer.write(camera, 1, b"\x00\x01\x00\x00" + b"\xff" * 7)  # a length far past the end
        writer.write(camera, 2, b"\x00\x01\x00\x00\x01\x02\x03")  # ends inside the header
    stats = SourceStats()
    with pytest.raises(SourceError, match="no usable image"):
        list(read_frames(str(tmp_path / "bag2"), stats=stats))
    assert stats.skipped == 2
    assert all("does not deserialize" in reason for reason in stats.skip_reasons)


@pytest.mark.parametrize(
    "damage",
    ["truncated-mcap", "garbage-metadata", "metadata-missing-keys", "random-mcap", "stray-db3"],
)
def test_damaged_bags_raise_source_error(tmp_path, damage):
    write_bag(tmp_path / "bag", [np.zeros((2, 2, 3), np.uint8)] * 3, "rgb8", StoragePlugin.MCAP)
    mcap = tmp_path / "bag" / "bag.mcap"
    uri = tmp_path / "bag"
    if damage == "truncated-mcap":
        mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    elif damage == "garbage-metadata":
        (uri / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2\n")
    elif damage == "metadata-missing-keys":
        (uri / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    elif damage == "random-mcap":
        uri = tmp_path / "x.mcap"
        uri.write_bytes(RNG.integers(0, 256, 300, dtype=np.uint8).tobytes())
    else:
        (tmp_path / "lone").mkdir()
        uri = tmp_path / "lone" / "x.db3"
        uri.write_bytes(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(SourceError, match=str(uri.name)):
        list(read_frames(str(uri)))


def write_mp4(path, count: int) -> None:
    """An H.264 mp4 with its index (moov) in front, as streaming tools write them."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(count):
            image = np.full((48, 64, 3), (index * 8) % 256, np.uint8)
            image[:, index % 64] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_truncated_mp4_is_reported_after_its_last_readable_frame(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, 60)
    stats = SourceStats()
    assert len(list(read_frames(str(path), stats=stats))) == 60 and not stats.truncated
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    stats = SourceStats()
    frames = []
    with pytest.raises(SourceError, match=r"ended after \d+ of the 60 frames"):
        for frame in read_frames(str(path), stats=stats):
            frames.append(frame)
    assert 0 < len(frames) < 60 and stats.frames == len(frames)
    assert stats.truncated and "60" in stats.message
    # Stopping early on purpose is not truncation.
    assert len(list(read_frames(str(path), max_frames=5))) == 5


def test_an_mp4_without_its_index_cannot_be_opened(tmp_path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:  # moov at the end: cut off by truncation
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(SourceError, match="cannot open"):
        list(read_frames(str(path)))
