"""`edge_container`: the whole edge in one process, one decoder and one model in memory.

The segmenter and the sensitivity node, composed as rclcpp_components would compose them:
two nodes (their own names, parameters and topics, as in launch/edge.launch.py) spun by one
executor. The segmenter decodes every access unit once; the sensitivity node is its
`SegmentationHook`, so on the frames that are due for a map one forward + backward pass gives
both the map and the mask. On a CPU this halves the edge's decoding work and its model memory
and removes one forward per map. The separate executables (`segmenter_node`,
`sensitivity_node`) remain for users who run them on different machines.
"""

from __future__ import annotations

import rclpy
from rclpy.executors import SingleThreadedExecutor

from stac_edge_segmenter.segmenter_node import SegmenterNode
from stac_ros_common.node_runner import close_node, spin_until_shutdown
from stac_sensitivity.sensitivity_node import SensitivityNode


class EdgeContainer:
    """The two edge nodes sharing one model: the sensitivity node hooks into the segmenter."""

    def __init__(self) -> None:
        self.segmenter = SegmenterNode()
        self.sensitivity = SensitivityNode(model=self.segmenter.model)
        self.segmenter.hook = self.sensitivity

    @property
    def nodes(self) -> tuple[SegmenterNode, SensitivityNode]:
        return self.segmenter, self.sensitivity


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    container = None
    executor = SingleThreadedExecutor()
    try:
        container = EdgeContainer()
        for node in container.nodes:
            executor.add_node(node)
        spin_until_shutdown(executor.spin)
    except KeyboardInterrupt:  # during start-up
        pass
    finally:
        if container is not None:
            for node in container.nodes:
                close_node(node)
        executor.shutdown()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
