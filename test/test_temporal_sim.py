"""The temporal simulation behind `stac-bench temporal`, with a stand-in model and map computer
(no torch): what travels in each mode, what comes back and what the robot holds, and the
bitrate target's window check."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stac_codec.qp_map import QPLevelMap, macroblock_grid
from stac_eval.replay.link import LinkConfig
from stac_eval.replay.truth import EdgeTiming
from stac_eval.temporal_maps import window_errors
from stac_eval.temporal_sim import VARIANTS, SimSettings, TemporalSim

WIDTH, HEIGHT, FRAMES, FPS = 128, 80, 30, 25.0


class StubModel:
    """Class 1 where the frame is bright, else 0."""

    num_classes = 3

    def predict(self, image, batch_size=1, with_probabilities=False):
        grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
        return SimpleNamespace(class_ids=(grey > 128).astype(np.uint8)[None])


class StubComputer:
    """A fixed map: the left half finer; remembers the (frame, reference) pairs it was given."""

    calibration = SimpleNamespace(aq_strength=0.001)

    def __init__(self):
        self.given = []

    def compute(self, image, reference=None):
        self.given.append((image, reference))
        rows, cols = macroblock_grid(image.shape[1], image.shape[0])
        indices = np.zeros((rows, cols), np.uint8)
        indices[:, cols // 2 :] = 2
        level_map = QPLevelMap(indices, (-6, 0, 6))
        return SimpleNamespace(
            allocation=level_map,
            offsets_qp=level_map.offsets_qp,
            class_ids=StubModel().predict(image).class_ids[0],
            macroblock_sensitivity=np.ones((rows, cols)),
        )


class StubTruth:
    def __init__(self, frames):
        self._masks = [StubModel().predict(f.image).class_ids[0] for f in frames]

    def mask(self, index):
        return self._masks[index]


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (HEIGHT, WIDTH + 2 * FRAMES, 3)).astype(np.float32)
    world = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3.0), None, 0, 255, cv2.NORM_MINMAX)
    return [
        SimpleNamespace(
            index=i,
            offset_s=i / FPS,
            image=np.ascontiguousarray(world[:, i : i + WIDTH]).astype(np.uint8),
        )
        for i in range(FRAMES)
    ]


def simulate(clip, variant: str, computer=None, **settings):
    simulation = TemporalSim(
        VARIANTS[variant],
        30.0,
        SimSettings(fps=FPS, **settings),
        LinkConfig.parse("rate=10mbit,delay=10ms"),
        EdgeTiming(100.0, 200.0),
        StubModel(),
        computer or StubComputer(),
        StubTruth(clip),
    )
    return simulation.run(clip)


def test_stream_mode_sends_every_frame_and_the_robot_holds_masks(clip):
    computer = StubComputer()
    result = simulate(clip, "stac", computer)
    # the first map comes from the stream's first picture; every later one is given the
    # decoded picture before its frame, the reference of that P-frame (the decoder's
    # reference_image, tested in test_codec_decoder.py)
    assert computer.given[0][1] is None and len(computer.given) >= 2
    for image, reference in computer.given[1:]:
        assert reference is not None and reference.shape == image.shape
        assert not np.array_equal(reference, image)  # the camera pans: another picture
    assert result.sent.all() and result.uplink_bytes.min() > 0
    assert result.counters["maps"] >= 1 and result.map_bytes.sum() > 0
    assert result.mask_bytes.sum() > 0  # masks counted, apart from the maps
    assert result.counters["skipped"] > 0  # the newest-frame policy under a 100 ms edge
    assert (result.mask_age[:3] == -1).all() and (result.mask_age[-10:] >= 0).all()
    assert result.decoded_scored.any()
    held = result.timely_confusion[-10:].sum(0)
    assert np.trace(held[:, :3]) / held.sum() > 0.8  # the robot's masks fit the frames


def test_keyframe_mode_sends_only_keyframes_never_to_a_busy_edge(clip):
    result = simulate(clip, "stac_keyframe")
    sent = np.flatnonzero(result.sent)
    assert 1 <= len(sent) < FRAMES // 2
    # the edge answers each keyframe within ~0.1-0.2 s (+ link): never two within 3 frames
    assert (np.diff(sent) >= 3).all()
    assert (result.mask_age[sent[0] + 10 :] >= 0).all()


def test_window_errors_of_a_perfect_and_of_a_lagging_stream():
    fps, target = 10.0, 80.0
    per_frame = target * 1e3 / 8 / fps  # bytes per frame on target
    sizes = np.full(100, per_frame)
    sizes[50:] = per_frame / 2
    perfect = window_errors(sizes, fps, (target, target / 2), 5.0)
    assert perfect["worst_window_error_pct"] < 1e-6 and perfect["step_settle_s"] == 0.0
    lagging = sizes.copy()
    lagging[50:60] = per_frame  # follows the step one second late
    late = window_errors(lagging, fps, (target, target / 2), 5.0)
    assert late["step_settle_s"] == pytest.approx(1.0, abs=0.11)
