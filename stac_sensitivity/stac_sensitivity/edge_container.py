"""`edge_container`: the whole edge in one process: one model in memory for any number of
robots, one worker that batches their newest frames into one forward pass.

Per robot served, the container runs the two edge nodes as rclcpp_components would compose
them: a segmenter node (its own decoder, resync and keyframe requests, masks back, statistics
on the robot's stac/statistics) and a sensitivity node (its own QP-map session and feedback)
that is the segmenter's `SegmentationHook`. Every robot's decoded frames go to one
`FleetScheduler`: the newest frame of each robot, at most one per robot in a batch, robots in
round robin, the batch in one forward on the edge's inference engine (`engine`; ONNX Runtime
by default) (`stac_sensitivity.fleet_scheduler`). A frame due for a map also goes to the
edge's one map worker, beside the batch worker: the sensitivity pass (forward + backward on
torch) runs there, one at a time for all robots (`MapGate`), so no frame's segmentation waits
for a map pass; the two workers share the cores while a pass runs.

Which robots (`stac_sensitivity.fleet_membership`):
- `robots: []` (default, no discovery): the robot in the edge's own namespace, with the nodes
  named as the launch file names them (/stac_segmenter, /stac_sensitivity at the root);
- `robots: [r1, r2]`: the robots launched with namespace:=r1, r2; their edge nodes are
  /r1/stac_segmenter, /r1/stac_sensitivity, ... on /r1/stac/encoded and the robot's other
  names. `ros2 param set /stac_edge robots "[r1, r3]"` adds and removes robots at run time;
  a robot that joins is asked for a keyframe at once;
- `discover_robots: true`: also every robot found in the graph (a publisher of
  <namespace>/stac/encoded) that no other live edge serves; it leaves when its stream does;
- `stand_in_for: [edge_a]`: when edge_a's heartbeat stops for `edge_timeout_s`, take over
  the robots of its last heartbeat until it is back.
The node /stac_edge holds these parameters, the model's, and publishes the edge's heartbeat
(stac_msgs/EdgeHeartbeat on /stac/fleet/edges: name, robots served, batching). The separate
executables (`segmenter_node`, `sensitivity_node`) remain for users who run them on different
machines.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.node import Node

from stac_edge_segmenter.edge_decoding import DecodedFrame
from stac_edge_segmenter.loading import SegmentationModel
from stac_edge_segmenter.model_parameters import (
    ENGINE_PARAMETERS,
    MODEL_PARAMETERS,
    engine_from,
    load_model_from,
)
from stac_edge_segmenter.segmenter_node import SegmenterNode
from stac_msgs.msg import EdgeHeartbeat
from stac_ros_common.newest_item_worker import NewestItemWorker
from stac_ros_common.node_runner import (
    close_node,
    ending_cleanly,
    spin_until_shutdown,
)
from stac_ros_common.parameter_spec import ParameterSpec
from stac_ros_common.parameters import declare_parameters
from stac_ros_common.qos import EDGE_HEARTBEAT_QOS, EDGE_HEARTBEAT_TOPIC
from stac_sensitivity.fleet_membership import FleetMembership
from stac_sensitivity.fleet_scheduler import (
    BatchEntry,
    FleetScheduler,
    MapGate,
    run_batch,
    run_map_pass,
)
from stac_sensitivity.sensitivity_node import MAP_WORKER_NICE_PARAMETER, SensitivityNode

ENCODED_TYPE = "stac_msgs/msg/EncodedFrame"
# max_batch_robots 0: frames per forward by the model's device type. On a CPU a batch saves no
# CPU time per frame (stac-bench fleet --parts batch: torch and ONNX Runtime) and costs memory
# per frame; on a GPU it is how a shared edge keeps up with many robots.
AUTO_BATCH = {"cuda": 8, "cpu": 1}
# The edge node's own topic (the robots' are the segmenter's and the sensitivity node's).
ENDPOINTS = {
    EDGE_HEARTBEAT_TOPIC: "Edges' heartbeats (stac_msgs/EdgeHeartbeat: name, robots served, "
    "batching), this edge's every heartbeat_period_s; the others' tell it which robots they "
    "serve and whether an edge it stands in for has stopped.",
}
# The nodes this executable runs, by name -> the module declaring their PARAMETERS.
NODE_MODULES = {
    "stac_edge": __name__,
    "stac_segmenter": "stac_edge_segmenter.segmenter_node",
    "stac_sensitivity": "stac_sensitivity.sensitivity_node",
}
PARAMETERS = (
    *MODEL_PARAMETERS,
    *ENGINE_PARAMETERS,
    ParameterSpec(
        "robots",
        [],
        "Namespaces of the robots this edge serves (e.g. [r1, r2]); empty = the robot in the "
        "edge's own namespace (unless discover_robots or stand_in_for give it others).",
        read_only=False,
    ),
    ParameterSpec(
        "discover_robots",
        False,
        "Also serve every robot found in the ROS graph (a publisher of <namespace>/stac/encoded) "
        "that no other live edge serves. With a Fast DDS discovery server, run this edge as a "
        "super client (ROS_SUPER_CLIENT=TRUE) so that it sees the whole graph.",
    ),
    ParameterSpec(
        "stand_in_for",
        [],
        "Edge names whose robots this edge takes over when their heartbeat stops.",
        read_only=False,
    ),
    ParameterSpec("edge_name", "", "This edge's name in the fleet; empty = its node's full name."),
    ParameterSpec(
        "heartbeat_period_s", 0.25, "Period of the heartbeat on /stac/fleet/edges, s.", 0.01, 60.0
    ),
    ParameterSpec(
        "edge_timeout_s",
        1.0,
        "An edge whose heartbeat is this late is taken for dead (stand_in_for), s.",
        0.05,
        600.0,
    ),
    ParameterSpec(
        "robot_timeout_s",
        2.0,
        "A discovered robot whose stream has had no publisher this long has left, s.",
        0.05,
        600.0,
    ),
    ParameterSpec(
        "membership_period_s",
        0.25,
        "How often the served robots are brought up to date (parameters, graph, heartbeats), s.",
        0.01,
        60.0,
    ),
    ParameterSpec(
        "max_batch_robots",
        0,
        "At most this many frames, one per robot, in one forward pass; 0 = by device: "
        f"{AUTO_BATCH['cuda']} on a GPU, {AUTO_BATCH['cpu']} on a CPU (where a batch saves no "
        "CPU time per frame and costs memory per frame: stac-bench fleet --parts batch).",
        0,
        256,
    ),
    MAP_WORKER_NICE_PARAMETER,
    ParameterSpec(
        "batch_timeout_ms",
        20.0,
        "How long a waiting frame waits for the other robots' frames before its batch runs, ms.",
        0.0,
        10_000.0,
    ),
)


class RobotSession:
    """A robot the edge serves: its segmenter and sensitivity nodes, on the container's model
    and worker. Implements what a batch needs of it (fleet_scheduler.FleetRobot)."""

    def __init__(
        self,
        robot: str,
        model: SegmentationModel,
        scheduler: FleetScheduler[DecodedFrame],
        node_options: dict,
    ) -> None:
        self.robot = robot
        self.sensitivity = SensitivityNode(model=model, **node_options)
        self.segmenter = SegmenterNode(
            hook=self.sensitivity, model=model, worker=scheduler.lane(robot), **node_options
        )

    @property
    def nodes(self) -> tuple[Node, Node]:
        return self.segmenter, self.sensitivity

    @property
    def map_share(self) -> float:
        return self.sensitivity.params["max_compute_share"]

    def wants_map(self, frame: DecodedFrame) -> bool:
        return self.sensitivity.wants(frame)

    def map_pass(self, frame: DecodedFrame) -> None:
        self.sensitivity.map_pass(frame)

    def finish(self, frame, class_ids=None, error=None) -> None:
        self.segmenter.finish_frame(frame, class_ids, error)

    def close(self) -> None:
        for node in self.nodes:
            close_node(node)


class EdgeNode(Node):
    """/stac_edge: the fleet's view of this edge (parameters, heartbeat, membership) and the
    owner of the model, the worker and the robots' sessions."""

    def __init__(self, executor: Executor, ros_arguments: list[str]) -> None:
        super().__init__("stac_edge")
        self.params = declare_parameters(self, PARAMETERS)
        self._executor = executor
        self._robot_arguments = robot_node_arguments(ros_arguments)
        self.model = load_model_from(self.params)
        self.engine = engine_from(self.params, self.model, self.get_logger().warning)
        self.edge_name = self.params["edge_name"] or self.get_fully_qualified_name()
        self.sessions: dict[str, RobotSession] = {}
        self._gate = MapGate()
        # one map pass at a time for all robots, beside the batch worker: no frame waits for it
        self._map_worker: NewestItemWorker[BatchEntry[DecodedFrame]] = NewestItemWorker(
            self._run_map_pass, self._on_map_error, "maps", self.params["map_worker_nice"]
        )
        self.scheduler: FleetScheduler[DecodedFrame] = FleetScheduler(
            self._run_batch,
            self._on_batch_error,
            max_batch=self.params["max_batch_robots"] or AUTO_BATCH.get(self.model.device.type, 1),
            batch_timeout_s=self.params["batch_timeout_ms"] / 1e3,
        )
        self.membership = FleetMembership(
            self.edge_name,
            self.params["edge_timeout_s"],
            self.params["robot_timeout_s"],
            self.params["discover_robots"],
        )
        self.membership.declare(self.params["robots"])
        self.membership.stand_in(self.params["stand_in_for"])
        self._own_namespace_only = not (
            self.membership.declared or self.membership.discover or self.membership.stand_in_for
        )
        self._encoded_suffix = self._relative_encoded_name()
        self._heartbeat = self.create_publisher(
            EdgeHeartbeat, EDGE_HEARTBEAT_TOPIC, EDGE_HEARTBEAT_QOS
        )
        self.create_subscription(
            EdgeHeartbeat, EDGE_HEARTBEAT_TOPIC, self._on_heartbeat, EDGE_HEARTBEAT_QOS
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(self.params["heartbeat_period_s"], self._send_heartbeat)
        self.create_timer(self.params["membership_period_s"], self._update_membership)
        self.get_logger().info(
            f"edge {self.edge_name!r}: model {self.model.spec.name!r} on {self.model.device}, "
            f"engine {self.engine.name}, "
            f"batches of up to {self.scheduler.max_batch} robots"
        )
        self._update_membership()

    @property
    def nodes(self) -> tuple[Node, ...]:
        """This node and the nodes of every robot it serves."""
        return (self, *(node for session in self.sessions.values() for node in session.nodes))

    def _relative_encoded_name(self) -> str:
        """The robots' encoded topic inside their namespace ("stac/encoded" with the launch
        file's remapping), read from how this node resolves it."""
        resolved = self.resolve_topic_name("encoded")
        prefix = self.get_namespace().rstrip("/") + "/"
        if not resolved.startswith(prefix):
            raise ValueError(
                f"the encoded topic is remapped to {resolved}, outside this edge's namespace: "
                "robots can only be served by namespace when it is remapped to a relative name"
            )
        return resolved[len(prefix) :]

    # Membership ---------------------------------------------------------------------------

    def _on_heartbeat(self, msg: EdgeHeartbeat) -> None:
        self.membership.heard(msg.edge_name, msg.robots, msg.declared_robots, time.monotonic())

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """robots and stand_in_for may change at run time (applied within
        membership_period_s); the others are read-only."""
        for parameter in parameters:
            if parameter.name not in ("robots", "stand_in_for"):
                continue
            value = list(parameter.value or [])
            if not all(isinstance(item, str) for item in value):
                return SetParametersResult(successful=False, reason="a list of names, please")
            try:
                if parameter.name == "robots":
                    self.membership.declare(value)
                else:
                    self.membership.stand_in(value)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self._own_namespace_only = False
            self.get_logger().info(f"{parameter.name} now {value}")
        return SetParametersResult(successful=True)

    def _graph_robots(self) -> list[str]:
        """Namespaces with a publisher of <namespace>/<encoded suffix> of our type."""
        suffix = "/" + self._encoded_suffix
        return [
            name[: -len(suffix)] or "/"
            for name, types in self.get_topic_names_and_types()
            if name.endswith(suffix) and ENCODED_TYPE in types and self.count_publishers(name)
        ]

    def _update_membership(self) -> None:
        now_s = time.monotonic()
        if self.membership.discover:
            self.membership.found(self._graph_robots(), now_s)
        if self._own_namespace_only:
            wanted = (self.get_namespace(),)
        else:
            wanted = self.membership.served(now_s, self.sessions)
        for robot in [r for r in self.sessions if r not in wanted]:
            self._stop_session(robot)
            self._send_heartbeat()
        for robot in [r for r in wanted if r not in self.sessions]:
            self._start_session(robot)
            # starting a session takes a while on a loaded machine: a heartbeat between
            # sessions keeps a stand-in from taking this edge for dead meanwhile
            self._send_heartbeat()

    def _start_session(self, robot: str) -> None:
        if self._own_namespace_only:
            options = {}  # the nodes as launched: names, namespace and remappings of the process
        else:
            options = {
                "namespace": robot,
                "use_global_arguments": False,
                "cli_args": self._robot_arguments,
            }
        session = RobotSession(robot, self.model, self.scheduler, options)
        self.sessions[robot] = session
        for node in session.nodes:
            self._executor.add_node(node)
        # A robot joining mid-stream sends P-frames the new decoder cannot use: the
        # segmenter's resync asks for a keyframe on the first one (keyframe_request_interval_s).
        self.get_logger().info(f"serving robot {robot}")

    def _stop_session(self, robot: str) -> None:
        """Out of the executor, then closed (its lane waits for a batch holding its frame),
        and only then out of the table the worker reads."""
        session = self.sessions[robot]
        for node in session.nodes:
            self._executor.remove_node(node)
        session.close()
        del self.sessions[robot]
        self._gate.forget(robot)
        if self.context.ok():  # not while shutting down: rosout is gone
            self.get_logger().info(f"no longer serving robot {robot}")

    def _send_heartbeat(self) -> None:
        msg = EdgeHeartbeat(
            edge_name=self.edge_name,
            robots=list(self.sessions),
            declared_robots=[r for r in self.membership.declared if r in self.sessions],
            heartbeat_period_s=float(self.params["heartbeat_period_s"]),
            batches=self.scheduler.batches,
            batched_frames=sum(size * n for size, n in self.scheduler.batch_sizes.items()),
            largest_batch=max(self.scheduler.batch_sizes, default=0),
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        self._heartbeat.publish(msg)

    # The batch worker ---------------------------------------------------------------------

    def _forward(self, images: np.ndarray) -> np.ndarray:
        """NxHxWx3 frames of one size -> their class ids, in one forward pass."""
        return self.engine.segment_batch(images)

    def _run_batch(self, entries: list[BatchEntry[DecodedFrame]]) -> None:
        run_batch(entries, self.sessions, self._forward, self._gate, self._map_worker.submit)

    def _run_map_pass(self, entry: BatchEntry[DecodedFrame]) -> None:
        run_map_pass(entry, self.sessions, self._gate)

    def _on_map_error(self, entry: BatchEntry[DecodedFrame], error: Exception) -> None:
        self.get_logger().error(f"map pass for robot {entry.robot} failed: {error}")

    def _on_batch_error(self, entries: list[BatchEntry[DecodedFrame]], error: Exception) -> None:
        self.get_logger().error(f"batch of {len(entries)} frames failed: {error}")
        for entry in entries:
            session = self.sessions.get(entry.robot)
            if session is not None:
                session.finish(entry.item, error=error)

    def close(self) -> None:
        """Stop every robot's session (each after the batch in flight), then the worker."""
        for robot in list(self.sessions):
            self._stop_session(robot)
        self.scheduler.close()
        self._map_worker.close()


def robot_node_arguments(ros_arguments: list[str]) -> list[str]:
    """The process's --ros-args without the rules that rename a node or move it (__node,
    __ns): what the nodes the container creates in a robot's namespace take (parameter files,
    parameters, remappings), since `-r __ns:=...` would move them out of it."""
    out, inside = [], False
    tokens = iter(ros_arguments)
    for token in tokens:
        if token == "--ros-args":
            inside = True
            out.append(token)
        elif token == "--":
            inside = False
        elif inside and token in ("-r", "--remap"):
            rule = next(tokens, "")
            if rule.split(":=", 1)[0].rsplit(":", 1)[-1] not in ("__ns", "__node", "__name"):
                out += [token, rule]
        elif inside:
            out.append(token)
    return out


def main(args: list[str] | None = None) -> None:
    with ending_cleanly():
        rclpy.init(args=args)
        edge = None
        executor = SingleThreadedExecutor()
        try:
            edge = EdgeNode(executor, sys.argv if args is None else args)
            executor.add_node(edge)
            spin_until_shutdown(executor.spin)
        except KeyboardInterrupt:  # during start-up
            pass
        finally:
            if edge is not None:
                close_node(edge)  # the robots' sessions first, then the edge node
            executor.shutdown()
            rclpy.try_shutdown()


if __name__ == "__main__":
    main()
