"""A one-item mailbox between a fast producer and a slow consumer: newest wins.

When inference is slower than the frame rate, the edge must work on the newest frame and
never build a backlog. The producer `put`s every item and learns which older item it
displaced (to count it as skipped); the consumer `take`s the newest one when it is free.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._condition = threading.Condition()

    def put(self, item: T) -> T | None:
        """Store `item`; return the unconsumed item it replaced, if any."""
        with self._condition:
            displaced, self._item = self._item, item
            self._condition.notify()
            return displaced

    def take(self, timeout_s: float | None = None) -> T | None:
        """The newest item, waiting up to `timeout_s`; None on timeout or after close()."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> T | None:
        """Wake the consumer for good; return the item left unconsumed, if any."""
        with self._condition:
            self._closed = True
            item, self._item = self._item, None
            self._condition.notify_all()
            return item

    @property
    def closed(self) -> bool:
        return self._closed
