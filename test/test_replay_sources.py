"""What stac-replay reads and writes: clips, bags of both storage formats with Image or
CompressedImage, labels from a folder or a topic, and the clip -> bag converter."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from stac_encoder.frame_sources import SourceError, read_frames
from stac_eval.replay.bags import convert_video
from stac_eval.replay.cli import main as replay_main
from stac_eval.replay.source import bag_labels, label_folder, open_source, read_label_png

CLIP_SIZE = (128, 96)  # width, height: 8x6 macroblocks
CLIP_FPS = 10.0


def synthetic_scene(index: int, size=CLIP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """An RGB street-like frame (sky, buildings, road, a car moving right) and its class ids
    (CamVid: sky 0, building 1, road 3, car 8)."""
    width, height = size
    rng = np.random.default_rng(1000 + index)
    labels = np.zeros((height, width), np.uint8)
    labels[height // 3 : 2 * height // 3] = 1
    labels[2 * height // 3 :] = 3
    car_x = 8 + 4 * index
    labels[height // 2 : height // 2 + 24, car_x : car_x + 36] = 8
    colours = np.array(
        [[120, 160, 230], [150, 120, 100], [0, 0, 0], [90, 90, 95]]
        + [[0] * 3] * 4
        + [[200, 30, 40]],
        dtype=np.int16,
    )
    rgb = colours[labels] + rng.integers(-20, 21, (height, width, 3))
    rgb[: height // 3] += np.linspace(0, 25, height // 3, dtype=np.int16)[:, None, None]
    rgb[height // 3 : 2 * height // 3, ::8] = 60  # windows and edges: some texture to code
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


def write_clip(path: Path, count: int, fps: float = CLIP_FPS) -> Path:
    """An MJPEG AVI of `count` synthetic frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, CLIP_SIZE)
    for index in range(count):
        writer.write(cv2.cvtColor(synthetic_scene(index)[0], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_label_folder(folder: Path, indices) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        cv2.imwrite(str(folder / f"frame_{index:04d}.png"), synthetic_scene(index)[1])
    return folder


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """The shipped model at a 128x96 working resolution: the same network, fast enough for
    end-to-end tests on a CPU."""
    import yaml

    from stac_edge_segmenter.loading import DEFAULT_CONFIG, read_spec

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["weights"] = str(read_spec(DEFAULT_CONFIG).weights)
    config["input_size"] = list(CLIP_SIZE)
    path = tmp_path_factory.mktemp("model") / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.avi", 8)


def test_convert_writes_an_image_bag_that_reads_back_frame_for_frame(clip, tmp_path):
    bag = tmp_path / "bag"
    assert convert_video(str(clip), bag, topic="/cam/image_raw") == 8
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    source = open_source(str(bag))
    assert (source.kind, source.topic) == ("bag", "/cam/image_raw")
    video = list(read_frames(str(clip)))
    replayed = list(source.frames())
    assert len(replayed) == len(video) == 8
    for original, copy in zip(video, replayed, strict=True):
        np.testing.assert_array_equal(original.image, copy.image)
        assert copy.offset_s == pytest.approx(original.offset_s, abs=1e-9)
    with AnyReader([bag]) as reader:
        (connection,) = reader.connections
        assert connection.msgtype == "sensor_msgs/msg/Image"
        stamps = [
            reader.deserialize(raw, connection.msgtype).header.stamp
            for _, _, raw in reader.messages()
        ]
    assert [s.sec + s.nanosec * 1e-9 for s in stamps] == pytest.approx(
        [i / CLIP_FPS for i in range(8)]
    )


def test_convert_to_sqlite3_compressed_images_and_read_them(clip, tmp_path):
    bag = tmp_path / "compressed"
    convert_video(str(clip), bag, storage="sqlite3", compressed=True, jpeg_quality=95)
    assert list(bag.glob("*.db3"))
    source = open_source(str(bag))
    frames = list(source.frames(max_frames=5))
    video = list(read_frames(str(clip), max_frames=5))
    assert len(frames) == 5
    for original, copy in zip(video, frames, strict=True):
        assert copy.image.shape == original.image.shape
        assert np.abs(copy.image.astype(int) - original.image).mean() < 4  # JPEG q95
    with pytest.raises(FileExistsError):
        convert_video(str(clip), bag)


def test_open_source_refuses_what_is_not_there(clip, tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="video file"):
        open_source(str(clip), topic="/camera/image_raw")
    bag = tmp_path / "bag"
    convert_video(str(clip), bag, max_frames=2)
    with pytest.raises(SourceError, match="no image topic /other"):
        open_source(str(bag), topic="/other")
    (tmp_path / "junk.avi").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(tmp_path / "junk.avi"))


def test_label_folder_maps_trailing_numbers_to_frames(tmp_path):
    folder = write_label_folder(tmp_path / "labels", [0, 3, 12])
    (folder / "notes.png").write_bytes(b"")  # no number: ignored
    paths = label_folder(folder)
    assert sorted(paths) == [0, 3, 12]
    np.testing.assert_array_equal(read_label_png(paths[3]), synthetic_scene(3)[1])
    with pytest.raises(SourceError):
        label_folder(tmp_path / "none")


def _image(typestore, pixels: np.ndarray, encoding: str, stamp_ns: int):
    time_type = typestore.types["builtin_interfaces/msg/Time"]
    header = typestore.types["std_msgs/msg/Header"](
        stamp=time_type(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="camera"
    )
    channels = 1 if pixels.ndim == 2 else 3
    return typestore.types["sensor_msgs/msg/Image"](
        header=header,
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=pixels.shape[1] * channels,
        data=np.ascontiguousarray(pixels).reshape(-1),
    )


def write_labelled_bag(path: Path, count: int, labelled, storage=StoragePlugin.MCAP) -> None:
    """Images on /camera/image_raw and mono8 labels on /camera/labels for `labelled` frames
    (logged 10 ms after their frame, as a labelling tool might)."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection(
            "/camera/image_raw", "sensor_msgs/msg/Image", typestore=typestore
        )
        labels = writer.add_connection(
            "/camera/labels", "sensor_msgs/msg/Image", typestore=typestore
        )
        for index in range(count):
            rgb, label = synthetic_scene(index)
            stamp = 5 * 10**9 + int(index * 1e9 / CLIP_FPS)
            msg = _image(typestore, rgb, "rgb8", stamp)
            writer.write(images, stamp, typestore.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            if index in labelled:
                msg = _image(typestore, label, "mono8", stamp + 10**7)
                writer.write(
                    labels, stamp + 10**7, typestore.serialize_cdr(msg, "sensor_msgs/msg/Image")
                )


def test_labels_from_a_bag_topic_go_to_the_nearest_frame(tmp_path):
    write_labelled_bag(tmp_path / "bag", 6, labelled={1, 4})
    source = open_source(str(tmp_path / "bag"), topic="/camera/image_raw")
    offsets = [frame.offset_s for frame in source.frames()]
    labels = bag_labels(source, "/camera/labels", offsets)
    assert sorted(labels) == [1, 4]
    np.testing.assert_array_equal(labels[4], synthetic_scene(4)[1])
    with pytest.raises(SourceError, match="label topic"):
        bag_labels(source, "/nothing", offsets)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_replay_runs_on_a_bag_of_each_storage_format(tmp_path, storage, small_model):
    """stac-replay run on an Image bag (mcap, with a label topic) and a CompressedImage bag
    (sqlite3): the report carries both accuracies and, with labels, human-label mIoU."""
    if storage == "mcap":
        bag = tmp_path / "bag"
        write_labelled_bag(bag, 6, labelled={0, 2, 4})
        extra = ["--topic", "/camera/image_raw", "--label-topic", "/camera/labels"]
    else:
        clip_path = write_clip(tmp_path / "clip.avi", 6)
        bag = tmp_path / "bag"
        convert_video(str(clip_path), bag, storage="sqlite3", compressed=True)
        extra = []
    out = tmp_path / "out"
    argv = [
        "run",
        str(next(bag.glob("*.db3"))) if storage == "sqlite3" else str(bag),
        "--out", str(out), "--methods", "uniform,jpeg", "--crf", "24,40",
        "--jpeg-quality", "20,80", "--edge-ms", "30", "--model", str(small_model),
        "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "0", "--no-bag",
        *extra,
    ]  # fmt: skip
    assert replay_main(argv) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["source"]["kind"] == "bag" and report["source"]["frames"] == 6
    point = report["methods"]["uniform"][0]
    assert point["frames"]["camera"] == 6 and point["decoded_miou"] is not None
    assert point["timely_miou"] is not None
    assert ("decoded_miou_human" in point) == (storage == "mcap")
