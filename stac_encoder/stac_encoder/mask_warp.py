"""A mask for every camera frame on the robot: the edge's newest mask, carried by optical flow.

The edge segments some frames (the newest it can in stream mode, every keyframe in keyframe
mode) and sends their class-id masks back; they reach the robot several frames after their
source frame was captured. The robot needs a segmentation of the frame it holds now, so it
warps the newest mask from its source frame to every camera frame with the flow of
`frame_flow.FrameFlow` (the same per-frame flow that carries the QP map): a dense position
field on the flow grid (one point per flow pixel) says where each point of the current frame
was in the mask's frame; it is traced back once when a mask arrives (across the frames it
missed) and advanced by one composition step per camera frame after that. The field is
upsampled to full resolution and the class ids are read nearest-neighbour (ids are labels,
not intensities: no blending between classes).

Plain Python: `encoder_node` is the shell (it publishes the result for every camera frame as
/stac/robot_mask with its age); the replay and `stac-bench temporal` drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stac_encoder.frame_flow import FrameFlow, PositionField


@dataclass(frozen=True)
class PropagatedMask:
    """The robot's mask of the flow's current frame.

    class_ids: HxW uint8; source_seq: the flow frame the edge segmented; age_frames: camera
    frames from that frame to this one; warped: carried by flow (False: held as it was)."""

    class_ids: np.ndarray
    source_seq: int
    age_frames: int
    warped: bool


class MaskPropagator:
    """Holds the edge's newest mask and warps it to the flow's current frame on demand."""

    def __init__(self, flow: FrameFlow) -> None:
        self.flow = flow
        self._field = PositionField.flow_grid(flow)
        self._mask: np.ndarray | None = None
        self._cache: tuple[int, PropagatedMask] | None = None
        self._valid_from: int | None = None  # masks of earlier frames show another scene

    @property
    def field(self) -> PositionField:
        """Where each flow-grid point of the current frame was in the mask's frame."""
        return self._field

    @property
    def source_seq(self) -> int | None:
        """The flow frame of the mask held (None: no mask yet)."""
        return self._field.anchor_seq if self._mask is not None else None

    def set_mask(self, class_ids: np.ndarray, source_seq: int) -> bool:
        """Adopt the edge's mask of flow frame `source_seq` (HxW uint8 at the flow's frame
        size). Returns False when the mask is older than the one held (it is ignored).

        ValueError when the mask does not fit the frame size."""
        expected = (self.flow.height, self.flow.width)
        if (
            not isinstance(class_ids, np.ndarray)
            or class_ids.dtype != np.uint8
            or class_ids.shape != expected
        ):
            shape = getattr(class_ids, "shape", None)
            raise ValueError(f"a mask must be uint8 of shape {expected}, got {shape}")
        held = self.source_seq
        if held is not None and source_seq < held:
            return False
        if self._valid_from is not None and source_seq < self._valid_from:
            return False
        self._mask = class_ids
        self._field.anchor(source_seq)
        self._cache = None
        return True

    def current(self) -> PropagatedMask | None:
        """The held mask warped to the flow's current frame (None before the first mask)."""
        if self._mask is None or self.flow.current_seq is None:
            return None
        current = self.flow.current_seq
        if self._cache is not None and self._cache[0] == current:
            return self._cache[1]
        field = self._field
        field.advance()
        age = max(0, current - field.anchor_seq)
        if field.warped and age > 0:
            size = (self.flow.width, self.flow.height)
            map_x = cv2.resize(field.x, size, interpolation=cv2.INTER_LINEAR)
            map_y = cv2.resize(field.y, size, interpolation=cv2.INTER_LINEAR)
            ids = cv2.remap(
                self._mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
            )
            result = PropagatedMask(ids, field.anchor_seq, age, True)
        else:
            result = PropagatedMask(self._mask, field.anchor_seq, age, False)
        self._cache = (current, result)
        return result

    def clear(self) -> None:
        self._mask = None
        self._cache = None
        self._field.reset()

    def scene_cut(self, first_seq: int) -> None:
        """The scene changed at flow frame `first_seq`: the mask held (and any mask of an
        earlier frame that arrives later) shows another scene, so it is dropped and the robot
        holds no mask until the edge's mask of a frame from `first_seq` on arrives."""
        self._valid_from = first_seq
        if self.source_seq is not None and self.source_seq < first_seq:
            self.clear()


def _palette() -> np.ndarray:
    """256 RGB colours, one per class id: well apart for the first ids, black for 255 (no
    class). The robot knows ids, not the model's palette, so it colours them its own way."""
    hues = (np.arange(256) * 47) % 180
    hsv = np.stack([hues, np.full(256, 220), np.full(256, 255)], axis=-1).astype(np.uint8)
    palette = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    palette[255] = 0
    return palette


PALETTE = _palette()
