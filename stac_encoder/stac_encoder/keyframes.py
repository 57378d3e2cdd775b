"""Keyframe mode (STAC's scheme): which camera frames travel to the edge.

In keyframe mode the robot sends a frame only when the state it carries forward (the edge's
last mask, warped with flow) has gone stale, and fills every other frame by propagation. The
decision for each camera frame, in this order:

1. the edge must be free (`EdgePacer`): after sending a keyframe the robot waits for the
   edge's mask of it (or for `edge_timeout_s`, in case the frame or its mask was lost) before
   sending another; with `send_ahead` it sends the next one keyframe early instead, timed to
   reach the edge about when the edge finishes the one before (at most two keyframes
   unanswered: one at work, one waiting in the edge's one-frame slot, never a queue), and
   with `pipeline` as many as a round trip holds at the pace the edge answers; a frame that
   is due while the edge is busy is counted as waited and the next free moment sends;
2. a keyframe request from the edge (after a loss, or when it joins) sends at once, as IDR;
3. a scene cut sends at once, as IDR: the per-frame flow does not explain the frame from the
   one before it: the previous frame warped by that flow predicts less than `cut_explained`
   of the frame's variance (1 - MSE / variance; a measure that does not depend on contrast:
   unrelated textures of any contrast score about -1, consecutive frames close to 1), and
   their PSNR is below `stale_psnr_db` (so sensor noise on a flat wall is no cut; `SceneCuts`,
   which the robot loop also asks, in either mode, to stop carrying a mask into a new scene);
4. staleness: the frame against the last keyframe warped to it by the composed flow; when
   their PSNR drops below `stale_psnr_db`, flow no longer explains what the edge last saw;
5. `max_interval_frames` camera frames since the last keyframe;
6. the first frame, and the first frame after the edge answered nothing for a while.

Both measures are computed on the flow's downscaled grey images (a few hundred microseconds);
the warps reuse the shared per-frame flow (`frame_flow`). Keyframes are encoded as H.264
P-frames predicted from the previous keyframe (the encoder only ever sees keyframes), IDR at
cuts, on request and on loss; one far from the keyframe before it with a slower preset's
analysis (`far_preset`), on the time streaming would have spent on the frames between, and
one nearer with it too while that has delayed no mask (`FarWhenFree`: the slower analysis is
free where a mask would wait for the next camera frame anyway).
Plain Python, no clock of its own: times are camera stamps.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from stac_codec.h264_encoder import PRESETS
from stac_encoder.frame_flow import FrameFlow, PositionField

REASONS = ("first", "request", "cut", "stale", "max_interval", "timeout")


@dataclass(frozen=True)
class KeyframeConfig:
    """stale_psnr_db: send when the frame and the flow-warped last keyframe differ more than
    this (PSNR, dB; higher = more keyframes); cut_explained: a scene cut when the flow-warped
    previous frame explains less than this share of the frame's variance; max_interval_frames:
    send at least this often; edge_timeout_s: how long (camera time) the robot waits for the
    edge's answer to a keyframe before it takes the edge to be free again; send_ahead: the
    next keyframe may go before the edge's answer to the previous one (`EdgePacer`);
    pipeline: with send_ahead, keyframes go at the edge's own pace, as many in flight as the
    round trip holds, instead of at most two unanswered; far_preset / far_gap_frames: a
    keyframe at least far_gap_frames camera frames after the one before is encoded with x264's
    far_preset analysis ('' or 0: never; `RobotEncoderConfig.far_gap_frames`): x264 takes
    about 5.5x veryfast's time for slow's (3x for medium's), about what streaming spends on
    the frames in between; far_when_free: a nearer keyframe gets the far preset too while
    the edge's masks of far keyframes have been held no older (median, in camera frames)
    than those of near ones (`FarWhenFree`)."""

    stale_psnr_db: float = 24.0
    cut_explained: float = 0.5
    max_interval_frames: int = 50
    edge_timeout_s: float = 2.0
    send_ahead: bool = True
    pipeline: bool = True
    far_preset: str = "slow"
    far_gap_frames: int = 4
    far_when_free: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.stale_psnr_db <= 99.0:
            raise ValueError(f"stale_psnr_db must be in (0, 99], got {self.stale_psnr_db}")
        if not -1.0 <= self.cut_explained <= 1.0:
            raise ValueError(f"cut_explained must be in [-1, 1], got {self.cut_explained}")
        if self.max_interval_frames < 1:
            raise ValueError(f"max_interval_frames must be >= 1, got {self.max_interval_frames}")
        if not self.edge_timeout_s > 0.0:
            raise ValueError(f"edge_timeout_s must be > 0, got {self.edge_timeout_s}")
        if self.far_preset not in ("", *PRESETS):
            raise ValueError(f"far_preset must be '' or one of {PRESETS}, got {self.far_preset!r}")
        if self.far_gap_frames < 0:
            raise ValueError(f"far_gap_frames must be >= 0 (0 = off), got {self.far_gap_frames}")


@dataclass(frozen=True)
class KeyframeDecision:
    """send: encode and send this frame; idr: as an IDR picture; reason: one of REASONS (or
    '' when not sent); waited: it was due but the edge was busy; psnr_db: the staleness
    measure (frame vs warped last keyframe), nan when there is none."""

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


class SceneCuts:
    """Scene cuts, frame by frame: the per-frame flow does not explain a frame from the one
    before it (the previous frame warped by that flow predicts less than `cut_explained` of
    the frame's variance, and their PSNR is below `stale_psnr_db`). Used by the keyframe
    decision (a cut sends an IDR) and, in either mode, by the robot loop (a cut drops the
    mask of the previous scene)."""

    def __init__(self, flow: FrameFlow, config: KeyframeConfig) -> None:
        self.flow = flow
        self.config = config
        height, width = flow.flow_size[1], flow.flow_size[0]
        self._grid_y, self._grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        self._checked: tuple[int, bool] | None = None

    def at_current(self) -> bool:
        """Whether the flow's current frame starts a new scene (computed once per frame)."""
        current = self.flow.current_seq
        if self._checked is not None and self._checked[0] == current:
            return self._checked[1]
        cut = self._is_cut(current)
        self._checked = (current, cut)
        return cut

    def _is_cut(self, current: int | None) -> bool:
        step = self.flow.step_flow(current) if current is not None else None
        previous = self.flow.grey(current - 1) if current is not None else None
        if step is None or previous is None:
            return False
        grey = self.flow.grey(current)
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


class EdgePacer:
    """When the edge can take the robot's next keyframe: keyframes sent and not yet answered,
    and what their round trips taught.

    Without send-ahead the edge is free once it has answered every keyframe sent. The robot
    notices an answer only at its next camera frame, and the answer took the downlink back:
    waiting for it leaves the edge idle for the return trip, the wait for the next camera
    frame and the next keyframe's uplink (on the dashcam clip with this machine's edge about
    a third of each keyframe's round trip). With send-ahead a second keyframe may go out
    while one is unanswered, at the time it should reach the edge as the edge finishes:

    * the round trip R: the shortest recent one (capture to the camera frame that noticed
      the answer; a keyframe that waited at the edge took longer);
    * the edge's service interval S: the median recent gap between the answers to two
      keyframes sent back to back (the second reached the edge while it worked on the
      first, so the gap is the edge's time per keyframe, give or take a camera frame: answers
      are noticed at camera frames), R / 2 before any gap was seen, and at least R minus one
      camera frame interval (sending more than a frame before the expected answer makes the
      keyframe wait at the edge);
    * a keyframe the edge started at once is finished about S after it was sent (the next
      one then arrives as the edge frees); one that waited behind another is finished about S
      after the other's answer, whose answer reaches the robot R - S after that;
    * the next keyframe goes at the camera frame nearest that time.
    At most two keyframes are unanswered: the edge's segmenter holds one frame besides the
    one at work (a newer frame would replace it), so nothing ever queues there.

    With `pipeline` the round trip may hold more than that: when it spans several of the
    edge's passes (a forward about as long as a camera frame, a round trip of three),
    keyframes go every `interval_frames` camera frames, as many unanswered as a round trip
    holds at that pace plus one. The pace starts at the round trip less a frame (as above)
    and follows the answers (`_learn_pace`): answers further apart than the pace slow it to
    their gap, PROBE_AFTER in a row at the pace try a frame faster. Still nothing queues:
    a keyframe that reaches a busy edge waits in its one-frame slot or is replaced there by
    the next, and the gaps then slow the pace.
    """

    HISTORY = 8  # round trips and gaps remembered
    PROBE_AFTER = 4  # answers at the edge's pace before the pipeline tries a frame faster

    def __init__(self, send_ahead: bool, timeout_s: float, pipeline: bool = False) -> None:
        self.send_ahead = send_ahead
        self.timeout_s = timeout_s
        self.pipeline = pipeline
        self._interval_frames: int | None = None  # the pipeline's pace, camera frames
        self._kept_pace = 0  # answers in a row that kept the pace without waiting
        self._edge_slower = False  # the gaps once set the pace (slower than send-ahead's)
        self._last_sent_s: float | None = None
        self._pace_since_s: float | None = None  # keyframes sent since then teach it
        self._unanswered: list[tuple[int, float, bool]] = []  # frame_seq, sent at, behind
        self._answered: list[tuple[float, bool]] = []  # since the last camera frame
        self._round_trips_s: list[float] = []
        self._gaps_s: list[float] = []
        self._last_answer_s: float | None = None
        self._last_frame_s: float | None = None
        self._frame_interval_s = 0.0

    @property
    def unanswered(self) -> int:
        return len(self._unanswered)

    def clear(self) -> None:
        """The edge starts over (it asked for a keyframe): nothing is waited for."""
        self._unanswered.clear()

    @property
    def interval_frames(self) -> int | None:
        """The pipeline's pace: camera frames between keyframes (None before it is known)."""
        return self._interval_frames

    def sent(self, frame_seq: int, capture_s: float) -> None:
        self._unanswered.append((frame_seq, capture_s, bool(self._unanswered)))
        self._last_sent_s = capture_s

    def answered(self, frame_seq: int) -> None:
        """The edge's mask of encoded frame `frame_seq` arrived (it answers every earlier
        keyframe too: their masks are lost or superseded)."""
        for item in [item for item in self._unanswered if item[0] <= frame_seq]:
            self._unanswered.remove(item)
            self._answered.append(item[1:])

    def frame(self, capture_s: float) -> bool:
        """A camera frame at `capture_s`: learn from the answers noticed now. Returns True
        when the oldest keyframe waited for longer than the timeout (the edge is then taken
        to be free)."""
        if self._last_frame_s is not None and capture_s > self._last_frame_s:
            self._frame_interval_s = capture_s - self._last_frame_s
        self._last_frame_s = capture_s
        for sent_s, behind in self._answered:
            round_trip_s = capture_s - sent_s
            self._round_trips_s = _keep(self._round_trips_s, round_trip_s)
            gap_s = None
            if behind and self._last_answer_s is not None:
                gap_s = capture_s - self._last_answer_s
                self._gaps_s = _keep(self._gaps_s, gap_s)
            self._learn_pace(sent_s, gap_s)
            self._last_answer_s = capture_s
        self._answered.clear()
        if self._unanswered and capture_s - self._unanswered[0][1] > self.timeout_s:
            self._unanswered.clear()
            return True
        return False

    def _learn_pace(self, sent_s: float, gap_s: float | None) -> None:
        """The pipeline's pace from one answer to a keyframe sent at the present pace: the
        answers to two keyframes sent back to back came further apart than the pace (the
        edge is slower, the second waited or the edge took a newer one instead): the pace
        slows to their gap, the edge's own; PROBE_AFTER answers in a row at the pace try a
        frame faster (if the edge cannot follow, the next gaps show it). A round trip that
        grows while the gaps keep the pace (a slower forward, a slower link) changes
        nothing: the edge still keeps up."""
        if not self.pipeline or self._interval_frames is None or self._frame_interval_s <= 0:
            return
        if self._pace_since_s is None or sent_s < self._pace_since_s:
            return
        if gap_s is not None:
            gap_frames = round(gap_s / self._frame_interval_s)
            if gap_frames > self._interval_frames:
                self._set_pace(gap_frames)
                self._edge_slower = True
                return
        self._kept_pace += 1
        if self._kept_pace >= self.PROBE_AFTER and self._interval_frames > 1:
            self._set_pace(self._interval_frames - 1)

    def _set_pace(self, interval_frames: int) -> None:
        self._interval_frames = interval_frames
        self._kept_pace = 0
        self._pace_since_s = self._last_frame_s

    def _pipeline_free(self, capture_s: float) -> bool:
        """Keyframes every `interval_frames` camera frames (first: the round trip less a
        frame, as send-ahead), with at most as many unanswered as one round trip holds at
        that pace, plus one (the edge's one-frame slot)."""
        frame_s = self._frame_interval_s
        round_trip_s = min(self._round_trips_s)
        ahead = max(1, round((round_trip_s - frame_s) / frame_s))  # send-ahead's own pace
        if self._interval_frames is None:
            self._set_pace(ahead)
        elif not self._edge_slower and ahead < self._interval_frames:
            # a shorter round trip than the first (an IDR's): no slower than send-ahead
            self._interval_frames = ahead
        interval_s = self._interval_frames * frame_s
        most = math.ceil(round_trip_s / interval_s - 1e-6) + 1
        if len(self._unanswered) >= most:
            return False
        return capture_s >= self._last_sent_s + interval_s - 0.5 * frame_s

    def free(self, capture_s: float) -> bool:
        """Whether a keyframe captured at `capture_s` may go out now."""
        if not self._unanswered:
            return True
        if not self.send_ahead or not self._round_trips_s:
            return False
        if self.pipeline and self._frame_interval_s > 0:
            return self._pipeline_free(capture_s)
        if len(self._unanswered) > 1:
            return False
        round_trip_s = min(self._round_trips_s)
        frame_s = self._frame_interval_s
        service_s = float(np.median(self._gaps_s)) if self._gaps_s else 0.5 * round_trip_s
        service_s = max(service_s, round_trip_s - frame_s)
        _, sent_s, behind = self._unanswered[0]
        due_s = sent_s + service_s
        if behind and self._last_answer_s is not None:
            due_s = max(due_s, self._last_answer_s + 2.0 * service_s - round_trip_s)
        # the camera frame nearest the due time: earlier, the keyframe waits at the edge;
        # later, the edge idles
        return capture_s >= due_s - 0.5 * frame_s


def _keep(history: list[float], value: float) -> list[float]:
    return (history + [value])[-EdgePacer.HISTORY :]


class FarWhenFree:
    """Whether a keyframe near the one before may take the far preset's analysis anyway.

    A slower analysis delays the keyframe's mask by its extra encode time, but the robot holds
    a mask only from the first camera frame after it arrives: where the round trip leaves
    that much slack before the next camera frame (vtest.avi at 10 fps on this machine's edge:
    a mask arrives about 120 ms after capture and is held at 200 ms), the smaller keyframe
    costs nothing in time. The robot does not need a clock for that: it compares the age, in
    camera frames, at which it first held the masks of far keyframes and of near ones (the
    last HISTORY of each), and takes the far preset while the median far mask comes no older
    than the median near one (a median: a mask the edge delayed for its own reasons, a QP
    map's pass, must not swing the choice for the many keyframes it takes the preset not
    chosen to be tried again). Now and then a near keyframe goes the other way, so that a
    change of link, edge or encode time shows: PROBE_EVERY near keyframes after the choice
    last changed, then twice as many after each probe that left it, up to PROBE_EVERY_MOST (a
    probe of a far preset that does cost a frame makes that mask older and, at the edge's
    pace, slows the keyframes after it). With nothing learnt yet it tries far first. None of
    this where the far preset takes a camera frame interval or more beyond the near one's
    time: its mask then always comes a frame later (the dashcam clip at 25 fps: 56 ms more for
    slow's analysis), so such keyframes stay near without a try.
    """

    HISTORY = 8  # ages remembered per preset
    PROBE_EVERY = 12  # near keyframes before the first try of the preset not preferred
    PROBE_EVERY_MOST = 96  # ... and at most between two tries
    PENDING = 64  # keyframes remembered whose mask was not held yet

    def __init__(self) -> None:
        self._pending: OrderedDict[int, bool] = OrderedDict()  # flow_seq -> far
        self._ages: dict[bool, list[int]] = {True: [], False: []}
        self._preferred: bool | None = None
        self._probe_interval = self.PROBE_EVERY
        self._since_probe = 0

    def choose(
        self, extra_encode_s: float | None = None, frame_interval_s: float | None = None
    ) -> bool:
        """For a keyframe nearer than far_gap_frames: True for the far preset. extra_encode_s:
        how much longer a far keyframe takes to encode than a near one, frame_interval_s: the
        camera's (None: not known yet)."""
        if extra_encode_s is not None and frame_interval_s and extra_encode_s >= frame_interval_s:
            return False
        far_age, near_age = self.median_age_frames(True), self.median_age_frames(False)
        if far_age is None:
            return True
        if near_age is None:
            return False
        prefer_far = far_age <= near_age
        if prefer_far != self._preferred:
            self._preferred = prefer_far
            self._probe_interval, self._since_probe = self.PROBE_EVERY, 0
        self._since_probe += 1
        if self._since_probe < self._probe_interval:
            return prefer_far
        self._since_probe = 0
        self._probe_interval = min(2 * self._probe_interval, self.PROBE_EVERY_MOST)
        return not prefer_far

    def sent(self, flow_seq: int, far: bool) -> None:
        """The keyframe at camera frame `flow_seq` went out, far or not."""
        self._pending[flow_seq] = far
        while len(self._pending) > self.PENDING:
            self._pending.popitem(last=False)

    def held(self, source_flow_seq: int, flow_seq: int) -> None:
        """The robot first holds the edge's mask of camera frame `source_flow_seq` at camera
        frame `flow_seq` (masks of earlier keyframes not held by then never will be)."""
        far = self._pending.pop(source_flow_seq, None)
        for seq in [seq for seq in self._pending if seq < source_flow_seq]:
            del self._pending[seq]
        if far is not None:
            self._ages[far] = (self._ages[far] + [flow_seq - source_flow_seq])[-self.HISTORY :]

    def median_age_frames(self, far: bool) -> float | None:
        """The median age at which masks of far (or near) keyframes were first held."""
        ages = self._ages[far]
        return float(np.median(ages)) if ages else None


class KeyframeSelector:
    """Decides, per camera frame of a shared FrameFlow, whether it is a keyframe."""

    def __init__(self, flow: FrameFlow, config: KeyframeConfig | None = None) -> None:
        self.flow = flow
        self.config = config or KeyframeConfig()
        self._field = PositionField.flow_grid(flow)
        self._keyframe_grey: np.ndarray | None = None
        self._keyframe_seq: int | None = None  # flow frame of the last keyframe
        self.pacer = EdgePacer(
            self.config.send_ahead, self.config.edge_timeout_s, self.config.pipeline
        )
        self._requested = False
        self._cut_pending = False
        self.cuts = SceneCuts(flow, self.config)

    @property
    def edge_busy(self) -> bool:
        return self.pacer.unanswered > 0

    def request(self) -> None:
        """The edge asked for a keyframe (a loss, a join): it is free and waits for an IDR."""
        self._requested = True
        self.pacer.clear()

    def answered(self, frame_seq: int) -> None:
        """The edge's mask of encoded frame `frame_seq` arrived."""
        self.pacer.answered(frame_seq)

    def decide(self, capture_s: float) -> KeyframeDecision:
        """For the flow's current frame (add it to the flow first)."""
        config, current = self.config, self.flow.current_seq
        grey = self.flow.grey(current)
        self._cut_pending = self._cut_pending or self.cuts.at_current()
        staleness = self._staleness(grey)
        timed_out = self.pacer.frame(capture_s)
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
        if not self.pacer.free(capture_s):
            return KeyframeDecision(False, False, "", True, staleness)
        idr = reason in ("first", "request", "cut")
        return KeyframeDecision(True, idr, reason, False, staleness)

    def sent(self, frame_seq: int, capture_s: float) -> None:
        """The flow's current frame went out as encoded frame `frame_seq`."""
        current = self.flow.current_seq
        self._keyframe_seq = current
        self._keyframe_grey = self.flow.grey(current)
        self._field.anchor(current)
        self.pacer.sent(frame_seq, capture_s)
        self._requested = self._cut_pending = False

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
