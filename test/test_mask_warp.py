"""Masks on the robot: the edge's mask carried to later frames by the shared per-frame flow.

A synthetic scene translates a few pixels per frame; the mask of an early frame, arriving late,
must equal the truly shifted mask on the pixels that stay in view, whether the frames it
missed are crossed by one direct flow or by composing the per-frame flows.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stac_encoder.frame_flow import FlowConfig, FrameFlow, PositionField
from stac_encoder.mask_warp import MaskPropagator
from stac_encoder.qp_map_warp import QPMapWarper

WIDTH, HEIGHT = 320, 192
STEP = (3, 2)  # pixels per frame, x and y


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, np.ndarray]:
    """A large textured image and its class ids (blocks of 4 classes, texture inside)."""
    rng = np.random.default_rng(7)
    size = (HEIGHT + 120, WIDTH + 160)
    texture = np.kron(rng.integers(0, 256, (size[0] // 8, size[1] // 8)), np.ones((8, 8)))
    texture = cv2.GaussianBlur(texture.astype(np.float32), (0, 0), 2.0)
    labels = np.kron(rng.integers(0, 4, (size[0] // 40 + 1, size[1] // 40 + 1)), np.ones((40, 40)))
    labels = labels[: size[0], : size[1]].astype(np.uint8)
    shade = (texture * 0.6 + labels * 25).astype(np.uint8)
    rgb = np.stack([shade, np.roll(shade, 3, axis=1), 255 - shade], axis=-1)
    return rgb, labels


def view(image: np.ndarray, frame: int) -> np.ndarray:
    """Frame `frame` (from 0): the camera pans right and down, so content moves left and up."""
    x, y = 20 + STEP[0] * frame, 20 + STEP[1] * frame
    return np.ascontiguousarray(image[y : y + HEIGHT, x : x + WIDTH])


def agreement_in_view(warped: np.ndarray, world_labels, source: int, target: int) -> float:
    """Share of the pixels of frame `target` that were also in view in frame `source` where
    the warped mask equals the true mask of `target`."""
    truth = view(world_labels, target)
    shift_x, shift_y = STEP[0] * (target - source), STEP[1] * (target - source)
    in_view = np.zeros_like(truth, dtype=bool)
    in_view[: HEIGHT - shift_y, : WIDTH - shift_x] = True
    return float(np.mean(warped[in_view] == truth[in_view]))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "composed"])
def test_late_mask_follows_the_scene(world, direct):
    rgb, labels = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320, anchor_direct=direct))
    masks = MaskPropagator(flow)
    for seq in range(1, 7):  # frames 0..5 as flow frames 1..6
        flow.add_frame(seq, view(rgb, seq - 1))
    assert masks.current() is None
    assert masks.set_mask(view(labels, 0), 1)  # the mask of frame 0 arrives 5 frames late
    held = masks.current()
    assert (held.age_frames, held.source_seq, held.warped) == (5, 1, True)
    assert agreement_in_view(held.class_ids, labels, 0, 5) >= 0.95
    assert np.mean(view(labels, 0) == view(labels, 5)) < 0.8  # holding it would be wrong
    for seq in range(7, 11):  # then carried frame by frame
        flow.add_frame(seq, view(rgb, seq - 1))
    later = masks.current()
    assert later.age_frames == 9
    assert agreement_in_view(later.class_ids, labels, 0, 9) >= 0.95


def test_delay_composition_matches_the_true_displacement(world):
    rgb, _ = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320, anchor_direct=False))
    for seq in range(1, 12):
        flow.add_frame(seq, view(rgb, seq - 1))
    x = np.array([[100.0, 200.0]], np.float32)
    y = np.array([[80.0, 100.0]], np.float32)
    for delay in (0, 2, 5, 10):
        traced = flow.trace_back(x, y, 11 - delay)
        np.testing.assert_allclose(traced[0], x + STEP[0] * delay, atol=1.0)
        np.testing.assert_allclose(traced[1], y + STEP[1] * delay, atol=1.0)
    field = PositionField.flow_grid(flow)
    assert field.anchor(11 - 5) and field.warped
    assert abs(float(np.median(field.x - field.grid_x)) - STEP[0] * 5) < 1.0


def test_map_and_mask_share_one_flow(world):
    """The map warper and the mask warper read the same per-frame flow: one DIS per frame."""
    rgb, labels = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320))
    maps, masks = QPMapWarper(flow), MaskPropagator(flow)
    flow.add_frame(1, view(rgb, 0))
    qp_map = np.zeros((maps.rows, maps.cols), np.int8)
    qp_map[6, 10] = -8
    maps.set_map(qp_map, 1)
    masks.set_mask(view(labels, 0), 1)
    for seq in range(2, 10):  # 8 frames: 24 px left, 16 px up = 1.5 and 1 macroblocks
        flow.add_frame(seq, view(rgb, seq - 1))
    hot = np.argwhere(maps.current_map() == -8).tolist()
    assert hot and all(row in (4, 5) and col in (8, 9) for row, col in hot)
    assert agreement_in_view(masks.current().class_ids, labels, 0, 8) >= 0.95


def test_a_frame_out_of_the_history_is_held_as_it_is(world):
    rgb, labels = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320, history_frames=3))
    masks = MaskPropagator(flow)
    for seq in range(1, 8):
        flow.add_frame(seq, view(rgb, seq - 1))
    masks.set_mask(view(labels, 0), 1)
    held = masks.current()
    assert (held.age_frames, held.warped) == (6, False)
    np.testing.assert_array_equal(held.class_ids, view(labels, 0))


def test_older_masks_and_wrong_sizes_are_refused(world):
    rgb, labels = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320))
    masks = MaskPropagator(flow)
    for seq in range(1, 4):
        flow.add_frame(seq, view(rgb, seq - 1))
    assert masks.set_mask(view(labels, 2), 3)
    assert not masks.set_mask(view(labels, 1), 2)
    assert masks.current().source_seq == 3
    with pytest.raises(ValueError, match="shape"):
        masks.set_mask(np.zeros((10, 10), np.uint8), 3)


def test_a_gap_in_the_frame_numbers_starts_a_new_chain(world):
    rgb, _ = world
    flow = FrameFlow(WIDTH, HEIGHT, FlowConfig(flow_width_px=320))
    assert flow.add_frame(1, view(rgb, 0)) is None
    assert flow.add_frame(2, view(rgb, 1)) is not None
    assert flow.add_frame(5, view(rgb, 2)) is None
    assert not flow.can_reach(2) and flow.trace_back(np.zeros(1), np.zeros(1), 2) is None
