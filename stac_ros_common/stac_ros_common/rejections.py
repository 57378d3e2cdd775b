"""Counting what a node refuses, and logging each kind of refusal once.

Anything on the DDS domain can publish anything: a node must never die from a message, and a
flood of bad messages must not flood the log either. Each refusal has a kind (a short key such
as "qp_map/stale") and a message; the first refusal of a kind is logged in full, later ones
are only counted, with a reminder of the running count every `remind_every`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable


class RejectionLog:
    """Per-kind counters of refused input, logging the first of each kind."""

    def __init__(self, log: Callable[[str], None], remind_every: int = 1000) -> None:
        if remind_every < 1:
            raise ValueError(f"remind_every must be >= 1, got {remind_every}")
        self._log = log
        self._remind_every = remind_every
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reject(self, kind: str, message: str) -> None:
        with self._lock:
            self._counts[kind] += 1
            count = self._counts[kind]
        if count == 1:
            self._log(f"{message} [{kind}: first occurrence, further ones are counted]")
        elif count % self._remind_every == 0:
            self._log(f"{message} [{kind}: {count} so far]")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
