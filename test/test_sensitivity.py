"""Macroblock aggregation and the DNN input-gradient sensitivity (stac_sensitivity)."""

import pytest
import torch

from stac_sensitivity.macroblocks import macroblock_grid, macroblock_l1


def test_grid_counts_partial_macroblocks():
    assert macroblock_grid(360, 480) == (23, 30)
    assert macroblock_grid(16, 17) == (1, 2)
    with pytest.raises(ValueError):
        macroblock_grid(0, 16)


def test_macroblock_l1_sums_abs_over_channels_and_blocks():
    gradient = torch.zeros(2, 3, 20, 33)
    gradient[0, 0, 0, 0] = -1.5
    gradient[0, 2, 15, 15] = 2.0
    gradient[0, 1, 16, 0] = 4.0  # second macroblock row (partial: 4 real rows)
    gradient[1, :, 19, 32] = -1.0  # last, 1-pixel-wide partial macroblock
    blocks = macroblock_l1(gradient)
    assert blocks.shape == (2, 2, 3)
    expected = torch.zeros(2, 2, 3)
    expected[0, 0, 0] = 3.5
    expected[0, 1, 0] = 4.0
    expected[1, 1, 2] = 3.0
    torch.testing.assert_close(blocks, expected)


def test_macroblock_l1_of_constant_gradient_counts_real_pixels_only():
    blocks = macroblock_l1(torch.ones(1, 3, 24, 16))
    torch.testing.assert_close(blocks, torch.tensor([[[768.0], [384.0]]]))


def test_macroblock_l1_rejects_wrong_rank():
    with pytest.raises(ValueError, match="gradient"):
        macroblock_l1(torch.ones(3, 16, 16))
