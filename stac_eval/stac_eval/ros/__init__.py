"""The ROS front ends of the evaluation: the live graph on real nodes (demo, live benchmark),
its recorder node and its bag. Everything else in stac_eval is plain Python."""
