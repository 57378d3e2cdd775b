"""The edge's online step: a decoded frame in, a QP map out (gradients + level picking only).

Everything that can be fixed ahead (level bank, dmax, offset scale, class weights, the rate
model, the encoder's AQ strength) comes from the offline calibration stored beside the model
weights (see calibration.py); online the edge runs one forward + backward pass, measures each
macroblock's AC energy on the same decoded frame (for the rate-aware rule; on a video stream
the energy of its residual against the picture before it, what a P-frame pays) and picks a
level per macroblock. The robot must encode with the calibration's x264 AQ strength (`aq_strength`,
carried by every QPMap) for the map to mean what the calibration measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_codec.qp_map import MACROBLOCK_SIZE, QPLevelMap
from stac_edge_segmenter.loading import SegmentationModel
from stac_sensitivity.allocation import allocate
from stac_sensitivity.calibration import find_calibration, load_calibration
from stac_sensitivity.macroblocks import macroblock_ac_energy, macroblock_residual_energy
from stac_sensitivity.sensitivity import compute_sensitivity


@dataclass(frozen=True)
class QPMapResult:
    """A map for one frame: the allocation (levels + shift), its offsets and its cost, and the
    DNN's class ids (HxW uint8) from the same forward pass, free with the map;
    macroblock_sensitivity (rows, cols) is what the allocation was made from (evaluation
    baselines allocate it their own way)."""

    allocation: QPLevelMap
    offsets_qp: np.ndarray
    compute_ms: float
    class_ids: np.ndarray
    macroblock_sensitivity: np.ndarray | None = None


MAX_BLOCK_MB = 16


class QPMapComputer:
    """Computes QP maps for decoded frames with a model and its calibration.

    block_mb: the map's cell, in macroblocks a side: 1 = every macroblock its own offset; N > 1
    = the sensitivity (and, with pool_energy, the rate term) averaged over NxN macroblocks, so
    the offsets follow cells of that size; 0 = auto, the frame's scale over the model's working
    resolution (round(max(width / input width, height / input height)), at least 1): what one
    model pixel covers. The sensitivity the result carries is the pooled one, so every map
    method built on it (STAC's rule, the two-level map) sees the same cells."""

    def __init__(
        self,
        model: SegmentationModel,
        calibration_path: str | Path | None = None,
        budget_shift_qp: int = 0,
        block_mb: int = 1,
        pool_energy: bool = True,
    ) -> None:
        if not 0 <= block_mb <= MAX_BLOCK_MB:
            raise ValueError(f"block_mb must be in 0..{MAX_BLOCK_MB} (0 = auto), got {block_mb}")
        self.model = model
        self.block_mb = int(block_mb)
        self.pool_energy = bool(pool_energy)
        if calibration_path:
            self.calibration = load_calibration(calibration_path)
            self.calibration_path = Path(calibration_path)
        else:
            self.calibration, self.calibration_path = find_calibration(model.spec.weights)
        self._allocation_config = self.calibration.allocation_config(budget_shift_qp)

    @property
    def levels_qp(self) -> tuple[int, ...]:
        return self._allocation_config.levels_qp

    @property
    def max_offset_qp(self) -> int:
        return self._allocation_config.max_offset_qp

    @property
    def budget_shift_qp(self) -> int:
        return self._allocation_config.budget_shift_qp

    @property
    def aq_strength(self) -> float:
        """x264 AQ strength the robot must encode with (0.001 = the map alone)."""
        return self.calibration.aq_strength

    def compute(
        self, frame_rgb: np.ndarray, reference_rgb: np.ndarray | None = None
    ) -> QPMapResult:
        """One HxWx3 uint8 RGB frame -> its QP map (rows, cols) int8.

        reference_rgb: the stream's decoded picture before this one, when the map will steer
        P-frames (stream and keyframe mode): the rate term then takes each macroblock's
        motion-compensated residual energy, what a P-frame pays, instead of its own AC energy,
        what an I-frame pays (macroblocks.macroblock_residual_energy). Ignored when its size
        differs (a new stream) or the rule is not rate-aware."""
        started = time.perf_counter()
        result = compute_sensitivity(
            self.model.logits,
            frame_rgb[None],
            device=self.model.device,
            class_weights=self.calibration.class_weights,
            class_weight_exponent=self.calibration.class_weight_exponent,
        )
        energy = None
        if self._allocation_config.rate_aware:
            if reference_rgb is not None and reference_rgb.shape == frame_rgb.shape:
                energy = macroblock_residual_energy(frame_rgb, reference_rgb)
            else:
                energy = macroblock_ac_energy(frame_rgb)
        sensitivity = result.macroblock_sensitivity[0]
        block = self.cell_mb(frame_rgb.shape[1], frame_rgb.shape[0])
        if block > 1:
            sensitivity = pooled(sensitivity, block)
            if energy is not None and self.pool_energy:
                energy = pooled(energy, block)
        allocation = allocate(sensitivity, self._allocation_config, energy)
        elapsed_ms = 1e3 * (time.perf_counter() - started)
        return QPMapResult(
            allocation,
            allocation.offsets_qp,
            elapsed_ms,
            result.class_ids[0],
            sensitivity,
        )

    def cell_mb(self, width: int, height: int) -> int:
        """The map's cell side in macroblocks for a frame of this size (see block_mb)."""
        if self.block_mb:
            return self.block_mb
        working = self.model.spec.input_size
        if working is None:
            return 1
        return max(1, round(max(width / working[0], height / working[1])))


def pooled(values: np.ndarray, block: int) -> np.ndarray:
    """Each value replaced by the mean of its block x block cell (cells aligned at the top
    left; the last row and column of cells take what is left)."""
    rows, cols = values.shape
    result = np.empty(values.shape, np.float64)
    for top in range(0, rows, block):
        for left in range(0, cols, block):
            cell = values[top : top + block, left : left + block]
            result[top : top + block, left : left + block] = cell.mean()
    return result


def qp_heatmap(frame_rgb: np.ndarray, offsets_qp: np.ndarray, max_abs_qp: int) -> np.ndarray:
    """The frame with its QP map blended on top: red = finer (more bits), blue = coarser."""
    height, width = frame_rgb.shape[:2]
    scaled = np.clip(127.5 - 127.5 * offsets_qp.astype(np.float32) / max(max_abs_qp, 1), 0, 255)
    colours = cv2.applyColorMap(scaled.astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    rows, cols = offsets_qp.shape
    upscaled = cv2.resize(
        colours, (cols * MACROBLOCK_SIZE, rows * MACROBLOCK_SIZE), interpolation=cv2.INTER_NEAREST
    )
    return cv2.addWeighted(frame_rgb, 0.5, upscaled[:height, :width], 0.5, 0.0)
