"""Declaring a table of `ParameterSpec`s on a node: descriptors with ranges, typed values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from stac_ros_common.parameter_spec import ParameterSpec


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """The descriptor of a spec (read-only unless the spec says otherwise), with its range.
    A list of names (default []) is dynamically typed: rclpy types an empty list as bytes,
    and a string array from a parameter file or `ros2 param set` must still be accepted."""
    result = ParameterDescriptor(
        description=spec.full_description(),
        read_only=spec.read_only,
        dynamic_typing=isinstance(spec.default, list),
    )
    if spec.bounded and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        result.integer_range = [
            IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=0)
        ]
    elif spec.bounded and isinstance(spec.default, float):
        result.floating_point_range = [
            FloatingPointRange(
                from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0
            )
        ]
    return result


def declare_parameters(node: Node, specs: Sequence[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter (ranges enforced by rclpy) and return their values by name.

    A value outside `choices` raises ValueError naming the parameter.
    """
    values = {}
    for spec in specs:
        node.declare_parameter(spec.name, spec.default, descriptor(spec))
        value = node.get_parameter(spec.name).value
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {spec.name}='{value}' is not one of {spec.choices}")
        if isinstance(spec.default, list):
            value = list(value or [])
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"parameter {spec.name} must be a list of strings, got {value}")
        values[spec.name] = value
    return values
