"""The simulated clock's event queue: what happens when, in a deterministic order.

Events are ordered by time, then by a priority (lower first: at equal times a job that ends
frees the edge's worker before an arrival is decoded), then by the order they were pushed, so
that two runs over the same input pop the same events in the same order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """kind: what happens (the owner's own names); payload: whatever it needs."""

    time_s: float
    kind: str
    payload: Any = None


class EventQueue:
    """Events popped in (time, priority, push order) order."""

    def __init__(self) -> None:
        self._heap: list = []
        self._order = itertools.count()

    def push(self, time_s: float, kind: str, payload: Any = None, priority: int = 1) -> None:
        heapq.heappush(
            self._heap, (time_s, priority, next(self._order), Event(time_s, kind, payload))
        )

    def pop_until(self, time_s: float) -> Iterator[Event]:
        """Every event due at or before `time_s`, in order, including events pushed while the
        caller handles one (as long as they too are due)."""
        while self._heap and self._heap[0][0] <= time_s:
            yield heapq.heappop(self._heap)[3]

    def __len__(self) -> int:
        return len(self._heap)
