"""The shipped model is loaded with its BatchNorms folded into the convolutions (cheaper
forward and backward passes): the masks and the sensitivity maps must be those of the network
as trained, within float32 rounding."""

import numpy as np
import pytest
import torch

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, load_model, read_spec
from stac_edge_segmenter.model import DEFAULT_WEIGHTS, load_lite0_fpn
from stac_sensitivity.sensitivity import compute_sensitivity


@pytest.fixture(scope="module")
def frames(data_dir):
    from stac_eval.frame_dirs import read_frames

    return read_frames(data_dir / "camvid" / "val", limit=2, stride=40).images


@pytest.mark.slow
def test_folded_model_gives_the_same_masks_and_maps(frames):
    spec = read_spec(DEFAULT_CONFIG)
    unfused = load_lite0_fpn(DEFAULT_WEIGHTS, num_classes=len(spec.classes))
    reference = SegmentationModel(unfused, spec, torch.device("cpu"))
    fused = load_model(device="cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.network.modules())
    assert not any(p.requires_grad for p in fused.network.parameters())
    expected = compute_sensitivity(reference.logits, frames)
    got = compute_sensitivity(fused.logits, frames)
    assert (got.class_ids == expected.class_ids).mean() > 0.9999
    scale = expected.macroblock_sensitivity.max(axis=(1, 2), keepdims=True)
    error = np.abs(got.macroblock_sensitivity - expected.macroblock_sensitivity) / scale
    assert error.max() < 1e-2 and np.median(error) < 1e-4
