"""What the edge sends back: each new QP map as few bytes as the robot needs.

Feedback is part of STAC's cost. Three things keep it small (measured on vtest.avi, 768x576,
1728 macroblocks, 21 levels, a map every 5 frames): the wire form (about 590 bytes for a key
map), deltas against the previous map (consecutive maps share most levels), and hysteresis:
a macroblock keeps the level it had in the previous map unless the new one differs by more
than `hysteresis_levels`. Between two maps of one scene about half of the macroblocks move by
one level, which is gradient noise rather than content; hysteresis 1 stops that churn and
halves a delta (about 250 instead of 480 bytes), while every larger change goes through.
A key map goes out first, every `key_interval_maps` maps (so a robot that missed one recovers),
whenever the shape or bank changes, and on request (a robot that restarted).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import encode_qp_map


@dataclass(frozen=True)
class FeedbackConfig:
    """hysteresis_levels: a macroblock keeps its previous level unless the new one differs by
    more than this many levels (0 = off); key_interval_maps: at most this many maps between
    key maps (1 = every map is a key map)."""

    hysteresis_levels: int = 1
    key_interval_maps: int = 10

    def __post_init__(self) -> None:
        if self.hysteresis_levels < 0:
            raise ValueError(f"hysteresis_levels must be >= 0, got {self.hysteresis_levels}")
        if self.key_interval_maps < 1:
            raise ValueError(f"key_interval_maps must be >= 1, got {self.key_interval_maps}")


@dataclass(frozen=True)
class FeedbackMap:
    """One map as it goes out: its numbers, the map the robot will hold, the wire bytes."""

    session_id: int
    map_seq: int
    reference_map_seq: int  # 0: a key map
    level_map: QPLevelMap
    data: bytes

    @property
    def is_key(self) -> bool:
        return self.reference_map_seq == 0


class FeedbackEncoder:
    """Numbers the maps of one session and codes each as a key map or a delta."""

    def __init__(self, config: FeedbackConfig | None = None, session_id: int | None = None):
        self.config = config or FeedbackConfig()
        self.session_id = secrets.randbits(32) if session_id is None else session_id
        self._map_seq = 0
        self._previous: QPLevelMap | None = None
        self._maps_since_key = 0
        self._key_requested = True

    def request_key(self) -> None:
        """The next map goes out as a key map (e.g. the robot restarted)."""
        self._key_requested = True

    def encode(self, level_map: QPLevelMap) -> FeedbackMap:
        """The next map of the session, with hysteresis against the previous one applied."""
        previous = self._previous
        comparable = (
            previous is not None
            and previous.shape == level_map.shape
            and previous.levels_qp == level_map.levels_qp
        )
        if comparable:
            level_map = self._with_hysteresis(level_map, previous)
        key = (
            not comparable
            or self._key_requested
            or self._maps_since_key + 1 >= self.config.key_interval_maps
        )
        self._map_seq += 1
        reference_seq = 0 if key else self._map_seq - 1
        data = encode_qp_map(level_map, None if key else previous)
        self._maps_since_key = 0 if key else self._maps_since_key + 1
        self._key_requested = False
        self._previous = level_map
        return FeedbackMap(self.session_id, self._map_seq, reference_seq, level_map, data)

    def _with_hysteresis(self, level_map: QPLevelMap, previous: QPLevelMap) -> QPLevelMap:
        if not self.config.hysteresis_levels:
            return level_map
        new = level_map.level_indices.astype(np.int16)
        old = previous.level_indices.astype(np.int16)
        keep = np.abs(new - old) <= self.config.hysteresis_levels
        indices = np.where(keep, old, new).astype(np.uint8)
        return QPLevelMap(indices, level_map.levels_qp, level_map.budget_shift_qp)
