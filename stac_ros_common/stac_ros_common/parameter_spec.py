"""A node parameter described once: name, default (whose type is the parameter's), bounds.

Plain Python, so that modules shared by several nodes (the edge's model parameters) can hold
their tables without importing ROS; `stac_ros_common.parameters` declares them on a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default (its type is the parameter's type), description, bounds.

    read_only: declared read-only (read once at start); False for the few a node lets users
    change at run time (`ros2 param set`), which that node then handles in a callback."""

    name: str
    default: Any
    description: str
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True

    @property
    def bounded(self) -> bool:
        return self.min_value is not None and self.max_value is not None

    def full_description(self) -> str:
        """The description, with the allowed choices appended when there are any."""
        text = self.description
        if self.choices:
            text = f"{text} One of: {', '.join(self.choices)}."
        if not self.read_only:
            text = f"{text} Can be changed at run time."
        return text
