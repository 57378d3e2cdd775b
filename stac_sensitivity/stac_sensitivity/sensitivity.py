"""STAC sensitivity: the gradient of the DNN's loss on its own prediction, per macroblock.

The edge has no ground truth, so it takes the DNN's prediction y^ = argmax DNN(x) as the label
and differentiates L = cross-entropy(DNN(x), y^) with respect to the input pixels x. Pixels where
a small change would move the loss (uncertain regions, thin structures) get large gradients;
pixels the DNN is sure of get tiny ones. One forward and one backward pass serve a whole batch:
the loss is a sum over frames, so each frame's gradient is its own, whatever else is in the batch.

Optional per-class weights (fixed offline, see calibration.py) scale each pixel's term by the
weight of its predicted class. mIoU averages classes, so a pixel of a rare class (pole, sign)
moves the score far more than a pixel of road; plain cross-entropy weighs them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as functional

from stac_sensitivity.macroblocks import macroblock_l1

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
) -> SensitivityResult:
    """Per-macroblock sensitivity of a batch of uint8 NxHxWx3 RGB frames, one backward pass."""
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
    loss = functional.cross_entropy(logits, predicted, weight=weight, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    return SensitivityResult(
        macroblock_sensitivity=macroblock_l1(gradient).double().cpu().numpy(),
        class_ids=predicted.to(torch.uint8).cpu().numpy(),
    )


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
