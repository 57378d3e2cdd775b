"""Robot and edge on one machine, optionally fed from a video file or bag, with rviz.

`namespace:=r1` puts the whole robot (player, encoder) and its edge and rviz in /r1; two such
launches with different namespaces are two robots side by side, each with its own edge.

ros2 launch launch/local.launch.py video_uri:=/usr/share/doc/opencv-doc/examples/data/vtest.avi
ros2 launch launch/local.launch.py namespace:=r2 play_video:=true video_uri:=clip.mp4 rviz:=false
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
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
            description="Namespace of the robot (and of its edge and rviz); empty = root.",
        ),
        DeclareLaunchArgument(
            "discovery_server",
            default_value=EnvironmentVariable("ROS_DISCOVERY_SERVER", default_value=""),
            description="Fast DDS Discovery Server(s) to find the other nodes through, e.g. "
            "192.168.1.10:11811 (ROS_DISCOVERY_SERVER; empty = multicast discovery). Default: "
            "the ROS_DISCOVERY_SERVER of the shell.",
        ),
        DeclareLaunchArgument(
            "camera_topic",
            default_value="camera/image_raw",
            description="sensor_msgs/Image topic of the camera (or of the video player), "
            "relative: inside the namespace.",
        ),
        DeclareLaunchArgument(
            "model_config",
            default_value="",
            description="Segmentation model configuration YAML; empty = the shipped CamVid model.",
        ),
        DeclareLaunchArgument(
            "crf", default_value="28.0", description="Budget: base quality (x264 CRF)."
        ),
        DeclareLaunchArgument(
            "mode",
            default_value="stream",
            description="Robot mode: stream (every frame sent) or keyframe (STAC's scheme).",
        ),
        DeclareLaunchArgument(
            "target_kbps",
            default_value="0.0",
            description="Robot bitrate target, kbit/s (0 = constant quality at crf).",
        ),
        DeclareLaunchArgument(
            "budget_shift_qp",
            default_value="0",
            description="Budget: uniform QP shift added to every QP map.",
        ),
        DeclareLaunchArgument(
            "play_video",
            default_value="false",
            description="Publish video_uri on camera_topic instead of using a camera driver.",
        ),
        DeclareLaunchArgument(
            "video_uri",
            default_value="",
            description="Video file, rosbag2 or 'camera:N' for the player.",
        ),
        DeclareLaunchArgument(
            "camera_qos",
            default_value="sensor_data",
            description="QoS of the encoder's camera subscription: sensor_data (matches camera "
            "drivers, which publish best effort) or reliable (replay that must lose no frame; "
            "the video player publishes reliable, which either setting receives).",
        ),
        DeclareLaunchArgument("rviz", default_value="true", description="Start rviz2."),
    ]
    here = ThisLaunchFileDir()
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([here, "robot.launch.py"])),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"),
            "discovery_server": LaunchConfiguration("discovery_server"),
            "camera_topic": LaunchConfiguration("camera_topic"),
            "crf": LaunchConfiguration("crf"),
            "camera_qos": LaunchConfiguration("camera_qos"),
            "mode": LaunchConfiguration("mode"),
            "target_kbps": LaunchConfiguration("target_kbps"),
        }.items(),
    )
    edge = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([here, "edge.launch.py"])),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"),
            "discovery_server": LaunchConfiguration("discovery_server"),
            "model_config": LaunchConfiguration("model_config"),
            "budget_shift_qp": LaunchConfiguration("budget_shift_qp"),
        }.items(),
    )
    player = Node(
        package="stac_encoder",
        executable="video_source_node",
        name="video_source",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            PathJoinSubstitution([here, "..", "config", "robot.yaml"]),
            {"uri": LaunchConfiguration("video_uri")},
        ],
        remappings=[("image", LaunchConfiguration("camera_topic")), ("encoded", "stac/encoded")],
        condition=IfCondition(LaunchConfiguration("play_video")),
        output="screen",
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        namespace=LaunchConfiguration("namespace"),
        arguments=["-d", PathJoinSubstitution([here, "..", "config", "stac.rviz"])],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    discovery = SetEnvironmentVariable(
        "ROS_DISCOVERY_SERVER", LaunchConfiguration("discovery_server")
    )
    return LaunchDescription([*arguments, discovery, robot, edge, player, rviz])
