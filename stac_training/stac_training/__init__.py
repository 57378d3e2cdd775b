"""Training and data of STAC's default model: the CamVid reader and `stac-train` (not needed at
run time: the edge loads the shipped weights)."""
