"""Macroblock aggregation and the DNN input-gradient sensitivity (stac_sensitivity)."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from stac_codec.qp_map import macroblock_grid
from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_edge_segmenter.model import build_lite0_fpn
from stac_sensitivity.macroblocks import macroblock_ac_energy, macroblock_l1
from stac_sensitivity.sensitivity import compute_sensitivity, frame_class_weights


def test_grid_counts_partial_macroblocks():
    assert macroblock_grid(480, 360) == (23, 30)
    assert macroblock_grid(17, 16) == (1, 2)
    with pytest.raises(ValueError):
        macroblock_grid(16, 0)


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


def test_ac_energy_is_zero_on_flat_macroblocks_and_follows_x264s_formula():
    frame = np.full((40, 48, 3), 120, dtype=np.uint8)  # 3 x 3 macroblocks, the last row partial
    frame[0:16, 16:32] = np.where(np.indices((16, 16)).sum(0) % 2 == 0, 100, 140)[..., None]
    energy = macroblock_ac_energy(frame)
    assert energy.shape == (3, 3)
    assert energy[0, 1] > 0 and np.count_nonzero(energy) == 1
    # Grey checkerboard: luma +-20 around its mean in every pixel, chroma flat after 2x2 averaging.
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)[:40][0:16, 16:32].astype(float)
    assert energy[0, 1] == pytest.approx(((luma - luma.mean()) ** 2).sum())


def test_ac_energy_grows_with_texture_and_rejects_bad_frames():
    rng = np.random.default_rng(0)
    noise = [np.clip(128 + rng.normal(0, s, (32, 32, 3)), 0, 255).astype(np.uint8) for s in (2, 20)]
    assert macroblock_ac_energy(noise[0]).max() < macroblock_ac_energy(noise[1]).min()
    with pytest.raises(ValueError):
        macroblock_ac_energy(np.zeros((16, 16), dtype=np.uint8))


# --- the DNN input-gradient sensitivity ------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    """The default architecture with random weights (the shipped weights are not needed to
    test the gradient's plumbing; every property below holds for any network)."""
    torch.manual_seed(0)
    spec = dataclasses.replace(read_spec(DEFAULT_CONFIG), input_size=None)  # frames' own size
    network = build_lite0_fpn(num_classes=len(spec.classes))
    return SegmentationModel(network, spec, torch.device("cpu"))


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 255, size=(2, 6, 8, 3)).astype(np.uint8)
    upscaled = smooth.repeat(6, axis=1).repeat(6, axis=2)[:, :36, :44]  # 36x44: partial MBs
    return np.ascontiguousarray(upscaled)


def test_sensitivity_shape_finite_and_non_zero(model, frames):
    result = compute_sensitivity(model.logits, frames)
    assert result.macroblock_sensitivity.shape == (2, 3, 3)
    assert result.macroblock_sensitivity.dtype == np.float64
    assert np.all(np.isfinite(result.macroblock_sensitivity))
    assert np.all(result.macroblock_sensitivity > 0)
    assert result.class_ids.shape == (2, 36, 44) and result.class_ids.dtype == np.uint8


def test_prediction_is_the_models_own(model, frames):
    result = compute_sensitivity(model.logits, frames)
    np.testing.assert_array_equal(result.class_ids, model.predict(frames).class_ids)


def test_each_frames_gradient_is_independent_of_the_batch(model, frames):
    batched = compute_sensitivity(model.logits, frames).macroblock_sensitivity
    alone = compute_sensitivity(model.logits, frames[1:]).macroblock_sensitivity
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-4)


def test_class_weights_scale_the_loss(model, frames):
    plain = compute_sensitivity(model.logits, frames[:1]).macroblock_sensitivity
    doubled = compute_sensitivity(model.logits, frames[:1], class_weights=[2.0] * 11)
    np.testing.assert_allclose(doubled.macroblock_sensitivity, 2 * plain, rtol=1e-4)
    zero = compute_sensitivity(model.logits, frames[:1], class_weights=[0.0] * 11)
    assert not zero.macroblock_sensitivity.any()


@pytest.mark.parametrize("weights", [[1.0] * 3, [-1.0] * 11, [float("nan")] * 11])
def test_bad_class_weights_are_value_errors(model, frames, weights):
    with pytest.raises(ValueError, match="class weights"):
        compute_sensitivity(model.logits, frames[:1], class_weights=weights)


def test_bad_frames_are_value_errors(model, frames):
    with pytest.raises(ValueError, match="uint8"):
        compute_sensitivity(model.logits, frames.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        compute_sensitivity(model.logits, frames[0])


def test_frame_class_weights_favour_the_frames_rare_classes_with_pixel_mean_one():
    predicted = torch.zeros(2, 10, 10, dtype=torch.long)
    predicted[0, :1, :] = 1  # frame 0: class 1 on 10% of the pixels
    predicted[0, 0, 0] = 2  # and one stray pixel of class 2 (1%, above the floor)
    weights = frame_class_weights(predicted, 3, 0.5)
    assert weights.shape == (2, 10, 10)
    assert weights[0, 0, 0] > weights[0, 0, 1] > weights[0, 5, 5]
    assert weights[0, 0, 1] / weights[0, 5, 5] == pytest.approx((0.90 / 0.09) ** 0.5)
    torch.testing.assert_close(weights.mean(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(weights[1], torch.ones(10, 10))  # one class: nothing to favour
    torch.testing.assert_close(frame_class_weights(predicted, 3, 0.0), torch.ones(2, 10, 10))


def test_frame_class_weights_scale_each_pixels_gradient_by_its_class_weight():
    """Two classes, red (3/4 of the frame) and green (1/4): with exponent 1 a green pixel's
    term weighs 3x a red one's, so its macroblock's sensitivity triples relative to red's."""

    def logits_fn(x):  # class 0 where red > green; per-pixel, so gradients stay in place
        return torch.stack([x[:, 0] - x[:, 1], x[:, 1] - x[:, 0]], dim=1) / 50.0

    frame = np.zeros((1, 16, 64, 3), dtype=np.uint8)
    frame[..., 0] = 120
    frame[0, :, 48:] = [60, 120, 0]  # the last macroblock green, same margin as the red ones
    plain = compute_sensitivity(logits_fn, frame)
    weighted = compute_sensitivity(logits_fn, frame, class_weight_exponent=1.0)
    np.testing.assert_array_equal(plain.class_ids, weighted.class_ids)
    ratio = weighted.macroblock_sensitivity / plain.macroblock_sensitivity
    assert ratio[0, 0, 3] / ratio[0, 0, 0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="class_weight_exponent"):
        compute_sensitivity(logits_fn, frame, class_weight_exponent=-1.0)
