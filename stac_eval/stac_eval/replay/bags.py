"""Bags the replay writes: one operating point per method for Foxglove, and clips as camera bags.

A point's bag holds what the demo's bag shows, on the demo's topic names, stamped with the
camera capture time and logged when it would have arrived:

- /stac/video              foxglove_msgs/msg/CompressedVideo  the H.264 stream (logged at the
                           edge's receive time; checked playable by `stac_eval.foxglove_video`)
- /camera/image/compressed sensor_msgs/msg/CompressedImage    the JPEG baseline's stream
- /stac/mask/compressed    sensor_msgs/msg/CompressedImage    masks as they reach the robot
                           (PNG of the mono8 class ids, image_transport's compressed form)
- /stac/overlay/compressed sensor_msgs/msg/CompressedImage    mask colours over the decoded
                           frame (JPEG)
- /stac/qp_heatmap/compressed                                 the QP maps sent back (JPEG)

Masks and overlays travel as compressed images (the demo's bag carries raw mono8/rgb8 Images)
so that a bag of a whole clip stays tens of MB rather than gigabytes.

`convert_video` writes any clip as a rosbag2 of sensor_msgs/Image (rgb8) at its recorded rate,
which the demo's video source node and `stac-replay run` both read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from stac_encoder.frame_sources import read_frames
from stac_eval.foxglove_video import (
    COMPRESSED_VIDEO_TYPE,
    VIDEO_TOPIC,
    VideoFrameError,
    compressed_video,
    register_compressed_video,
)
from stac_eval.replay.simulation import Method, Recording
from stac_eval.replay.wire import FRAME_ID, JPEG_FORMAT

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
JPEG_TOPIC = "/camera/image/compressed"
MASK_TOPIC = "/stac/mask/compressed"
OVERLAY_TOPIC = "/stac/overlay/compressed"
HEATMAP_TOPIC = "/stac/qp_heatmap/compressed"
MASK_FORMAT = "mono8; png compressed mono8"
OVERLAY_FORMAT = "rgb8; jpeg compressed bgr8"
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _stamp(typestore, seconds: float):
    ns = _ns(seconds)
    return typestore.types["builtin_interfaces/msg/Time"](
        sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000
    )


def _compressed(typestore, seconds: float, image_format: str, data: bytes):
    header = typestore.types["std_msgs/msg/Header"](
        stamp=_stamp(typestore, seconds), frame_id=FRAME_ID
    )
    return typestore.types[COMPRESSED_IMAGE_TYPE](
        header=header, format=image_format, data=np.frombuffer(data, dtype=np.uint8)
    )


def write_point_bag(path: Path, method: Method, recording: Recording) -> dict:
    """Write one run's bag (mcap) at `path` (a folder, replaced); returns message counts."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    register_compressed_video(typestore)
    messages: list[tuple[int, str, bytes]] = []  # (log time ns, topic, CDR)
    types = {}
    video_errors = 0
    if method.transport == "jpeg":
        types[JPEG_TOPIC] = COMPRESSED_IMAGE_TYPE
        for log_s, stamp_s, data, _ in recording.video:
            msg = _compressed(typestore, stamp_s, JPEG_FORMAT, data)
            cdr = typestore.serialize_cdr(msg, COMPRESSED_IMAGE_TYPE)
            messages.append((_ns(log_s), JPEG_TOPIC, bytes(cdr)))
    else:
        types[VIDEO_TOPIC] = COMPRESSED_VIDEO_TYPE
        for log_s, stamp_s, data, keyframe in recording.video:
            ns = _ns(stamp_s)
            try:
                msg = compressed_video(
                    typestore,
                    sec=ns // 1_000_000_000,
                    nanosec=ns % 1_000_000_000,
                    frame_id=FRAME_ID,
                    data=data,
                    keyframe=keyframe,
                )
            except VideoFrameError:
                video_errors += 1
                continue
            cdr = typestore.serialize_cdr(msg, COMPRESSED_VIDEO_TYPE)
            messages.append((_ns(log_s), VIDEO_TOPIC, bytes(cdr)))
    types[MASK_TOPIC] = COMPRESSED_IMAGE_TYPE
    types[OVERLAY_TOPIC] = COMPRESSED_IMAGE_TYPE
    for log_s, stamp_s, index in recording.masks:
        mask = _compressed(typestore, stamp_s, MASK_FORMAT, recording.mask_png[index])
        cdr = typestore.serialize_cdr(mask, COMPRESSED_IMAGE_TYPE)
        messages.append((_ns(log_s), MASK_TOPIC, bytes(cdr)))
        if index in recording.overlays:
            overlay = _compressed(typestore, stamp_s, OVERLAY_FORMAT, recording.overlays[index])
            cdr = typestore.serialize_cdr(overlay, COMPRESSED_IMAGE_TYPE)
            messages.append((_ns(log_s), OVERLAY_TOPIC, bytes(cdr)))
    if recording.heatmaps:
        types[HEATMAP_TOPIC] = COMPRESSED_IMAGE_TYPE
        for log_s, stamp_s, jpeg in recording.heatmaps:
            heatmap = _compressed(typestore, stamp_s, OVERLAY_FORMAT, jpeg)
            cdr = typestore.serialize_cdr(heatmap, COMPRESSED_IMAGE_TYPE)
            messages.append((_ns(log_s), HEATMAP_TOPIC, bytes(cdr)))
    staging = path.with_name(f".{path.name}.partial")  # the bag appears whole or not at all
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tmp = staging / path.name
    writer = Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        connections = {
            topic: writer.add_connection(topic, msgtype, typestore=typestore)
            for topic, msgtype in types.items()
        }
        for log_ns, topic, cdr in sorted(messages, key=lambda m: (m[0], m[1])):
            writer.write(connections[topic], log_ns, cdr)
    finally:
        writer.close()
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    staging.rmdir()
    counts = {topic: sum(1 for m in messages if m[1] == topic) for topic in types}
    return {"path": str(path), "messages": counts, "video_frames_left_out": video_errors}


def convert_video(
    video: str,
    out: Path,
    topic: str = "/camera/image_raw",
    storage: str = "mcap",
    compressed: bool = False,
    jpeg_quality: int = 90,
    max_frames: int = 0,
    frame_id: str = FRAME_ID,
    progress=None,
) -> int:
    """Write `video` as a rosbag2 at `out` (a folder that must not exist): sensor_msgs/Image
    rgb8 (or, `compressed`, sensor_msgs/CompressedImage JPEG) on `topic`, each message stamped
    and logged at its recorded offset. Returns the number of frames written."""
    if out.exists():
        raise FileExistsError(f"{out} exists; rosbag2 writers need a new folder")
    typestore = get_typestore(Stores.ROS2_JAZZY)
    msgtype = COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE
    writer = Writer(out, version=9, storage_plugin=STORAGE[storage])
    writer.open()
    count = 0
    try:
        connection = writer.add_connection(topic, msgtype, typestore=typestore)
        for frame in read_frames(video, max_frames=max_frames):
            rgb = frame.image
            if compressed:
                ok, data = cv2.imencode(
                    ".jpg",
                    cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality],
                )
                if not ok:
                    raise RuntimeError(f"cv2.imencode failed on frame {frame.index}")
                msg = _compressed(typestore, frame.offset_s, JPEG_FORMAT, data.tobytes())
                msg.header.frame_id = frame_id
            else:
                header = typestore.types["std_msgs/msg/Header"](
                    stamp=_stamp(typestore, frame.offset_s), frame_id=frame_id
                )
                msg = typestore.types[IMAGE_TYPE](
                    header=header,
                    height=rgb.shape[0],
                    width=rgb.shape[1],
                    encoding="rgb8",
                    is_bigendian=0,
                    step=rgb.shape[1] * 3,
                    data=np.ascontiguousarray(rgb).reshape(-1),
                )
            writer.write(connection, _ns(frame.offset_s), typestore.serialize_cdr(msg, msgtype))
            count += 1
            if progress is not None:
                progress.update(1)
    finally:
        writer.close()
    return count
