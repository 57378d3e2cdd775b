"""Node glue shared by every STAC node: QoS, parameters, statistics, Image <-> numpy, workers."""
