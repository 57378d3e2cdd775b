"""The edge's online step with a calibration: what it computes and what the robot must apply."""

import dataclasses

import numpy as np
import pytest
import torch

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_edge_segmenter.model import build_lite0_fpn
from stac_sensitivity.allocation import allocate
from stac_sensitivity.calibration import Calibration, save_calibration
from stac_sensitivity.macroblocks import macroblock_ac_energy
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
