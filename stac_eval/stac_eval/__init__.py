"""Evaluation of STAC: replay, benchmarks, calibration search, bits-vs-mIoU and BD-rate.

Plain Python except the subpackage `stac_eval.ros`, which runs the live graph on real nodes.
"""
