"""Class ids from low-resolution logits (stac_codec.logit_labels): the same as torch's
F.interpolate chain + argmax (exact but for near-ties, lowest id on a tie) for every geometry the
shipped model and a full-resolution (torchvision-style) model produce; chains serialise to eight
integers; bad input is refused with a ValueError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from stac_codec import _logit_labels
from stac_codec.logit_labels import (
    CHAIN_INTS,
    AxisChain,
    LogitChain,
    class_ids_from_logits,
)

# (low, upsampled, cropped, out) as (height, width) pairs:
# - the shipped Lite0-FPN, working size 480x360: stride-4 logits of the input padded to 384 rows,
#   up to 384x480, cropped to 360x480, then to each frame size (the same, the live clip's,
#   the replay's, the engines' larger check frame, a smaller one);
# - the same model with no working size on a 640x272 frame (padded to 288 rows);
# - a full-resolution model (torchvision's segmentation models upsample to their input inside):
#   logits at the working size, resized to the frame (up, down, and not at all);
# - an odd chain that downsamples on the way.
GEOMETRIES = {
    "lite0_frame_480x360": ((96, 120), (384, 480), (360, 480), (360, 480)),
    "lite0_frame_960x540": ((96, 120), (384, 480), (360, 480), (540, 960)),
    "lite0_frame_640x272": ((96, 120), (384, 480), (360, 480), (272, 640)),
    "lite0_frame_726x546": ((96, 120), (384, 480), (360, 480), (546, 726)),
    "lite0_frame_320x240": ((96, 120), (384, 480), (360, 480), (240, 320)),
    "lite0_native_640x272": ((72, 160), (288, 640), (272, 640), (272, 640)),
    "full_resolution_same": ((360, 480), (360, 480), (360, 480), (360, 480)),
    "full_resolution_up": ((270, 480), (270, 480), (270, 480), (540, 960)),
    "full_resolution_down": ((360, 480), (360, 480), (360, 480), (272, 320)),
    "odd": ((7, 5), (13, 40), (9, 33), (3, 100)),
}


def _chain(name: str) -> LogitChain:
    return LogitChain.of(*GEOMETRIES[name])


def torch_chain(logits: np.ndarray, chain: LogitChain) -> torch.Tensor:
    """The reference: the chain as the models do it, in torch (K x H x W interpolated logits)."""
    tensor = torch.from_numpy(logits)[None]
    upsampled = (chain.rows.upsampled, chain.cols.upsampled)
    if upsampled != chain.low_shape:
        tensor = F.interpolate(tensor, size=upsampled, mode="bilinear", align_corners=False)
    tensor = tensor[..., : chain.rows.cropped, : chain.cols.cropped]
    if chain.out_shape != tensor.shape[-2:]:
        tensor = F.interpolate(tensor, size=chain.out_shape, mode="bilinear", align_corners=False)
    return tensor[0]


def smooth_logits(shape: tuple[int, int], classes: int = 11, seed: int = 0) -> np.ndarray:
    """Logit fields with regions and boundaries, like a model's (random coarse fields upsampled)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, max(2, shape[0] // 12), max(2, shape[1] // 12),
                         generator=generator)  # fmt: skip
    fine = F.interpolate(coarse, size=shape, mode="bicubic", align_corners=False)
    return (4 * fine[0]).numpy().astype(np.float32)


def check_against_torch(logits: np.ndarray, chain: LogitChain) -> tuple[float, float]:
    """(share of pixels agreeing with torch, the largest top-2 margin where they do not)."""
    reference = torch_chain(logits, chain)
    got = class_ids_from_logits(logits, chain)
    assert got.shape == chain.out_shape and got.dtype == np.uint8
    wrong = got != reference.argmax(0).numpy()
    top2 = reference.topk(2, dim=0).values if len(logits) > 1 else None
    margin = 0.0
    if wrong.any():
        margin = float((top2[0] - top2[1]).numpy()[wrong].max())
    return 1 - wrong.mean(), margin


@pytest.mark.parametrize("name", GEOMETRIES)
def test_random_fields_agree_with_torch(name):
    chain = _chain(name)
    logits = np.random.default_rng(1).standard_normal((11, *chain.low_shape)).astype(np.float32)
    share, margin = check_against_torch(logits, chain)
    assert share >= 0.9999
    assert margin < 1e-5  # the only disagreements are float32 near-ties


@pytest.mark.parametrize("name", GEOMETRIES)
def test_smooth_fields_agree_exactly_without_near_ties(name):
    chain = _chain(name)
    for seed in range(3):
        share, margin = check_against_torch(smooth_logits(chain.low_shape, seed=seed), chain)
        assert margin < 1e-5, f"a pixel whose top two logits differ by {margin} disagrees"
        assert share >= 0.99999


def test_real_logits_of_the_shipped_model_agree_with_torch(data_dir):
    from stac_edge_segmenter.loading import load_model
    from stac_eval.frame_dirs import read_frames

    model = load_model(device="cpu")
    frames = read_frames(data_dir / "camvid" / "val", limit=2, stride=40).images
    with torch.inference_mode():
        for frame in frames:
            x = torch.from_numpy(frame[None]).permute(0, 3, 1, 2).float()
            logits = model.low_res_logits(x)[0].numpy()
            for name in ("lite0_frame_480x360", "lite0_frame_960x540"):
                share, margin = check_against_torch(logits, _chain(name))
                assert share >= 0.9999 and margin < 1e-4


def test_one_pixel_and_one_class():
    chain = LogitChain.of((1, 1), out=(5, 7))
    logits = np.full((1, 1, 1), -3.0, np.float32)
    assert (class_ids_from_logits(logits, chain) == 0).all()
    share, _ = check_against_torch(np.ones((1, 4, 4), np.float32), LogitChain.of((4, 4), (9, 9)))
    assert share == 1


def test_ties_go_to_the_lowest_class_id():
    chain = _chain("lite0_frame_960x540")
    logits = np.zeros((11, *chain.low_shape), np.float32)
    assert (class_ids_from_logits(logits, chain) == 0).all()
    logits[[4, 7]] = 1.0  # two classes tied everywhere
    assert (class_ids_from_logits(logits, chain) == 4).all()
    logits[7, :, :60] = 2.0  # class 7 wins on the left; the mix near the edge is a tie or 7
    labels = class_ids_from_logits(logits, chain)
    assert set(np.unique(labels)) == {4, 7}
    assert (labels == torch_chain(logits, chain).argmax(0).numpy()).all()


def test_a_class_second_everywhere_can_win_in_the_mix():
    """Two low-res pixels won by classes 0 and 1, class 2 a close second at both: between them
    class 2 is highest, which no argmax of the low-res pixels says."""
    logits = np.array([[[10.0, 0.0]], [[0.0, 10.0]], [[9.0, 9.0]]], np.float32)
    chain = LogitChain.of((1, 2), out=(1, 8))
    labels = class_ids_from_logits(logits, chain)
    assert 2 in labels
    assert (labels == torch_chain(logits, chain).argmax(0).numpy()).all()


def test_taps_are_the_composed_interpolation():
    axis = AxisChain(low=96, upsampled=384, cropped=360, out=540)
    taps = axis.taps()
    assert taps.start.shape == taps.count.shape == (540,)
    assert np.allclose(taps.weights.sum(1), 1, atol=1e-6)
    assert (taps.weights >= 0).all() and taps.width <= 4
    assert (taps.start + taps.count <= 96).all()
    identity = AxisChain(low=10, upsampled=10, cropped=10, out=10).taps()
    assert (identity.start == np.arange(10)).all() and (identity.count == 1).all()
    assert not taps.weights.flags.writeable  # shared through the cache


def test_chains_round_trip_through_integers():
    chain = _chain("lite0_frame_960x540")
    values = chain.to_ints()
    assert len(values) == CHAIN_INTS and all(type(v) is int for v in values)
    assert values == (96, 384, 360, 540, 120, 480, 480, 960)
    assert LogitChain.from_ints(values) == chain
    assert LogitChain.from_ints(np.array(values, np.int64)) == chain
    assert LogitChain.of((3, 4)).to_ints() == (3, 3, 3, 3, 4, 4, 4, 4)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((96, 384, 360, 540, 120, 480, 480), "8 integers"),
        ((96, 384, 360, 540, 120, 480, 480, 960, 1), "8 integers"),
        ((0, 384, 360, 540, 120, 480, 480, 960), "low must be an integer"),
        ((96, 384, 360, 540, 120, 480, 480, -960), "out must be an integer"),
        ((96, 384, 360, 540, 120, 480, 480, 16385), "1..16384"),
        ((96, 384, 360.0, 540, 120, 480, 480, 960), "cropped must be an integer"),
        ((96, 384, True, 540, 120, 480, 480, 960), "cropped must be an integer"),
        ((96, 384, 385, 540, 120, 480, 480, 960), "cannot crop 385 from 384"),
    ],
)
def test_bad_chains_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        LogitChain.from_ints(values)


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((11, 96, 120), np.float64), "expected float32"),
        (np.zeros((11, 96, 120), np.float16), "expected float32"),
        (np.zeros((96, 120), np.float32), "expected float32 K x H x W"),
        (np.zeros((1, 11, 96, 120), np.float32), "expected float32 K x H x W"),
        (np.zeros((11, 120, 96), np.float32), "logits of 120x96 for a chain from 96x120"),
        (np.zeros((0, 96, 120), np.float32), "0 classes"),
        (np.zeros((257, 96, 120), np.float32), "257 classes"),
    ],
)
def test_bad_logits_are_refused(logits, message):
    with pytest.raises(ValueError, match=message):
        class_ids_from_logits(logits, _chain("lite0_frame_480x360"))


def test_non_finite_logits_and_non_chains_are_refused():
    chain = _chain("odd")
    logits = np.zeros((3, *chain.low_shape), np.float32)
    logits[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        class_ids_from_logits(logits, chain)
    with pytest.raises(ValueError, match="expected a LogitChain"):
        class_ids_from_logits(np.zeros((3, 7, 5), np.float32), chain.to_ints())


def test_non_contiguous_logits_give_the_same_labels():
    chain = _chain("lite0_frame_960x540")
    logits = smooth_logits(chain.low_shape)
    view = np.asfortranarray(logits)
    assert (class_ids_from_logits(view, chain) == class_ids_from_logits(logits, chain)).all()


def test_the_extension_refuses_taps_outside_the_logits():
    """The C++ checks its tables itself: no index it is handed reads outside the logits."""
    taps = AxisChain(4, 4, 4, 4).taps()
    logits = np.zeros((2, 4, 4), np.float32)
    out = np.empty((4, 4), np.uint8)
    start = taps.start.copy()
    start[-1] = 4
    args = [logits, 2, 4, 4, taps.start, taps.count, taps.weights, 1, 4,
            taps.start, taps.count, taps.weights, 1, 4, out]  # fmt: skip
    _logit_labels.class_ids(*args)
    with pytest.raises(ValueError, match="start 4, count 1 outside 4"):
        _logit_labels.class_ids(*args[:4], start, *args[5:])
    with pytest.raises(ValueError, match="weights"):
        _logit_labels.class_ids(*args[:6], taps.weights[:2], *args[7:])
    with pytest.raises(ValueError, match="out"):
        _logit_labels.class_ids(*args[:-1], np.empty((3, 4), np.uint8))
    with pytest.raises(BufferError):
        _logit_labels.class_ids(*args[:-1], bytes(16))
