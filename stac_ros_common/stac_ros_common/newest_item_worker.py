"""A one-item mailbox between a fast producer and a slow consumer: newest wins.

When inference is slower than the frame rate, the edge must work on the newest frame and
never build a backlog. The producer `put`s every item and learns which older item it
displaced (to count it as skipped); the consumer `take`s the newest one when it is free.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
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


class NewestItemWorker(Generic[T]):
    """A thread that hands the newest submitted item to `handle`, one at a time.

    `on_error(item, error)` is called when `handle` raises: one bad item must not stop the
    stream. `submit` returns the unconsumed item it displaced (for skip accounting).
    `nice`: how much nicer than the thread that creates it the worker runs (Linux: per
    thread; threads it starts inherit it; capped at 19), 0 = the same; a higher value lets
    the process's other threads go first when the cores are busy (the edge's map worker
    yields to segmentation). Relative, not absolute: an absolute nice at or below the
    process's own would leave the worker level with the threads it should yield to.
    """

    def __init__(
        self,
        handle: Callable[[T], None],
        on_error: Callable[[T, Exception], None],
        name: str,
        nice: int = 0,
    ) -> None:
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in [0, 19], got {nice}")
        self._slot: LatestSlot[T] = LatestSlot()
        self._handle, self._on_error = handle, on_error
        self._nice = nice
        # whether the thread lowered its priority as asked (to 19 where the sum is more)
        self.niced = nice == 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> T | None:
        return self._slot.put(item)

    def _lower_priority(self) -> None:
        try:  # raising one's own nice needs no privilege; where there are none, it stays 0
            thread_id = threading.get_native_id()
            current = os.getpriority(os.PRIO_PROCESS, thread_id)  # the creator's, inherited
            os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + self._nice))
            self.niced = True
        except (AttributeError, OSError):
            self.niced = False

    def _loop(self) -> None:
        if self._nice:
            self._lower_priority()
        while not self._slot.closed:
            item = self._slot.take(timeout_s=0.5)
            if item is None:
                continue
            try:
                self._handle(item)
            except Exception as error:  # the worker outlives a failing item
                self._on_error(item, error)

    def close(self, timeout_s: float = 10.0) -> T | None:
        """Stop after the item in hand; return the item left waiting, if any."""
        leftover = self._slot.close()
        self._thread.join(timeout=timeout_s)
        return leftover
