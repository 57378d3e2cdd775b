"""STAC sensitivity: the gradient of the DNN's loss on its own prediction, per macroblock.

The edge has no ground truth, so it takes the DNN's prediction y^ = argmax DNN(x) as the label
and differentiates L = cross-entropy(DNN(x), y^) with respect to the input pixels x. Pixels where
a small change would move the loss (uncertain regions, thin structures) get large gradients;
pixels the DNN is sure of get tiny ones. One forward and one backward pass serve a whole batch:
the loss is a sum over frames, so each frame's gradient is its own, whatever else is in the batch.

Optional per-class weights scale each pixel's term by the weight of its predicted class. mIoU
averages classes, so a pixel of a rare class (pole, sign) moves the score far more than a pixel
of road; plain cross-entropy weighs them alike. Two forms: fixed weights (a list), or weights
from the frame's own prediction, frequency^-exponent (the exponent fixed offline, see
calibration.py). The second needs no labels and follows the content: fixed weights fitted to
the class frequencies of one set of frames carry that set's class balance to every other one
(fixed weights fitted on highway and plaza video ranked CamVid val's macroblocks worse than no
weights: the two-level map measured -10.8% vs uniform with them, -20.4% without). Frequencies
are floored at
CLASS_FREQUENCY_FLOOR so that a few stray pixels of a class cannot take over the frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as functional

from stac_sensitivity.macroblocks import macroblock_l1

# A class covering less than this fraction of the frame counts as covering this fraction when
# its weight is computed (0.1%: under one macroblock in a 480x360 frame).
CLASS_FREQUENCY_FLOOR = 1e-3

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""Float32 Nx3xHxW RGB in 0..255 (differentiable) -> NxKxHxW logits."""


@dataclass(frozen=True)
class SensitivityResult:
    """What one forward + backward pass yields for a batch.

    macroblock_sensitivity: float64 (N, rows, cols), L1 of dL/dx per 16x16 macroblock
        (x in 0..255 pixel units).
    class_ids: uint8 (N, H, W), the DNN's prediction on the same frames (free with the pass).
    """

    macroblock_sensitivity: np.ndarray
    class_ids: np.ndarray


def compute_sensitivity(
    logits_fn: LogitsFn,
    frames_rgb: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    class_weights: Sequence[float] | None = None,
    class_weight_exponent: float = 0.0,
) -> SensitivityResult:
    """Per-macroblock sensitivity of a batch of uint8 NxHxWx3 RGB frames, one backward pass.

    class_weights: fixed per-class weights; class_weight_exponent > 0: each frame's pixels of
    class c weighted by (its frequency of c in the prediction)^-exponent (both: the product)."""
    if frames_rgb.ndim != 4 or frames_rgb.shape[3] != 3 or frames_rgb.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 NxHxWx3 RGB, got {frames_rgb.shape} {frames_rgb.dtype}"
        )
    pixels = torch.from_numpy(frames_rgb).to(device).permute(0, 3, 1, 2).float()
    pixels.requires_grad_(True)
    logits = logits_fn(pixels)
    if (
        logits.ndim != 4
        or logits.shape[0] != pixels.shape[0]
        or logits.shape[2:] != pixels.shape[2:]
    ):
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match the frames")
    predicted = logits.argmax(dim=1)
    weight = _class_weight_tensor(class_weights, logits.shape[1], logits.device)
    if class_weight_exponent:
        pixel_weight = frame_class_weights(predicted, logits.shape[1], class_weight_exponent)
        per_pixel = functional.cross_entropy(logits, predicted, weight=weight, reduction="none")
        loss = (per_pixel * pixel_weight).sum()
    else:
        loss = functional.cross_entropy(logits, predicted, weight=weight, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    return SensitivityResult(
        macroblock_sensitivity=macroblock_l1(gradient).double().cpu().numpy(),
        class_ids=predicted.to(torch.uint8).cpu().numpy(),
    )


def frame_class_weights(predicted: torch.Tensor, num_classes: int, exponent: float):
    """Per-pixel weights (N, H, W): max(f, floor)^-exponent of the pixel's predicted class, f
    its share of the frame's pixels, scaled to a pixel mean of 1 in every frame."""
    if not np.isfinite(exponent) or exponent < 0:
        raise ValueError(f"class_weight_exponent must be finite and >= 0, got {exponent}")
    batch = predicted.shape[0]
    flat = predicted.reshape(batch, -1)
    counts = torch.zeros(batch, num_classes, device=predicted.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
    frequency = counts / flat.shape[1]
    weights = frequency.clamp_min(CLASS_FREQUENCY_FLOOR) ** -exponent
    weights = weights / (frequency * weights).sum(dim=1, keepdim=True)
    return torch.gather(weights, 1, flat).reshape(predicted.shape)


def _class_weight_tensor(
    class_weights: Sequence[float] | None, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weight = torch.as_tensor(list(class_weights), dtype=torch.float32, device=device)
    if weight.shape != (num_classes,):
        raise ValueError(f"{len(weight)} class weights for a {num_classes}-class model")
    if not torch.all(torch.isfinite(weight)) or torch.any(weight < 0):
        raise ValueError("class weights must be finite and >= 0")
    return weight
