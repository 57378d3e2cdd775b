"""Robot side of STAC: the QP-map H.264 encoder on the camera stream, and a mask for every
camera frame (the edge's newest, warped by optical flow) on stac/robot_mask.

Every name is relative: with `namespace:=r1` the robot's topics are /r1/stac/encoded, ...,
its camera /r1/camera/image_raw and its keyframe service /r1/stac_encoder/request_keyframe;
without a namespace they are /stac/encoded, ... as on a single-robot system.

ros2 launch launch/robot.launch.py camera_topic:=/camera/image_raw crf:=30.0
ros2 launch launch/robot.launch.py namespace:=r1 mode:=keyframe target_kbps:=400
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
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
            description="The robot's namespace (e.g. r1): every topic and service of its nodes "
            "lives under it; empty = the root namespace (a single robot).",
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
            description="sensor_msgs/Image topic of the camera to offload (relative: inside the "
            "robot's namespace).",
        ),
        DeclareLaunchArgument(
            "crf",
            default_value="28.0",
            description="Budget: base quality (x264 CRF, lower = more bits); the QP map "
            "redistributes bits around it.",
        ),
        DeclareLaunchArgument(
            "mode",
            default_value="stream",
            description="stream: every frame is encoded and sent; keyframe: only frames whose "
            "propagated state went stale, when the edge is free (STAC's scheme).",
        ),
        DeclareLaunchArgument(
            "target_kbps",
            default_value="0.0",
            description="Bitrate target in kbit/s (0 = none: constant quality at crf); can be "
            "changed at run time with ros2 param set /<namespace>/stac_encoder target_kbps N.",
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
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "crf": LaunchConfiguration("crf"),
                "camera_qos": LaunchConfiguration("camera_qos"),
                "mode": LaunchConfiguration("mode"),
                "target_kbps": LaunchConfiguration("target_kbps"),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("camera_topic")),
            ("encoded", "stac/encoded"),
            ("qp_map", "stac/qp_map"),
            ("mask_feedback", "stac/mask_feedback"),
            ("key_mask_request", "stac/key_mask_request"),
            ("robot_mask", "stac/robot_mask"),
            ("robot_mask_age", "stac/robot_mask_age"),
            ("robot_overlay", "stac/robot_overlay"),
        ],
        output="screen",
    )
    # Empty (the default with no ROS_DISCOVERY_SERVER in the shell): multicast discovery.
    discovery = SetEnvironmentVariable(
        "ROS_DISCOVERY_SERVER", LaunchConfiguration("discovery_server")
    )
    return LaunchDescription([*arguments, discovery, encoder])
