"""Carry a QP map forward in time with dense optical flow, on the robot.

The edge computes a map from frame s and it reaches the robot a few frames later; meanwhile
the scene moves. STAC propagates its strategy with optical flow so that the bits stay on the
content the DNN found sensitive.

How: the warper keeps, for every macroblock centre of the current frame, the (float) pixel
position in the map's *anchor* frame that its content came from (`frame_flow.PositionField`).
A map that arrives k frames late is traced back across the k per-frame flows; each new frame
composes the positions with that frame's backward flow; the map is read from the anchor map at
the rounded positions. Composing float positions (instead of re-warping an integer map every
frame) keeps sub-macroblock motion from being rounded away. The flow itself is computed once
per camera frame by `frame_flow.FrameFlow` and shared with the mask warper.
"""

from __future__ import annotations

import math

import numpy as np

from stac_codec.qp_map import MACROBLOCK_SIZE, macroblock_grid
from stac_encoder.frame_flow import FlowConfig, FrameFlow, PositionField

# The flow settings were once the warper's own; the name stays for callers that use it.
WarpConfig = FlowConfig


class QPMapWarper:
    """Propagates the newest QP map to the current frame of a shared FrameFlow."""

    def __init__(self, flow: FrameFlow) -> None:
        self.flow = flow
        self.width, self.height = flow.width, flow.height
        self.rows, self.cols = macroblock_grid(flow.width, flow.height)
        half = MACROBLOCK_SIZE / 2
        self._field = PositionField(
            flow, self.rows, self.cols, half, half, MACROBLOCK_SIZE, MACROBLOCK_SIZE
        )
        self._anchor_map: np.ndarray | None = None
        self._traced = False  # whether the map's frame was within the flow's reach

    @property
    def anchor_seq(self) -> int | None:
        """The flow frame the current map was computed on."""
        return self._field.anchor_seq

    def set_map(self, qp_map: np.ndarray, source_seq: int) -> bool:
        """Adopt a new map computed on flow frame `source_seq`; warp it to the current frame.

        Returns True when the map is carried from its source frame (or is of the current
        frame), False when that frame is no longer (or not) in the flow's history and the map
        is used as it is.
        """
        if qp_map.shape != (self.rows, self.cols):
            raise ValueError(f"QP map shape {qp_map.shape} != ({self.rows}, {self.cols})")
        self._anchor_map = qp_map.copy()
        self._traced = self._field.anchor(source_seq)
        return self._traced

    def current_map(self) -> np.ndarray | None:
        """The anchor map read at the propagated positions, for the flow's current frame."""
        if self._anchor_map is None or self._field.x is None:
            return None
        self._field.advance()
        cols = np.clip((self._field.x // MACROBLOCK_SIZE).astype(int), 0, self.cols - 1)
        rows = np.clip((self._field.y // MACROBLOCK_SIZE).astype(int), 0, self.rows - 1)
        return self._anchor_map[rows, cols]

    def displacement_px(self) -> float:
        """How far the content has moved since the map's frame: the mean distance (full-res
        pixels) from each macroblock centre of the current frame to where its content was
        then; infinite when that frame was out of the flow's reach (older than its history,
        or unknown): how far it moved cannot be told, only that it is old."""
        field = self._field
        if not self._traced:
            return math.inf
        if field.x is None or not field.warped:
            return 0.0
        return float(np.hypot(field.x - field.grid_x, field.y - field.grid_y).mean())

    def macroblock_motion_px(self, source_seq: int) -> np.ndarray:
        """Per macroblock of the flow's current frame, how far (full-res pixels) its content
        moved since flow frame `source_seq`: the step flow when that is the frame before,
        else traced back (`FrameFlow.trace_back`); infinite where that frame is out of the
        flow's reach."""
        flow, field = self.flow, self._field
        current = flow.current_seq
        if current is None or source_seq > current:
            return np.full((self.rows, self.cols), np.inf, np.float32)
        step = flow.step_flow(current) if source_seq == current - 1 else None
        if step is not None:
            dx, dy = flow.sample_flow(step, field.grid_x, field.grid_y)
            return np.hypot(dx, dy)
        traced = flow.trace_back(field.grid_x, field.grid_y, source_seq)
        if traced is None:
            return np.full((self.rows, self.cols), np.inf, np.float32)
        return np.hypot(traced[0] - field.grid_x, traced[1] - field.grid_y)

    def clear(self) -> None:
        self._anchor_map = None
        self._traced = False
        self._field.reset()
