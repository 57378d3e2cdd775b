"""Edge side of STAC: decoding + segmentation, and the sensitivity feedback loop.

ros2 launch launch/edge.launch.py model_config:=/path/to/model.yaml budget_shift_qp:=2
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    arguments = [
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
            "params_file",
            default_value=PathJoinSubstitution([ThisLaunchFileDir(), "..", "config", "edge.yaml"]),
            description="Parameter file of the edge nodes.",
        ),
    ]
    segmenter = Node(
        package="stac_edge_segmenter",
        executable="segmenter_node",
        name="stac_segmenter",
        parameters=[
            LaunchConfiguration("params_file"),
            {"model_config": LaunchConfiguration("model_config")},
        ],
        remappings=[
            ("encoded", "/stac/encoded"),
            ("mask", "/stac/mask"),
            ("overlay", "/stac/overlay"),
        ],
        output="screen",
    )
    sensitivity = Node(
        package="stac_sensitivity",
        executable="sensitivity_node",
        name="stac_sensitivity",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model_config": LaunchConfiguration("model_config"),
                "budget_shift_qp": LaunchConfiguration("budget_shift_qp"),
                "period_frames": LaunchConfiguration("period_frames"),
            },
        ],
        remappings=[
            ("encoded", "/stac/encoded"),
            ("qp_map", "/stac/qp_map"),
            ("qp_heatmap", "/stac/qp_heatmap"),
        ],
        output="screen",
    )
    return LaunchDescription([*arguments, segmenter, sensitivity])
