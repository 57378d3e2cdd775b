"""What `stac-bench fleet` computes from a run, without ROS: fairness between robots."""

from __future__ import annotations

from collections.abc import Sequence


def jain_fairness(values: Sequence[float]) -> float:
    """Jain's fairness index of per-robot throughputs: (sum x)^2 / (n sum x^2); 1 = equal
    shares, 1/n = one robot gets everything. 1.0 for no robots or all zero."""
    total = float(sum(values))
    squares = float(sum(v * v for v in values))
    if not values or squares == 0.0:
        return 1.0
    return total * total / (len(values) * squares)
