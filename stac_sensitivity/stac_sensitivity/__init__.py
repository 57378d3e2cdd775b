"""Edge side of STAC: DNN input-gradient sensitivity and its allocation to QP maps."""
