"""Keyframe mode (STAC's scheme): which camera frames travel to the edge.

In keyframe mode the robot sends a frame only when the state it carries forward (the edge's
last mask, warped with flow) has gone stale, and fills every other frame by propagation. The
decision for each camera frame, in this order:

1. the edge must be free: after sending a keyframe the robot waits for the edge's mask of it
   (or for `edge_timeout_s`, in case the frame or its mask was lost) before sending another,
   so no frame ever queues for a busy edge; a frame that is due meanwhile is counted as
   waited and the next free moment sends;
2. a keyframe request from the edge (after a loss, or when it joins) sends at once, as IDR;
3. a scene cut sends at once, as IDR: the per-frame flow does not explain the frame from the
   one before it: the previous frame warped by that flow predicts less than `cut_explained`
   of the frame's variance (1 - MSE / variance; a measure that does not depend on contrast:
   unrelated textures of any contrast score about -1, consecutive frames close to 1), and
   their PSNR is below `stale_psnr_db` (so sensor noise on a flat wall is no cut);
4. staleness: the frame against the last keyframe warped to it by the composed flow; when
   their PSNR drops below `stale_psnr_db`, flow no longer explains what the edge last saw;
5. `max_interval_frames` camera frames since the last keyframe;
6. the first frame, and the first frame after the edge answered nothing for a while.

Both measures are computed on the flow's downscaled grey images (a few hundred microseconds);
the warps reuse the shared per-frame flow (`frame_flow`). Keyframes are encoded as H.264
P-frames predicted from the previous keyframe (the encoder only ever sees keyframes), IDR at
cuts, on request and on loss. Plain Python, no clock of its own: times are camera stamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stac_encoder.frame_flow import FrameFlow, PositionField

REASONS = ("first", "request", "cut", "stale", "max_interval", "timeout")


@dataclass(frozen=True)
class KeyframeConfig:
    """stale_psnr_db: send when the frame and the flow-warped last keyframe differ more than
    this (PSNR, dB; higher = more keyframes); cut_explained: a scene cut when the flow-warped
    previous frame explains less than this share of the frame's variance; max_interval_frames:
    send at least this often; edge_timeout_s: how long (camera time) the robot waits for the
    edge's answer to a keyframe before it takes the edge to be free again."""

    stale_psnr_db: float = 24.0
    cut_explained: float = 0.5
    max_interval_frames: int = 50
    edge_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.stale_psnr_db <= 99.0:
            raise ValueError(f"stale_psnr_db must be in (0, 99], got {self.stale_psnr_db}")
        if not -1.0 <= self.cut_explained <= 1.0:
            raise ValueError(f"cut_explained must be in [-1, 1], got {self.cut_explained}")
        if self.max_interval_frames < 1:
            raise ValueError(f"max_interval_frames must be >= 1, got {self.max_interval_frames}")
        if not self.edge_timeout_s > 0.0:
            raise ValueError(f"edge_timeout_s must be > 0, got {self.edge_timeout_s}")


@dataclass(frozen=True)
class KeyframeDecision:
    """send: encode and send this frame; idr: as an IDR picture; reason: one of REASONS (or
    '' when not sent); waited: it was due but the edge had not answered yet; psnr_db: the
    staleness measure (frame vs warped last keyframe), nan when there is none."""

    send: bool
    idr: bool
    reason: str
    waited: bool
    psnr_db: float


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two images of one shape and dtype."""
    return float(cv2.norm(a, b, cv2.NORM_L2SQR)) / a.size


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (99 for identical images)."""
    error = mse(a, b)
    return 99.0 if error <= 1e-10 else min(99.0, 10.0 * math.log10(255.0**2 / error))


def explained(frame: np.ndarray, prediction: np.ndarray) -> float:
    """The share of the frame's variance a prediction explains: 1 - MSE / variance (1 for a
    perfect prediction, about -1 for an unrelated image of the same statistics)."""
    _, deviation = cv2.meanStdDev(frame)
    variance = float(deviation[0, 0]) ** 2
    return 1.0 - mse(frame, prediction) / max(variance, 1.0)


class KeyframeSelector:
    """Decides, per camera frame of a shared FrameFlow, whether it is a keyframe."""

    def __init__(self, flow: FrameFlow, config: KeyframeConfig | None = None) -> None:
        self.flow = flow
        self.config = config or KeyframeConfig()
        self._field = PositionField.flow_grid(flow)
        self._keyframe_grey: np.ndarray | None = None
        self._keyframe_seq: int | None = None  # flow frame of the last keyframe
        self._awaiting: int | None = None  # frame_seq of the keyframe the edge has not answered
        self._sent_at_s = -math.inf
        self._requested = False
        self._cut_pending = False
        height, width = flow.flow_size[1], flow.flow_size[0]
        self._grid_y, self._grid_x = np.mgrid[0:height, 0:width].astype(np.float32)

    @property
    def edge_busy(self) -> bool:
        return self._awaiting is not None

    def request(self) -> None:
        """The edge asked for a keyframe (a loss, a join): it is free and waits for an IDR."""
        self._requested = True
        self._awaiting = None

    def answered(self, frame_seq: int) -> None:
        """The edge's mask of encoded frame `frame_seq` arrived: the edge is free again once
        it has answered the keyframe the robot waits for (or a later one)."""
        if self._awaiting is not None and frame_seq >= self._awaiting:
            self._awaiting = None

    def decide(self, capture_s: float) -> KeyframeDecision:
        """For the flow's current frame (add it to the flow first)."""
        config, current = self.config, self.flow.current_seq
        grey = self.flow.grey(current)
        if self._cut_pending or self._is_cut(current, grey):
            self._cut_pending = True
        staleness = self._staleness(grey)
        if self._awaiting is not None and capture_s - self._sent_at_s > config.edge_timeout_s:
            self._awaiting = None
            timed_out = True
        else:
            timed_out = False
        reason = ""
        if self._keyframe_seq is None:
            reason = "first"
        elif self._requested:
            reason = "request"
        elif self._cut_pending:
            reason = "cut"
        elif staleness < config.stale_psnr_db:
            reason = "stale"
        elif current - self._keyframe_seq >= config.max_interval_frames:
            reason = "max_interval"
        elif timed_out:
            reason = "timeout"
        if not reason:
            return KeyframeDecision(False, False, "", False, staleness)
        if self._awaiting is not None:
            return KeyframeDecision(False, False, "", True, staleness)
        idr = reason in ("first", "request", "cut")
        return KeyframeDecision(True, idr, reason, False, staleness)

    def sent(self, frame_seq: int, capture_s: float) -> None:
        """The flow's current frame went out as encoded frame `frame_seq`."""
        current = self.flow.current_seq
        self._keyframe_seq = current
        self._keyframe_grey = self.flow.grey(current)
        self._field.anchor(current)
        self._awaiting = frame_seq
        self._sent_at_s = capture_s
        self._requested = self._cut_pending = False

    def _is_cut(self, current: int, grey: np.ndarray) -> bool:
        step = self.flow.step_flow(current)
        previous = self.flow.grey(current - 1)
        if step is None or previous is None:
            return False
        predicted = cv2.remap(
            previous,
            self._grid_x + step[..., 0],
            self._grid_y + step[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return (
            explained(grey, predicted) < self.config.cut_explained
            and psnr_db(grey, predicted) < self.config.stale_psnr_db
        )

    def _staleness(self, grey: np.ndarray) -> float:
        if self._keyframe_grey is None or self._field.x is None:
            return math.nan
        self._field.advance()
        field = self._field
        # positions on the flow grid are in full-res pixels: back to flow pixels
        map_x = (field.x + 0.5) * self.flow.scale_x - 0.5
        map_y = (field.y + 0.5) * self.flow.scale_y - 0.5
        warped = cv2.remap(
            self._keyframe_grey, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        return psnr_db(grey, warped)
