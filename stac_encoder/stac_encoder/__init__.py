"""Robot side of STAC: H.264 encoding driven by per-macroblock QP maps from the edge."""
