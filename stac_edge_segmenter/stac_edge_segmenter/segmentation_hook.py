"""How another edge component shares the segmenter's decoder, model and forward pass.

When the segmenter and the sensitivity node run in one process (the edge container), the
segmenter decodes every access unit once and its worker asks a hook, for each frame it takes,
whether the hook wants that frame; if so the hook runs its own pass (the sensitivity pass:
forward + backward) and returns the class ids of that same forward, which the segmenter
publishes as the frame's mask. One decoder, one model, one forward per frame.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stac_edge_segmenter.edge_decoding import DecodedFrame


class SegmentationHook(Protocol):
    def frame_decoded(self, frame: DecodedFrame) -> None:
        """Called for every decoded frame, in stream order (from the decoding thread)."""

    def wants(self, frame: DecodedFrame) -> bool:
        """Whether the hook segments this frame itself (asked by the segmenter's worker)."""

    def segment(self, frame: DecodedFrame) -> np.ndarray:
        """Run the hook's pass on the frame; the class ids (HxW uint8) of its forward."""
