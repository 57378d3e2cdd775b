"""Edge side of STAC: decoding + segmentation, and the sensitivity feedback loop.

By default both edge nodes run in one process (`edge_container`: one decoder, one model);
`single_process:=false` starts them as separate processes, as on two edge machines.

Every name is relative: `namespace:=r1` serves the robot launched with `namespace:=r1`
(/r1/stac/encoded, /r1/stac_encoder/request_keyframe, ...); without a namespace the edge
serves the robot in the root namespace.

ros2 launch launch/edge.launch.py model_config:=/path/to/model.yaml budget_shift_qp:=2
ros2 launch launch/edge.launch.py namespace:=r1
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import (
    EnvironmentVariable,
    LaunchConfiguration,
    PathJoinSubstitution,
    ThisLaunchFileDir,
)
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="Namespace of the robot this edge serves (the robot's own namespace "
            "argument); empty = the root namespace.",
        ),
        DeclareLaunchArgument(
            "discovery_server",
            default_value=EnvironmentVariable("ROS_DISCOVERY_SERVER", default_value=""),
            description="Fast DDS Discovery Server(s) to find the other nodes through, e.g. "
            "192.168.1.10:11811 (ROS_DISCOVERY_SERVER; empty = multicast discovery). Default: "
            "the ROS_DISCOVERY_SERVER of the shell.",
        ),
        DeclareLaunchArgument(
            "robots",
            default_value="[]",
            description="Namespaces of the robots this edge serves, e.g. [r1, r2]; "
            "[] = the robot in the edge's own namespace.",
        ),
        DeclareLaunchArgument(
            "discover_robots",
            default_value="false",
            description="Also serve every robot found in the graph that no other live edge serves.",
        ),
        DeclareLaunchArgument(
            "stand_in_for",
            default_value="[]",
            description="Edges (their edge_name) whose robots this edge takes over when their "
            "heartbeat stops, e.g. [/edge_a/stac_edge].",
        ),
        DeclareLaunchArgument(
            "model_config",
            default_value="",
            description="Segmentation model configuration YAML; empty = the shipped CamVid model.",
        ),
        DeclareLaunchArgument(
            "budget_shift_qp",
            default_value="0",
            description="Budget: uniform QP shift added to every QP map (+ = fewer bits).",
        ),
        DeclareLaunchArgument(
            "period_frames",
            default_value="5",
            description="Compute a QP map every N decoded frames.",
        ),
        DeclareLaunchArgument(
            "single_process",
            default_value="true",
            description="Run segmenter and sensitivity node in one process sharing one decoder "
            "and one model (false: two processes).",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([ThisLaunchFileDir(), "..", "config", "edge.yaml"]),
            description="Parameter file of the edge nodes.",
        ),
    ]
    container = Node(
        package="stac_sensitivity",
        executable="edge_container",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_config": LaunchConfiguration("model_config"),
                "budget_shift_qp": LaunchConfiguration("budget_shift_qp"),
                "period_frames": LaunchConfiguration("period_frames"),
                "robots": LaunchConfiguration("robots"),
                "discover_robots": LaunchConfiguration("discover_robots"),
                "stand_in_for": LaunchConfiguration("stand_in_for"),
            },
        ],
        remappings=[
            ("encoded", "stac/encoded"),
            ("mask", "stac/mask"),
            ("mask_feedback", "stac/mask_feedback"),
            ("key_mask_request", "stac/key_mask_request"),
            ("overlay", "stac/overlay"),
            ("video", "stac/video"),
            ("qp_map", "stac/qp_map"),
            ("qp_heatmap", "stac/qp_heatmap"),
            ("request_keyframe", "stac_encoder/request_keyframe"),
        ],
        condition=IfCondition(LaunchConfiguration("single_process")),
        output="screen",
    )
    segmenter = Node(
        package="stac_edge_segmenter",
        executable="segmenter_node",
        name="stac_segmenter",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"model_config": LaunchConfiguration("model_config")},
        ],
        remappings=[
            ("encoded", "stac/encoded"),
            ("mask", "stac/mask"),
            ("mask_feedback", "stac/mask_feedback"),
            ("key_mask_request", "stac/key_mask_request"),
            ("overlay", "stac/overlay"),
            ("video", "stac/video"),
            ("request_keyframe", "stac_encoder/request_keyframe"),
        ],
        condition=UnlessCondition(LaunchConfiguration("single_process")),
        output="screen",
    )
    sensitivity = Node(
        package="stac_sensitivity",
        executable="sensitivity_node",
        name="stac_sensitivity",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_config": LaunchConfiguration("model_config"),
                "budget_shift_qp": LaunchConfiguration("budget_shift_qp"),
                "period_frames": LaunchConfiguration("period_frames"),
            },
        ],
        remappings=[
            ("encoded", "stac/encoded"),
            ("qp_map", "stac/qp_map"),
            ("qp_heatmap", "stac/qp_heatmap"),
        ],
        condition=UnlessCondition(LaunchConfiguration("single_process")),
        output="screen",
    )
    # Empty (the default with no ROS_DISCOVERY_SERVER in the shell): multicast discovery. With a
    # discovery server, the edge is a super client: it sees the whole graph, so it can find
    # robots by their streams (discover_robots); a plain client learns only its own topics.
    discovery = [
        SetEnvironmentVariable("ROS_DISCOVERY_SERVER", LaunchConfiguration("discovery_server")),
        SetEnvironmentVariable("ROS_SUPER_CLIENT", "TRUE"),
    ]
    return LaunchDescription([*arguments, *discovery, container, segmenter, sensitivity])
