"""Dense optical flow on the robot, once per camera frame, shared by everything carried forward.

The robot carries three things from older frames to the frame it holds now: the edge's QP map
(`qp_map_warp`), the edge's newest class-id mask (`mask_warp`) and, in keyframe mode, the last
keyframe it sent (`keyframes`, to tell whether flow still explains the scene). All three need
to know, for a point of the current frame, where its content was some frames ago. This module
computes one backward flow per camera frame (DIS on a downscaled grey image, from frame n to
frame n-1) and keeps the last `history_frames` of them, so that:

* a state anchored to an older frame s (a map or mask that arrives k frames late) is carried
  to the current frame n across exactly the k frames it missed (`PositionField.anchor`): by
  one direct flow from n back to s, computed once when the state arrives with a finer DIS
  preset (`anchor_preset`), or by composing the per-frame flows s+1..n;
* a state already anchored is advanced by one composition step per new frame
  (`PositionField.advance`), so its cost does not grow with its age.

Why a direct flow on arrival: composing k per-frame flows accumulates their errors. On the
dashcam clip (solidWhiteRight, 960x540, masks of frame t-d held at frame t, mIoU against the
model's output on frame t; held: .552 at d=5, .511 at d=10) the per-frame ultrafast flows at
320 px composed gave .594 / .533, one direct ultrafast flow .596 / .547, and one direct
"medium" flow .613 / .571 (480 px: .617 / .579, at twice the cost). A direct flow costs one DIS
call per arriving map or mask (a few a second, ~9 ms each at 320 px on this busy machine),
not one per camera frame, and the map and the mask of one edge pass share it.

Coordinates: full-resolution pixel coordinates (x right, y down, pixel centres at integers);
the flow image has `flow_size` pixels and maps full-res x to (x + 0.5) * scale - 0.5.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class FlowConfig:
    """flow_width_px: width the grey frames are downscaled to (0 = full size);
    history_frames: how many past frames (grey images and flows) are kept, the most a late
    map or mask can be carried across; preset: the DIS preset."""

    flow_width_px: int = 320
    history_frames: int = 64
    preset: str = "ultrafast"
    anchor_direct: bool = True
    anchor_preset: str = "medium"

    def __post_init__(self) -> None:
        if self.flow_width_px < 0:
            raise ValueError(f"flow_width_px must be >= 0, got {self.flow_width_px}")
        if self.history_frames < 1:
            raise ValueError(f"history_frames must be >= 1, got {self.history_frames}")
        for preset in (self.preset, self.anchor_preset):
            if preset not in DIS_PRESETS:
                raise ValueError(f"preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")


class FrameFlow:
    """Backward DIS flow of every camera frame to the one before it, and the grey frames.

    Frames are identified by their frame_seq (any increasing integers); a frame whose number
    does not follow the previous one by 1 starts a new chain (no flow across the gap).
    Not thread-safe: one caller.
    """

    def __init__(self, width: int, height: int, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.config.preset])
        self._anchor_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.config.anchor_preset])
        self._direct: tuple[int, int, np.ndarray] | None = None  # (now, then, flow)
        self._greys: OrderedDict[int, np.ndarray] = OrderedDict()
        self._flows: OrderedDict[int, np.ndarray] = OrderedDict()  # seq -> flow seq -> seq-1
        self.current_seq: int | None = None
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Start over for frames of another size (the history is dropped)."""
        if width < 2 or height < 2:
            raise ValueError(f"frame size must be at least 2x2, got {width}x{height}")
        self.width, self.height = width, height
        self._greys.clear()
        self._flows.clear()
        self._direct = None
        self.current_seq = None
        scale = 1.0
        if self.config.flow_width_px and width > self.config.flow_width_px:
            scale = self.config.flow_width_px / width
        self.flow_size = (max(8, round(width * scale)), max(8, round(height * scale)))
        # per axis: flow px per full-res px (the rounding of flow_size makes them differ)
        self.scale_x = self.flow_size[0] / width
        self.scale_y = self.flow_size[1] / height

    def grey_of(self, frame: np.ndarray) -> np.ndarray:
        """An HxWx3 RGB (or HxW grey) frame as the downscaled grey image flow runs on."""
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"frame of {frame.shape[1]}x{frame.shape[0]} px, flow set up for "
                f"{self.width}x{self.height}"
            )
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.flow_size == (self.width, self.height):
            return np.ascontiguousarray(grey)
        return cv2.resize(grey, self.flow_size, interpolation=cv2.INTER_AREA)

    def add_frame(self, frame_seq: int, frame: np.ndarray) -> np.ndarray | None:
        """Register the next camera frame; returns its backward flow (flow-res pixels, HxWx2
        float32) to the previous frame, or None when it starts a chain."""
        grey = self.grey_of(frame)
        previous = self._greys.get(frame_seq - 1)
        flow = None
        if previous is not None and self.current_seq == frame_seq - 1:
            flow = self._dis.calc(grey, previous, None)
            self._flows[frame_seq] = flow
        else:
            self._flows.clear()
            self._greys.clear()
        self._greys[frame_seq] = grey
        for store in (self._greys, self._flows):
            while len(store) > self.config.history_frames:
                store.popitem(last=False)
        self.current_seq = frame_seq
        return flow

    def grey(self, frame_seq: int) -> np.ndarray | None:
        """The downscaled grey image of a frame still in the history."""
        return self._greys.get(frame_seq)

    def step_flow(self, frame_seq: int) -> np.ndarray | None:
        """The backward flow from frame `frame_seq` to the frame before it, if still held."""
        return self._flows.get(frame_seq)

    def can_reach(self, source_seq: int) -> bool:
        """Whether every flow from the current frame back to `source_seq` is held."""
        current = self.current_seq
        if current is None or source_seq > current:
            return False
        return all(seq in self._flows for seq in range(source_seq + 1, current + 1))

    def sample_flow(self, flow: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple:
        """The flow at full-res points (x, y) (float32 arrays of one shape), in full-res
        pixels: (dx, dy). Points outside the frame take the nearest border value."""
        fx = (x + 0.5) * self.scale_x - 0.5
        fy = (y + 0.5) * self.scale_y - 0.5
        dx = cv2.remap(flow[..., 0], fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        dy = cv2.remap(flow[..., 1], fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return dx / self.scale_x, dy / self.scale_y

    def direct_flow(self, source_seq: int) -> np.ndarray | None:
        """Backward flow from the current frame straight to frame `source_seq` (anchor
        preset), computed once per pair; None when that frame's grey image is not held."""
        then = self._greys.get(source_seq)
        now = self._greys.get(self.current_seq) if self.current_seq is not None else None
        if then is None or now is None:
            return None
        cached = self._direct
        if cached is not None and cached[:2] == (self.current_seq, source_seq):
            return cached[2]
        flow = self._anchor_dis.calc(now, then, None)
        self._direct = (self.current_seq, source_seq, flow)
        return flow

    def trace_back(self, x: np.ndarray, y: np.ndarray, source_seq: int) -> tuple | None:
        """Where the points (x, y) of the current frame were in frame `source_seq`: by the
        direct flow (anchor_direct) or by composing the per-frame flows; None when the frame
        is out of reach (no longer held)."""
        if self.config.anchor_direct and self.current_seq is not None:
            if source_seq == self.current_seq:
                return x.astype(np.float32, copy=True), y.astype(np.float32, copy=True)
            flow = self.direct_flow(source_seq) if source_seq < self.current_seq else None
            if flow is not None:
                dx, dy = self.sample_flow(flow, x, y)
                return x + dx, y + dy
        if not self.can_reach(source_seq):
            return None
        x, y = x.astype(np.float32, copy=True), y.astype(np.float32, copy=True)
        for seq in range(self.current_seq, source_seq, -1):
            dx, dy = self.sample_flow(self._flows[seq], x, y)
            x += dx
            y += dy
        return x, y


class PositionField:
    """For a fixed regular grid of points of the current frame, their positions in an anchor
    frame; advanced by one flow composition per camera frame.

    The grid: x = x0 + i * dx (i < cols), y = y0 + j * dy (j < rows), full-res pixels.
    """

    def __init__(
        self, flow: FrameFlow, rows: int, cols: int, x0: float, y0: float, dx: float, dy: float
    ) -> None:
        self.flow = flow
        self.rows, self.cols = rows, cols
        self._origin = (x0, y0)
        self._step = (dx, dy)
        ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self.grid_x = (x0 + xs * dx).astype(np.float32)
        self.grid_y = (y0 + ys * dy).astype(np.float32)
        self.anchor_seq: int | None = None
        self.x: np.ndarray | None = None  # positions in the anchor frame, (rows, cols)
        self.y: np.ndarray | None = None
        self.warped = False  # whether the positions come from flow (False: identity)
        self._at_seq: int | None = None
        self._on_flow_grid = False  # the grid is the flow image's pixel centres

    @classmethod
    def flow_grid(cls, flow: FrameFlow) -> PositionField:
        """One point per flow pixel (the centres of the flow image's pixels)."""
        fw, fh = flow.flow_size
        dx, dy = 1.0 / flow.scale_x, 1.0 / flow.scale_y
        field = cls(flow, fh, fw, 0.5 * dx - 0.5, 0.5 * dy - 0.5, dx, dy)
        field._on_flow_grid = True
        return field

    def anchor(self, source_seq: int) -> bool:
        """Anchor to frame `source_seq` (the frame a new map or mask was computed on) and
        trace the grid back to it. Returns False when that frame is out of reach (the
        positions are then the identity: the state is used as it is)."""
        self.anchor_seq = source_seq
        self._at_seq = self.flow.current_seq
        traced = None
        if source_seq != self.flow.current_seq:
            traced = self.flow.trace_back(self.grid_x, self.grid_y, source_seq)
        if traced is None:
            self.x, self.y = self.grid_x.copy(), self.grid_y.copy()
            self.warped = False
            return source_seq == self.flow.current_seq
        self.x, self.y = traced
        self.warped = True
        return True

    def advance(self) -> None:
        """Follow the flow to its current frame: one composition step per camera frame added
        since the last call (a frame without a flow, the start of a new chain, keeps the
        positions as they are). Cheap when nothing changed; may be called lazily."""
        if self.x is None or self._at_seq is None:
            return
        current = self.flow.current_seq
        if current is None or current <= self._at_seq:
            return
        for seq in range(self._at_seq + 1, current + 1):
            step = self.flow.step_flow(seq)
            if step is None:
                continue
            if self._on_flow_grid:  # the flow at its own pixels: no interpolation needed
                dx = step[..., 0] / self.flow.scale_x
                dy = step[..., 1] / self.flow.scale_y
            else:
                dx, dy = self.flow.sample_flow(step, self.grid_x, self.grid_y)
            gx = (self.grid_x + dx - self._origin[0]) / self._step[0]
            gy = (self.grid_y + dy - self._origin[1]) / self._step[1]
            border = cv2.BORDER_REPLICATE
            self.x = cv2.remap(self.x, gx, gy, cv2.INTER_LINEAR, borderMode=border)
            self.y = cv2.remap(self.y, gx, gy, cv2.INTER_LINEAR, borderMode=border)
            self.warped = True
        self._at_seq = current

    def reset(self) -> None:
        self.anchor_seq = self.x = self.y = self._at_seq = None
        self.warped = False
