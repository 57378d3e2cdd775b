"""`stac-replay`: a recording in, STAC against today's image transports over an emulated link out.

The robot and edge cores the nodes run (RobotEncoder, QPMapReceiver, EncodedStreamDecoder,
QPMapComputer, FeedbackEncoder) are driven in one process on the recording's own clock, with a
link model between them (`link`), an edge whose compute takes a fixed or measured time per pass
(`timing`), and every camera frame scored twice: the model on the decoded frame (compression
alone) and the mask the robot holds at the frame's capture time (compression and latency).
Plain Python: no ROS runtime (bags are read and written with `rosbags`).
"""
