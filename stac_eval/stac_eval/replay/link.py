"""The network between robot and edge, as the replay emulates it.

Uplink (robot -> edge): a bottleneck of `rate_bps` with a FIFO queue. A message that arrives
while the link is busy waits its turn; it is then serialised at the link rate and arrives
`delay_s` after its last bit left. When `queue` messages are already waiting (the one on the
wire not counted) a new message is dropped at the tail, as a router queue or a writer history
of that depth would. Random loss drops whole messages with probability `loss`; a lost message
still occupied the link (its bits were sent, they just never arrived).

Downlink (edge -> robot: QP maps and masks): `down_delay_s` (default: the uplink delay) and the
same loss probability, no capacity limit (feedback is tiny; masks are the result, not a cost
counted here).

Loss draws come from two seeded generators, one per direction, and every message offered to a
direction draws exactly one number, so the same seed loses the same uplink messages (the same
camera frames) for every method whose robot sends one message per frame: methods are compared
on the same losses.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import numpy as np

_RATE_UNITS = {
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 8.0,  # tc's convention: bps = bytes per second
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class LinkSpecError(ValueError):
    """A --link specification that cannot be parsed."""


@dataclass(frozen=True)
class LinkConfig:
    """rate_bps: uplink capacity in bit/s (0 = unlimited); delay_s: one-way propagation delay
    of the uplink; down_delay_s: of the downlink (None = same as the uplink); loss: probability
    that a message is lost, each direction; queue: messages that may wait for the uplink
    (0 = unlimited); seed: of the loss draws."""

    rate_bps: float = 0.0
    delay_s: float = 0.0
    down_delay_s: float | None = None
    loss: float = 0.0
    queue: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.rate_bps) or self.rate_bps < 0:
            raise LinkSpecError(f"rate must be >= 0 bit/s, got {self.rate_bps}")
        for name in ("delay_s", "down_delay_s"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise LinkSpecError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.loss < 1.0:
            raise LinkSpecError(f"loss must be in [0, 1), got {self.loss}")
        if self.queue < 0:
            raise LinkSpecError(f"queue must be >= 0 messages, got {self.queue}")

    @property
    def downlink_delay_s(self) -> float:
        return self.delay_s if self.down_delay_s is None else self.down_delay_s

    @classmethod
    def parse(cls, spec: str) -> LinkConfig:
        """'rate=2mbit,delay=40ms,loss=1%' (also downdelay=, queue=N, seed=N); rate units as
        tc: bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps (bytes/s); rate=0 or inf:
        unlimited. Keys left out keep their defaults."""
        values: dict = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip().lower()
            if not sep or not value:
                raise LinkSpecError(f"'{item}' is not key=value")
            if key == "rate":
                values["rate_bps"] = _parse_rate(value)
            elif key == "delay":
                values["delay_s"] = _parse_time(value)
            elif key in ("downdelay", "down_delay"):
                values["down_delay_s"] = _parse_time(value)
            elif key == "loss":
                values["loss"] = _parse_fraction(value)
            elif key in ("queue", "seed"):
                if not value.isdigit():
                    raise LinkSpecError(f"{key} must be a whole number, got '{value}'")
                values[key] = int(value)
            else:
                raise LinkSpecError(
                    f"unknown link key '{key}' (rate, delay, downdelay, loss, queue, seed)"
                )
        return cls(**values)

    def describe(self) -> str:
        """The specification in the form `parse` reads."""
        rate = "inf" if not self.rate_bps else f"{self.rate_bps / 1e3:g}kbit"
        parts = [f"rate={rate}", f"delay={self.delay_s * 1e3:g}ms"]
        if self.down_delay_s is not None:
            parts.append(f"downdelay={self.down_delay_s * 1e3:g}ms")
        parts += [f"loss={self.loss * 100:g}%", f"queue={self.queue}", f"seed={self.seed}"]
        return ",".join(parts)

    def as_json(self) -> dict:
        return {
            "spec": self.describe(),
            "uplink_rate_kbps": self.rate_bps / 1e3 if self.rate_bps else None,
            "uplink_delay_ms": self.delay_s * 1e3,
            "downlink_delay_ms": self.downlink_delay_s * 1e3,
            "loss_pct": self.loss * 100,
            "queue_messages": self.queue or None,
            "seed": self.seed,
        }


def _parse_rate(value: str) -> float:
    if value in ("0", "inf", "unlimited"):
        return 0.0
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)", value)
    if not match or match.group(2) not in _RATE_UNITS:
        raise LinkSpecError(f"rate '{value}': use a number with one of {sorted(_RATE_UNITS)}")
    return float(match.group(1)) * _RATE_UNITS[match.group(2)]


def _parse_time(value: str) -> float:
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(us|ms|s)", value)
    if not match:
        raise LinkSpecError(f"time '{value}': use a number with us, ms or s")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def _parse_fraction(value: str) -> float:
    try:
        return float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    except ValueError as error:
        raise LinkSpecError(f"loss '{value}': use a percentage (1%) or a fraction") from error


@dataclass(frozen=True)
class Delivery:
    """What became of one message: status 'delivered', 'lost' (random loss, after taking the
    link) or 'dropped' (queue full, never sent); start/finish of its transmission and arrival
    time (None unless delivered)."""

    status: str
    sent_s: float
    start_s: float | None
    finish_s: float | None
    arrival_s: float | None

    @property
    def delivered(self) -> bool:
        return self.status == "delivered"

    @property
    def queueing_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.sent_s


class Uplink:
    """The robot -> edge direction: FIFO queue, serialisation at the link rate, delay, loss.
    Messages must be offered in non-decreasing time order."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng([config.seed, 0])
        self._in_system: deque[float] = deque()  # finish times of messages queued or on the wire
        self._busy_until = 0.0
        self._last_sent_s = -math.inf

    def send(self, time_s: float, size_bytes: int) -> Delivery:
        if time_s < self._last_sent_s:
            raise ValueError(f"uplink messages out of order: {time_s} after {self._last_sent_s}")
        self._last_sent_s = time_s
        lost = self._rng.random() < self.config.loss  # drawn for every message, kept aligned
        while self._in_system and self._in_system[0] <= time_s:
            self._in_system.popleft()
        waiting = max(0, len(self._in_system) - 1)  # the first one is on the wire
        if self.config.queue and waiting >= self.config.queue:
            return Delivery("dropped", time_s, None, None, None)
        start = max(time_s, self._busy_until)
        duration = 8.0 * size_bytes / self.config.rate_bps if self.config.rate_bps else 0.0
        finish = start + duration
        self._busy_until = finish
        if duration > 0:
            self._in_system.append(finish)
        if lost:
            return Delivery("lost", time_s, start, finish, None)
        return Delivery("delivered", time_s, start, finish, finish + self.config.delay_s)


class Downlink:
    """The edge -> robot direction: delay and loss, no capacity limit."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng([config.seed, 1])

    def send(self, time_s: float, size_bytes: int) -> Delivery:
        del size_bytes  # no capacity limit on this direction
        if self._rng.random() < self.config.loss:
            return Delivery("lost", time_s, time_s, time_s, None)
        return Delivery("delivered", time_s, time_s, time_s, time_s + self.config.downlink_delay_s)
