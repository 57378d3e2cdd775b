"""Bytes a message takes on the wire: its CDR serialization, what link statistics count.

Uplink and feedback bit rates count whole messages (header, sequence numbers, payload), not
only the payload, so that a small feedback message is not made to look smaller than it is.
"""

from __future__ import annotations

from rclpy.serialization import serialize_message


def serialized_size_bytes(msg: object) -> int:
    """Length of the CDR serialization of an rclpy message."""
    return len(serialize_message(msg))
