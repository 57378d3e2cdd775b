"""H.264 with per-macroblock QP maps, ROS-free: the robot encodes with it, the edge decodes."""
