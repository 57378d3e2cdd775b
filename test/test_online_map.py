"""The edge's online step with a calibration: what it computes and what the robot must apply."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_edge_segmenter.model import build_lite0_fpn
from stac_sensitivity.allocation import allocate
from stac_sensitivity.calibration import Calibration, save_calibration
from stac_sensitivity.macroblocks import macroblock_ac_energy, macroblock_residual_energy
from stac_sensitivity.online import QPMapComputer
from stac_sensitivity.sensitivity import compute_sensitivity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    spec = dataclasses.replace(read_spec(DEFAULT_CONFIG), input_size=None)
    return SegmentationModel(build_lite0_fpn(num_classes=11), spec, torch.device("cpu"))


@pytest.fixture(scope="module")
def frame():
    """Half flat, half textured: the rate term has something to act on."""
    rng = np.random.default_rng(1)
    image = np.full((64, 96, 3), 100, dtype=np.uint8)
    image[:, 48:] = np.clip(100 + rng.normal(0, 40, (64, 48, 3)), 0, 255).astype(np.uint8)
    return image


def test_rate_aware_calibration_drives_the_map_and_names_the_robots_aq(model, frame, tmp_path):
    calibration = Calibration(
        alpha=0.5, max_offset_qp=10, rate_exponent=0.45, energy_floor=256.0, aq_strength=0.7
    )
    path = save_calibration(calibration, tmp_path / "c.json")
    computer = QPMapComputer(model, path, budget_shift_qp=1)
    assert computer.aq_strength == 0.7
    result = computer.compute(frame)
    sensitivity = compute_sensitivity(model.logits, frame[None]).macroblock_sensitivity[0]
    expected = allocate(
        sensitivity, calibration.allocation_config(1), macroblock_ac_energy(frame)
    ).offsets_qp
    np.testing.assert_array_equal(result.offsets_qp, expected)
    rate_blind = allocate(
        sensitivity, dataclasses.replace(calibration, rate_exponent=0.0).allocation_config(1)
    ).offsets_qp
    # The textured half is coarser than without the rate term, the flat half finer.
    difference = result.offsets_qp.astype(int) - rate_blind.astype(int)
    assert difference[:, 3:].mean() > 0 > difference[:, :3].mean()


def test_without_a_calibration_the_robot_encodes_map_only(model, frame, tmp_path):
    spec = dataclasses.replace(model.spec, weights=tmp_path / "model.pt")  # nothing beside it
    computer = QPMapComputer(SegmentationModel(model.network, spec, torch.device("cpu")))
    assert computer.aq_strength == 0.001
    assert computer.compute(frame).offsets_qp.shape == (4, 6)


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


def test_a_map_for_p_frames_takes_the_rate_term_from_the_residual(model, frame, tmp_path):
    calibration = Calibration(alpha=0.5, max_offset_qp=10, rate_exponent=0.45, energy_floor=256.0)
    computer = QPMapComputer(model, save_calibration(calibration, tmp_path / "c.json"))
    reference = np.roll(frame, 2, axis=1)
    sensitivity = compute_sensitivity(model.logits, frame[None]).macroblock_sensitivity[0]
    energy = macroblock_residual_energy(frame, reference)
    expected = allocate(sensitivity, calibration.allocation_config(0), energy).offsets_qp
    np.testing.assert_array_equal(computer.compute(frame, reference).offsets_qp, expected)
    # a reference of another size (a new stream) is no reference: the frame's own energy
    other = computer.compute(frame, reference[:32]).offsets_qp
    np.testing.assert_array_equal(other, computer.compute(frame).offsets_qp)
