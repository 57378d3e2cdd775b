"""When the edge computes a QP map: the pacing rule, one copy for the nodes and the replay.

A map costs a forward + backward pass (several forwards' worth of compute) and feedback bits,
and it stays useful for about a second (warped by flow on the robot), so the edge computes
one only when all of these hold:

- the first decodable frame, or someone asked (`request`, the node's ~/compute_now): at once;
- otherwise `period_frames` frames were decoded since the last map (0: on request only),
  `min_map_interval_s` of camera time passed since the last map's source frame (a camera
  clock that went backwards, a restarted robot, counts as due), and
- the compute-share cap: after a pass of d seconds the next one waits d * (1 - share) / share,
  so maps take at most `max_compute_share` of the map worker's time;
- one pass at a time: no frame is due while a pass runs (a worker of its own would otherwise
  queue the next due frame behind the running pass, past the cap).

Plain state, no clock and no lock of its own: callers pass their clock's readings (the
node's monotonic clock, the replay's simulated one) and serialise calls themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The map worker's nice over the edge's other threads (the nodes' map_worker_nice):
# segmentation goes first, the map pass takes what the segmenter leaves of the cores.
MAP_WORKER_NICE = 19


def cpu_share(nice: int, other_nice: int = 0) -> float:
    """The share of one core a thread at `nice` gets while a thread at `other_nice` also
    wants it: Linux CFS weights, 1024 / 1.25**nice (nice 0 against 0: 0.5; 10 against 0:
    about 0.1; 19 against 0: about 0.014)."""
    for value in (nice, other_nice):
        if not -20 <= value <= 19:
            raise ValueError(f"nice must be in [-20, 19], got {value}")
    weight, other = 1.25**-nice, 1.25**-other_nice
    return weight / (weight + other)


@dataclass(frozen=True)
class MapPacingConfig:
    """The sensitivity node's pacing parameters (same names, same meaning)."""

    period_frames: int = 5
    min_map_interval_s: float = 1.0
    max_compute_share: float = 0.5

    def __post_init__(self) -> None:
        if self.period_frames < 0:
            raise ValueError(f"period_frames must be >= 0, got {self.period_frames}")
        if not self.min_map_interval_s >= 0:
            raise ValueError(f"min_map_interval_s must be >= 0, got {self.min_map_interval_s}")
        if not 0 < self.max_compute_share <= 1:
            raise ValueError(f"max_compute_share must be in (0, 1], got {self.max_compute_share}")


class MapPacer:
    """Which decoded frames get a map; see the module docstring."""

    def __init__(self, config: MapPacingConfig) -> None:
        self.config = config
        self._decoded_since_map = 0
        self._requested = True  # the first decodable frame gets a map at once
        self._last_frame_seq = 0
        self._last_map_stamp_s: float | None = None
        self._next_map_allowed_s = -math.inf  # on the caller's clock
        self._running = False

    def frame_decoded(self, frame_seq: int) -> bool:
        """Count a decoded frame towards the next map. True when the robot's numbering
        started again (frame_seq not above the last one): its receiver lost the map state,
        so the next map must be a key map."""
        restarted = frame_seq <= self._last_frame_seq
        self._last_frame_seq = frame_seq
        self._decoded_since_map += 1
        return restarted

    def request(self) -> None:
        """A map on the next frame offered, whatever the period and the cap."""
        self._requested = True

    def wants(self, stamp_s: float, now_s: float) -> bool:
        """Whether the frame with camera time `stamp_s`, offered at `now_s` (the caller's
        clock), should get a map."""
        if self._running:
            return False
        if self._requested:
            return True
        return self._due(stamp_s) and now_s >= self._next_map_allowed_s

    def _due(self, stamp_s: float) -> bool:
        period = self.config.period_frames
        if not period or self._decoded_since_map < period:
            return False
        last = self._last_map_stamp_s
        elapsed_s = stamp_s - last if last is not None else math.inf
        return elapsed_s >= self.config.min_map_interval_s or elapsed_s < 0

    def map_started(self, stamp_s: float) -> None:
        """A map pass began on the frame with camera time `stamp_s`."""
        self._running = True
        self._requested = False
        self._decoded_since_map = 0
        self._last_map_stamp_s = stamp_s

    def map_finished(self, started_s: float, ended_s: float) -> None:
        """A map pass ran from `started_s` to `ended_s` (the caller's clock): the next one
        waits long enough to keep maps to `max_compute_share` of the worker's time."""
        self._running = False
        share = self.config.max_compute_share
        self._next_map_allowed_s = ended_s + (ended_s - started_s) * (1.0 - share) / share
