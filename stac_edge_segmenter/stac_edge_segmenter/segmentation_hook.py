"""How another edge component shares the segmenter's decoder and model.

When the segmenter and the sensitivity node run in one process (the edge container), the
segmenter decodes every access unit once and hands each decoded frame to a hook (the
sensitivity node), which decides on its own which frames get a map and computes them in a
worker of its own, on the segmenter's model. The segmenter's forward on the newest frame never
waits for the hook's work.
"""

from __future__ import annotations

from typing import Protocol

from stac_edge_segmenter.edge_decoding import DecodedFrame


class SegmentationHook(Protocol):
    def frame_decoded(self, frame: DecodedFrame) -> None:
        """Called for every decoded frame, in stream order (from the decoding thread); must
        return quickly (hand heavy work to a thread of its own)."""
