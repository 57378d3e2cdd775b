"""DIS optical flow carries the QP map with the content."""

from __future__ import annotations

import numpy as np
import pytest

from stac_encoder.frame_flow import FlowConfig, FrameFlow
from stac_encoder.qp_map_warp import QPMapWarper


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))  # blocky texture flow can lock onto


def shifted(scene: np.ndarray, dx: int) -> np.ndarray:
    return np.ascontiguousarray(scene[:, 96 - dx : 96 - dx + 480])


def hot_map(rows: int, cols: int) -> np.ndarray:
    qp_map = np.zeros((rows, cols), np.int8)
    qp_map[8, 10] = -8
    return qp_map


def test_map_follows_content_moving_right(scene):
    flow = FrameFlow(480, 320, FlowConfig(flow_width_px=240))
    warper = QPMapWarper(flow)
    flow.add_frame(1, shifted(scene, 0))
    assert warper.set_map(hot_map(warper.rows, warper.cols), 1)
    for seq, dx in enumerate((8, 16, 24, 32), start=2):
        flow.add_frame(seq, shifted(scene, dx))
    assert np.argwhere(warper.current_map() == -8).tolist() == [[8, 12]]


def test_late_map_is_warped_from_its_source_frame(scene):
    flow = FrameFlow(480, 320, FlowConfig(flow_width_px=240))
    warper = QPMapWarper(flow)
    for seq, dx in enumerate((0, 16, 32), start=1):
        flow.add_frame(seq, shifted(scene, dx))
    assert warper.set_map(hot_map(warper.rows, warper.cols), 1)
    assert np.argwhere(warper.current_map() == -8).tolist() == [[8, 12]]


def test_unknown_source_frame_uses_the_map_as_is(scene):
    flow = FrameFlow(480, 320, FlowConfig(history_frames=2))
    warper = QPMapWarper(flow)
    for seq in range(1, 5):
        flow.add_frame(seq, shifted(scene, 0))
    assert not warper.set_map(hot_map(warper.rows, warper.cols), 1)
    np.testing.assert_array_equal(warper.current_map(), hot_map(warper.rows, warper.cols))


def test_wrong_map_shape_is_rejected(scene):
    warper = QPMapWarper(FrameFlow(480, 320))
    with pytest.raises(ValueError, match="shape"):
        warper.set_map(np.zeros((3, 3), np.int8), 1)
    assert warper.current_map() is None


def test_displacement_is_how_far_the_content_moved_since_the_maps_frame(scene):
    flow = FrameFlow(480, 320, FlowConfig(flow_width_px=240))
    warper = QPMapWarper(flow)
    flow.add_frame(1, shifted(scene, 0))
    warper.set_map(hot_map(warper.rows, warper.cols), 1)
    warper.current_map()
    assert warper.displacement_px() == 0.0
    for seq, dx in enumerate((8, 16, 24, 32), start=2):
        flow.add_frame(seq, shifted(scene, dx))
    warper.current_map()
    assert warper.displacement_px() == pytest.approx(32.0, abs=3.0)


def test_macroblock_motion_is_each_blocks_displacement_since_a_frame(scene):
    """8 px a frame: one frame back by the step flow, three back traced; a frame the flow
    no longer holds is infinitely far; the current frame has not moved."""
    flow = FrameFlow(480, 320, FlowConfig(flow_width_px=240, history_frames=4))
    warper = QPMapWarper(flow)
    for seq, dx in enumerate((0, 8, 16, 24, 32, 40), start=1):
        flow.add_frame(seq, shifted(scene, dx))
    inner = (slice(2, -2), slice(2, -2))  # away from the borders content enters through
    assert warper.macroblock_motion_px(5)[inner] == pytest.approx(8.0, abs=1.0)
    assert np.median(warper.macroblock_motion_px(3)) == pytest.approx(24.0, abs=2.0)
    assert np.all(warper.macroblock_motion_px(6) == 0.0)
    assert np.all(np.isinf(warper.macroblock_motion_px(1)))
    assert warper.macroblock_motion_px(1).shape == (warper.rows, warper.cols)
