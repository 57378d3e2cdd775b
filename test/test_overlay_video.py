"""overlay.mp4 from the recorder: capture stamps as timestamps, whatever the source's timing."""

from __future__ import annotations

import av
import numpy as np

from stac_eval.ros.recorder_node import OverlayVideo

MS = 1_000_000


def _frames(stamps_ms: list[int], tmp_path, shape=(48, 64, 3)):
    video = OverlayVideo(tmp_path / "overlay.mp4")
    rng = np.random.default_rng(0)
    for stamp_ms in stamps_ms:
        video.add(rng.integers(0, 255, shape, dtype=np.uint8), 1_000 * MS + stamp_ms * MS)
    video.close()
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        times_ms = [round(1e3 * frame.pts * stream.time_base) for frame in container.decode(stream)]
    return video, times_ms


def test_frames_a_few_ms_apart_keep_their_own_timestamps(tmp_path):
    """A source that fell behind publishes frames back to back: at the nominal 1/30 s they
    would share a pts, which the muxer refuses (the CI failure of dd3a74b)."""
    video, times_ms = _frames([0, 5, 9, 166, 170, 333], tmp_path)
    assert times_ms == [0, 5, 9, 166, 170, 333]
    assert video.frames_skipped == 0


def test_a_frame_not_later_than_the_last_is_skipped_and_counted(tmp_path):
    video, times_ms = _frames([0, 166, 100, 166, 333], tmp_path)
    assert times_ms == [0, 166, 333]
    assert video.frames_skipped == 2


def test_a_frame_of_another_size_is_skipped_and_counted(tmp_path):
    video = OverlayVideo(tmp_path / "overlay.mp4")
    video.add(np.zeros((48, 64, 3), np.uint8), 0)
    video.add(np.zeros((32, 64, 3), np.uint8), 40 * MS)
    video.close()
    assert video.frames_skipped == 1
