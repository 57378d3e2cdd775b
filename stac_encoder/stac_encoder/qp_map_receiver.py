"""Maps from the edge back into level maps, on the robot: key maps and deltas, sessions.

Plain Python: `encoder_node` hands it each QPMap's fields. The receiver holds the last few
decoded maps of the current edge session as references for deltas; a key map of a new session
(the edge restarted) that decodes starts that session and drops them. A map of another session
that fails, or a delta of one (whose reference the robot cannot hold), changes nothing: a
stray or forged map cannot make the robot forget the real edge's maps. Every failure raises
`MapRejectedError` with the reason, so the node can count and log it: a damaged map, a delta
whose reference is not held, a header that disagrees with the bytes, offsets beyond the
allowed clamp.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from stac_codec.qp_map import MAX_ABS_QP_OFFSET, QPLevelMap
from stac_codec.qp_map_wire import WireFormatError, decode_qp_map, is_delta


class MapRejectedError(ValueError):
    """A map from the edge that the robot will not apply; the message says why and `kind`
    names the reason in a word (for counting and logging each reason once)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ReceivedMapFields:
    """The fields of a QPMap message the receiver needs (no ROS types)."""

    session_id: int
    map_seq: int
    reference_map_seq: int
    rows: int
    cols: int
    max_abs_offset_qp: int
    data: bytes


class QPMapReceiver:
    """Decodes maps of one edge session at a time, keeping `history` maps as references.

    max_abs_offset_qp: the robot's own limit on |offset| (shift included); a map beyond it or
    beyond the clamp it declares is rejected rather than clipped, so a hostile or broken edge
    cannot blow up the bit rate (a map of -51 everywhere makes frames about 100x bigger).
    """

    def __init__(self, max_abs_offset_qp: int = MAX_ABS_QP_OFFSET, history: int = 8) -> None:
        if not 0 <= max_abs_offset_qp <= MAX_ABS_QP_OFFSET:
            raise ValueError(f"max_abs_offset_qp must be in 0..{MAX_ABS_QP_OFFSET}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.max_abs_offset_qp = max_abs_offset_qp
        self._history = history
        self._session_id: int | None = None
        self._maps: OrderedDict[int, QPLevelMap] = OrderedDict()

    def receive(self, fields: ReceivedMapFields) -> QPLevelMap:
        """The level map the fields carry; raises MapRejectedError with the reason."""
        new_session = fields.session_id != self._session_id
        try:
            declared_delta = is_delta(fields.data)
        except WireFormatError as error:
            raise MapRejectedError("damaged", f"map {fields.map_seq}: {error}") from error
        if declared_delta != bool(fields.reference_map_seq):
            raise MapRejectedError(
                "kind_mismatch",
                f"map {fields.map_seq}: reference_map_seq {fields.reference_map_seq} but the "
                f"data is a {'delta' if declared_delta else 'key map'}",
            )
        reference = None
        if fields.reference_map_seq:
            reference = None if new_session else self._maps.get(fields.reference_map_seq)
            if reference is None:
                raise MapRejectedError(
                    "reference_missing",
                    f"map {fields.map_seq} is a delta against map {fields.reference_map_seq}, "
                    "which this robot does not hold; waiting for the next key map",
                )
        try:
            level_map = decode_qp_map(fields.data, reference)
        except WireFormatError as error:
            kind = "reference_missing" if "reference" in str(error) else "damaged"
            raise MapRejectedError(kind, f"map {fields.map_seq}: {error}") from error
        self._check(fields, level_map)
        if new_session:
            self._session_id = fields.session_id
            self._maps.clear()
        self._maps[fields.map_seq] = level_map
        while len(self._maps) > self._history:
            self._maps.popitem(last=False)
        return level_map

    def _check(self, fields: ReceivedMapFields, level_map: QPLevelMap) -> None:
        if level_map.shape != (fields.rows, fields.cols):
            raise MapRejectedError(
                "header_mismatch",
                f"map {fields.map_seq}: header says {fields.rows}x{fields.cols} macroblocks, "
                f"the data holds {level_map.shape[0]}x{level_map.shape[1]}",
            )
        largest = int(np.abs(level_map.offsets_qp.astype(np.int16)).max())
        limit = min(int(fields.max_abs_offset_qp), self.max_abs_offset_qp)
        if largest > limit:
            raise MapRejectedError(
                "offset_limit",
                f"map {fields.map_seq}: offset {largest} QP exceeds the limit {limit} "
                f"(declared {fields.max_abs_offset_qp}, robot {self.max_abs_offset_qp})",
            )
