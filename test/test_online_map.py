"""The edge's online step with a calibration: the QP map it computes, against maps worked out
by hand on a synthetic case, and what the robot must apply.

The synthetic model makes the sensitivity known without running the code under test: two
classes, logits (z, 0) with z = BIAS + w * (R - G) / 128 per pixel (R, G normalised as the model
spec says: (x - 127) / 128). On a grey frame (R = G everywhere) z = BIAS at every pixel, so the
prediction is class 0 and dL/dz = -sigmoid(-BIAS) everywhere; |dL/dR| = |dL/dG| =
sigmoid(-BIAS) * w / 128 and a macroblock's L1 sensitivity is 2 * 256 * sigmoid(-BIAS) * w / 128,
proportional to its weight w. With w = 2^k per macroblock, STAC's rule
dQP = alpha * 6 * log2(G / g) (G the geometric mean) is alpha * 6 * (mean(k) - k). Grey texture
(a 63/191 checkerboard) leaves z alone but gives the macroblock x264's AC energy: OpenCV's I420
luma of grey 63 and 191 is 70 and 180 (BT.601 studio range), chroma stays 128, so
E = 256 * 55^2 = 774400; the rate-aware rule subtracts gamma * log2(E + E0) from log2 g.
"""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_sensitivity.calibration import Calibration, save_calibration
from stac_sensitivity.macroblocks import macroblock_ac_energy, macroblock_residual_energy
from stac_sensitivity.online import QPMapComputer

BIAS = 1.5
# log2 of each macroblock's weight w (3 x 4 macroblocks: a 48x64 frame); mean(k) = 5/3
WEIGHT_LOG2 = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [2, 2, 2, 2]])
# the macroblocks with grey texture
TEXTURED = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=bool)
TEXTURE_ENERGY = 256 * 55.0**2  # x264's AC energy of a textured macroblock (docstring)


class GreyIndifferentNet(torch.nn.Module):
    """logits (BIAS + w * (R - G), 0) per pixel, w constant over each 16x16 macroblock."""

    def __init__(self, weight_log2: np.ndarray) -> None:
        super().__init__()
        weight = np.kron(2.0**weight_log2, np.ones((16, 16)))
        self.register_buffer("weight", torch.tensor(weight, dtype=torch.float32)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = BIAS + self.weight * (x[:, 0:1] - x[:, 1:2])
        return torch.cat([z, torch.zeros_like(z)], dim=1)


def _model(weight_log2: np.ndarray) -> SegmentationModel:
    spec = dataclasses.replace(
        read_spec(DEFAULT_CONFIG),
        classes=["a", "b"],
        palette=np.array([[0, 0, 0], [255, 255, 255]], np.uint8),
        input_size=None,
    )
    assert spec.mean == (127.0, 127.0, 127.0) and spec.std == (128.0, 128.0, 128.0)
    return SegmentationModel(GreyIndifferentNet(weight_log2), spec, torch.device("cpu"))


def _grey_frame(textured: np.ndarray) -> np.ndarray:
    """Grey 127, with a 63/191 checkerboard in the textured macroblocks."""
    rows, cols = textured.shape
    frame = np.full((16 * rows, 16 * cols, 3), 127, np.uint8)
    checker = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 63, 191).astype(np.uint8)
    for row, col in zip(*np.nonzero(textured), strict=True):
        frame[16 * row : 16 * row + 16, 16 * col : 16 * col + 16] = checker[..., None]
    return frame


def _computer(tmp_path, budget_shift_qp: int = 0, weight_log2=WEIGHT_LOG2, **settings):
    calibration = Calibration(alpha=0.5, max_offset_qp=10, **settings)
    path = save_calibration(calibration, tmp_path / "c.json")
    return QPMapComputer(_model(weight_log2), path, budget_shift_qp=budget_shift_qp)


def test_the_map_is_stacs_rule_worked_out_by_hand(tmp_path):
    """Rate-blind (rate_exponent 0): dQP = 0.5 * 6 * (5/3 - k) = 5 - 3k; texture is ignored;
    the budget shift moves the whole map."""
    result = _computer(tmp_path).compute(_grey_frame(TEXTURED))
    by_hand = np.array([[5, 2, -1, -4], [-4, -1, 2, 5], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(result.offsets_qp, by_hand)
    np.testing.assert_array_equal(result.class_ids, 0)  # z = BIAS > 0 everywhere
    shifted = _computer(tmp_path, budget_shift_qp=2).compute(_grey_frame(TEXTURED))
    np.testing.assert_array_equal(shifted.offsets_qp, by_hand + 2)


def test_offsets_are_clamped_to_dmax(tmp_path):
    """k = 0, 8, 16: 3 * (8 - k) = 24, 0, -24, clamped to +-10."""
    computer = _computer(tmp_path, weight_log2=np.array([[0, 8, 16]]))
    result = computer.compute(_grey_frame(np.zeros((1, 3), bool)))
    np.testing.assert_array_equal(result.offsets_qp, [[10, 0, -10]])


def test_the_rate_term_coarsens_what_is_expensive_to_code(tmp_path):
    """gamma 0.5 and E0 = E / 15: a textured macroblock's log2(E + E0) is 4 above a flat one's
    (log2 16), so l = k - 2t (t = 1 where textured) and dQP = 3 * (mean(l) - l) = 4 - 3k + 6t:
    the textured macroblocks 6 QP coarser than the rate-blind rule puts them, the rest 1 finer."""
    frame = _grey_frame(TEXTURED)
    energy = macroblock_ac_energy(frame)
    np.testing.assert_array_equal(energy, np.where(TEXTURED, TEXTURE_ENERGY, 0.0))
    computer = _computer(
        tmp_path, rate_exponent=0.5, energy_floor=TEXTURE_ENERGY / 15, aq_strength=0.7
    )
    assert computer.aq_strength == 0.7  # what the robot must encode with
    by_hand = 4 - 3 * WEIGHT_LOG2 + 6 * TEXTURED
    np.testing.assert_array_equal(computer.compute(frame).offsets_qp, by_hand)


def test_a_map_for_p_frames_takes_the_rate_term_from_the_residual(tmp_path):
    """Against a reference equal to the frame the residual is zero everywhere: no macroblock
    costs more than another, and the map is the rate-blind one (5 - 3k). A reference of another
    size (a new stream) is no reference: the frame's own energy counts (4 - 3k + 6t)."""
    frame = _grey_frame(TEXTURED)
    computer = _computer(tmp_path, rate_exponent=0.5, energy_floor=TEXTURE_ENERGY / 15)
    np.testing.assert_array_equal(
        computer.compute(frame, reference_rgb=frame.copy()).offsets_qp, 5 - 3 * WEIGHT_LOG2
    )
    np.testing.assert_array_equal(
        computer.compute(frame, reference_rgb=frame[:32]).offsets_qp,
        4 - 3 * WEIGHT_LOG2 + 6 * TEXTURED,
    )


def test_without_a_calibration_the_robot_encodes_map_only(tmp_path):
    model = _model(WEIGHT_LOG2)
    model.spec = dataclasses.replace(model.spec, weights=tmp_path / "model.pt")  # none beside it
    computer = QPMapComputer(model)
    assert computer.aq_strength == 0.001
    assert computer.compute(_grey_frame(TEXTURED)).offsets_qp.shape == (3, 4)


def _textured_world(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_residual_energy_is_what_motion_does_not_explain():
    """A P-frame of a camera panning over texture pays little: the moved reference explains
    it. Against a picture of other content it pays as much as an I-frame would."""
    world = _textured_world(3, 96, 160 + 8)
    frame, panned = world[:, 4:164], world[:, 0:160]
    intra = macroblock_ac_energy(frame)
    residual = macroblock_residual_energy(frame, np.ascontiguousarray(panned))
    inner = (slice(1, -1), slice(1, -1))  # away from the edge the pan uncovers
    assert residual[inner].mean() < 0.1 * intra[inner].mean()
    unrelated = _textured_world(4, 96, 160)
    assert macroblock_residual_energy(frame, unrelated).mean() > 0.5 * intra.mean()
    np.testing.assert_array_equal(macroblock_residual_energy(frame, frame), 0.0)
    with pytest.raises(ValueError, match="does not match"):
        macroblock_residual_energy(frame, frame[:, :80])


def test_a_coarser_map_pools_the_sensitivity_over_cells(tmp_path):
    """block_mb 2: each 2x2 cell of macroblocks takes the mean of its sensitivities (w = 2^k:
    2.5, 16, 2, 8), so the rule dQP = 3 * (mean(log2 g) - log2 g) gives one offset per cell:
    log2 g = 1.32, 4, 1, 3, mean 2.33 -> 3.03, -5.01, 3.99, -2.01 -> 3, -5, 4, -2; block_mb 1
    is the per-macroblock map."""
    weight_log2 = np.array([[0, 2, 4, 4], [2, 0, 4, 4], [1, 1, 3, 3], [1, 1, 3, 3]])
    frame = _grey_frame(np.zeros((4, 4), bool))
    path = save_calibration(Calibration(alpha=0.5, max_offset_qp=10), tmp_path / "c.json")
    model = _model(weight_log2)
    pooled = QPMapComputer(model, path, block_mb=2).compute(frame)
    by_hand = np.kron(np.array([[3, -5], [4, -2]]), np.ones((2, 2), int))
    np.testing.assert_array_equal(pooled.offsets_qp, by_hand)
    assert np.allclose(pooled.macroblock_sensitivity[:2, :2], pooled.macroblock_sensitivity[0, 0])
    fine = QPMapComputer(model, path, block_mb=1).compute(frame)
    # per macroblock: mean(k) = 2.25, dQP = 6.75 - 3k, to the nearest integer level
    np.testing.assert_array_equal(fine.offsets_qp, np.rint(6.75 - 3 * weight_log2))
    with pytest.raises(ValueError, match="block_mb"):
        QPMapComputer(model, path, block_mb=-1)


def test_the_auto_cell_is_what_one_pixel_of_the_models_input_covers(tmp_path):
    path = save_calibration(Calibration(), tmp_path / "c.json")
    model = _model(WEIGHT_LOG2)
    model.spec = dataclasses.replace(model.spec, input_size=(480, 360))
    auto = QPMapComputer(model, path, block_mb=0)
    assert auto.cell_mb(960, 540) == 2 and auto.cell_mb(480, 360) == 1
    assert auto.cell_mb(240, 180) == 1 and auto.cell_mb(1920, 1080) == 4
    assert QPMapComputer(model, path, block_mb=3).cell_mb(480, 360) == 3
