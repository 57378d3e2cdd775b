"""Replay evaluation and benchmarks of STAC (no ROS imports)."""
