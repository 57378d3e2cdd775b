"""Robot side of STAC: the QP-map H.264 encoder on the camera stream.

ros2 launch launch/robot.launch.py camera_topic:=/camera/image_raw crf:=30.0
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(
            "camera_topic",
            default_value="/camera/image_raw",
            description="sensor_msgs/Image topic of the camera to offload.",
        ),
        DeclareLaunchArgument(
            "crf",
            default_value="28.0",
            description="Budget: base quality (x264 CRF, lower = more bits); the QP map "
            "redistributes bits around it.",
        ),
        DeclareLaunchArgument(
            "camera_qos",
            default_value="sensor_data",
            description="QoS of the camera subscription: sensor_data or reliable.",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([ThisLaunchFileDir(), "..", "config", "robot.yaml"]),
            description="Parameter file of the robot nodes.",
        ),
    ]
    encoder = Node(
        package="stac_encoder",
        executable="encoder_node",
        name="stac_encoder",
        parameters=[
            LaunchConfiguration("params_file"),
            {"crf": LaunchConfiguration("crf"), "camera_qos": LaunchConfiguration("camera_qos")},
        ],
        remappings=[
            ("image", LaunchConfiguration("camera_topic")),
            ("encoded", "/stac/encoded"),
            ("qp_map", "/stac/qp_map"),
        ],
        output="screen",
    )
    return LaunchDescription([*arguments, encoder])
