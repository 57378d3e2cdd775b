"""Carry a QP map forward in time with dense optical flow (DIS), on the robot.

The edge computes a map from frame s and it reaches the robot a few frames later; meanwhile
the scene moves. STAC propagates its strategy with optical flow so that the bits stay on the
content the DNN found sensitive.

How: the warper keeps, for every macroblock of the current frame, the (float) pixel position in
the map's *anchor* frame that its content came from. Each new frame composes that position
field with the backward flow to the previous frame, sampled at macroblock centres; the map is
then read from the anchor map at the rounded positions. Composing float positions (instead of
re-warping an integer map every frame) keeps sub-macroblock motion from being rounded away.
Flow runs on a downscaled grey image (DIS ultrafast preset): a few ms per frame at 960x540.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from stac_codec.qp_map import MACROBLOCK_SIZE, macroblock_grid


@dataclass(frozen=True)
class WarpConfig:
    """flow_width_px: width the grey frames are downscaled to for flow (0 = full size);
    history_frames: how many past frames are kept to warp a late map from its source frame."""

    flow_width_px: int = 320
    history_frames: int = 64


class QPMapWarper:
    """Propagates the newest QP map to each new frame with DIS optical flow."""

    def __init__(self, width: int, height: int, config: WarpConfig | None = None) -> None:
        self.config = config or WarpConfig()
        self.width, self.height = width, height
        self.rows, self.cols = macroblock_grid(width, height)
        scale = 1.0
        if self.config.flow_width_px and width > self.config.flow_width_px:
            scale = self.config.flow_width_px / width
        self._scale = scale
        self._flow_size = (max(8, round(width * scale)), max(8, round(height * scale)))
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        ys, xs = np.mgrid[0 : self.rows, 0 : self.cols].astype(np.float32)
        self._centres = np.stack(
            [
                np.minimum((xs + 0.5) * MACROBLOCK_SIZE, width - 1),
                np.minimum((ys + 0.5) * MACROBLOCK_SIZE, height - 1),
            ],
            axis=-1,
        )
        self._history: OrderedDict[int, np.ndarray] = OrderedDict()
        self._current_seq: int | None = None
        self._anchor_map: np.ndarray | None = None
        self._positions: np.ndarray | None = None

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return cv2.resize(grey, self._flow_size, interpolation=cv2.INTER_AREA)

    def _backward_flow_at_centres(self, grey_now: np.ndarray, grey_then: np.ndarray) -> np.ndarray:
        """Displacement (full-res pixels) from each macroblock centre now to where it was then."""
        flow = self._dis.calc(grey_now, grey_then, None)
        small = self._centres * self._scale
        sampled = np.stack(
            [
                cv2.remap(flow[..., c], small[..., 0], small[..., 1], cv2.INTER_LINEAR)
                for c in range(2)
            ],
            axis=-1,
        )
        return sampled / self._scale

    def _sample_positions(self, positions: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Bilinear lookup of the position field at full-res pixel coordinates `at`."""
        grid = at / MACROBLOCK_SIZE - 0.5
        return np.stack(
            [
                cv2.remap(
                    positions[..., c],
                    grid[..., 0],
                    grid[..., 1],
                    cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                )
                for c in range(2)
            ],
            axis=-1,
        )

    def add_frame(self, frame_seq: int, frame: np.ndarray) -> None:
        """Register the next camera frame (HxWx3 RGB or HxW grey) and advance the map."""
        grey = self._grey(frame)
        previous = self._history.get(self._current_seq) if self._current_seq is not None else None
        if self._positions is not None and previous is not None:
            flow = self._backward_flow_at_centres(grey, previous)
            self._positions = self._sample_positions(self._positions, self._centres + flow)
        self._history[frame_seq] = grey
        while len(self._history) > self.config.history_frames:
            self._history.popitem(last=False)
        self._current_seq = frame_seq

    def set_map(self, qp_map: np.ndarray, source_frame_seq: int) -> bool:
        """Adopt a new map computed on frame `source_frame_seq`; warp it to the current frame.

        Returns True when the map was warped from its source frame, False when that frame is
        no longer (or not) in the history and the map is used as it is.
        """
        if qp_map.shape != (self.rows, self.cols):
            raise ValueError(f"QP map shape {qp_map.shape} != ({self.rows}, {self.cols})")
        self._anchor_map = qp_map.copy()
        source = self._history.get(source_frame_seq)
        current = self._history.get(self._current_seq) if self._current_seq is not None else None
        if source is None or current is None or source_frame_seq == self._current_seq:
            self._positions = self._centres.copy()
            return False
        self._positions = self._centres + self._backward_flow_at_centres(current, source)
        return True

    def current_map(self) -> np.ndarray | None:
        """The anchor map read at the propagated positions, for the current frame."""
        if self._anchor_map is None or self._positions is None:
            return None
        cols = np.clip((self._positions[..., 0] // MACROBLOCK_SIZE).astype(int), 0, self.cols - 1)
        rows = np.clip((self._positions[..., 1] // MACROBLOCK_SIZE).astype(int), 0, self.rows - 1)
        return self._anchor_map[rows, cols]
