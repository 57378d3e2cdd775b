"""config/stac.rviz, checked without rviz2 (which is in neither PyPI nor Debian): rviz2 Jazzy
would load every display, subscribe to topics our nodes publish, and be matched by DDS.

- Every `Class` (panels, displays, tools, views) is one rviz2 Jazzy registers; lists below,
  from ros2/rviz branch jazzy: rviz_default_plugins/plugins_description.xml and the built-in
  classes of rviz_common (display_factory.cpp: Group; panel_factory.cpp: the panels).
- Every display property is one that rviz2 Jazzy defines for that display class (rviz2 silently
  ignores unknown keys, so a typo such as "Reliabilty Policy" would quietly fall back to the
  default QoS); QoS values are ones rviz2 offers (qos_profile_property.cpp).
- Every Image display's topic is published, as sensor_msgs/Image, by a node of the launch
  files: the topics come from the launch files' remappings (stac_eval.launch_args) and the
  nodes' `create_publisher` calls, not from a list kept here. Topics are relative: rviz2,
  launched in the robot's namespace by local.launch.py, shows that one robot.
- The rviz subscription's QoS is compatible with every QoS that publisher may use
  (stac_ros_common.qos): a Reliable subscription needs a reliable publisher, a Transient Local
  one a transient-local publisher. The camera's QoS is a parameter, so the camera display
  must match every camera QoS kind (a real camera driver publishes best effort).

The robot's mask of every camera frame is shown as its rgb8 overlay (/stac/robot_overlay): a
mono8 class-id image shows near-black.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

import stac_ros_common.qos as qos_module
from conftest import REPO_ROOT
from stac_eval.launch_args import LaunchConfigurationRef, argument_defaults, launch_nodes

RVIZ_CONFIG = REPO_ROOT / "config" / "stac.rviz"
LAUNCH_FILES = sorted((REPO_ROOT / "launch").glob("*.launch.py"))

# rviz2 Jazzy display classes (rviz_default_plugins/plugins_description.xml, branch jazzy,
# base_class_type rviz_common::Display) and rviz_common's built-in Group.
DISPLAY_CLASSES = {
    "rviz_common/Group",
    *(
        f"rviz_default_plugins/{name}"
        for name in (
            "AccelStamped", "Axes", "Camera", "CameraInfo", "DepthCloud", "Effort",
            "FluidPressure", "Grid", "GridCells", "Illuminance", "Image", "InteractiveMarkers",
            "LaserScan", "Map", "Marker", "MarkerArray", "Odometry", "Path", "PointCloud",
            "PointCloud2", "PointStamped", "Polygon", "Pose", "PoseArray", "PoseWithCovariance",
            "Range", "RelativeHumidity", "RobotModel", "TF", "Temperature", "TwistStamped",
            "Wrench",
        )
    ),
}  # fmt: skip
TOOL_CLASSES = {
    f"rviz_default_plugins/{name}"
    for name in (
        "Interact", "MoveCamera", "Select", "FocusCamera", "Measure", "SetInitialPose",
        "SetGoal", "PublishPoint",
    )
}  # fmt: skip
VIEW_CLASSES = {
    f"rviz_default_plugins/{name}"
    for name in ("Orbit", "XYOrbit", "TopDownOrtho", "FPS", "ThirdPersonFollower")
}
PANEL_CLASSES = {
    f"rviz_common/{name}"
    for name in ("Displays", "Help", "Selection", "Time", "Tool Properties", "Transformation",
                 "Views")
}  # fmt: skip

# Keys every display saves (rviz_common/display.cpp: Class, Name, Enabled; "Value" is the
# display's own BoolProperty value), and the properties of the display classes this
# configuration uses (extend after reading that display's source in ros2/rviz, branch jazzy).
COMMON_DISPLAY_KEYS = {"Class", "Name", "Enabled", "Value"}
DISPLAY_KEYS = {
    # image_display.cpp; "Topic" from _RosTopicDisplay (ros_topic_display.hpp)
    "rviz_default_plugins/Image": {"Topic", "Normalize Range", "Min Value", "Max Value",
                                   "Median window"},
    # grid_display.cpp
    "rviz_default_plugins/Grid": {"Reference Frame", "Plane Cell Count", "Normal Cell Count",
                                  "Cell Size", "Line Style", "Color", "Alpha", "Plane", "Offset"},
    # display_group.cpp
    "rviz_common/Group": {"Displays"},
}  # fmt: skip
# The message type each topic display subscribes to.
DISPLAY_MESSAGE_TYPES = {"rviz_default_plugins/Image": "Image"}
# The Topic block: RosTopicProperty's value and QosProfileProperty's children
# (qos_profile_property.cpp); ImageTransportDisplay adds no "Filter size".
TOPIC_KEYS = {"Value", "Depth", "History Policy", "Reliability Policy", "Durability Policy"}
HISTORY_POLICIES = {"System Default", "Keep Last", "Keep All"}
RELIABILITY_POLICIES = {"System Default", "Reliable", "Best Effort"}
DURABILITY_POLICIES = {"System Default", "Transient Local", "Volatile"}


@dataclass(frozen=True)
class Publisher:
    """A node's publisher as launched: the resolved topic, message class name, possible QoS."""

    node: str
    topic: str
    message_type: str
    qos: tuple[QoSProfile, ...]


def console_scripts(package: str) -> dict[str, str]:
    """executable name -> module, from a package's setup.py entry points."""
    text = (REPO_ROOT / package / "setup.py").read_text()
    return {name: target.split(":")[0] for name, target in
            re.findall(r'"([\w-]+)\s*=\s*([\w.]+:\w+)"', text)}  # fmt: skip


def publisher_qos(expression: ast.expr, where: str) -> tuple[QoSProfile, ...]:
    """The QoS profiles a `create_publisher` QoS argument may stand for: a profile of
    stac_ros_common.qos by name, or camera_qos(<parameter>) = every camera QoS kind."""
    if isinstance(expression, ast.Name):
        profile = getattr(qos_module, expression.id, None)
        assert isinstance(profile, QoSProfile), (
            f"{where}: QoS '{expression.id}' is not a profile of stac_ros_common.qos"
        )
        return (profile,)
    if (
        isinstance(expression, ast.Call)
        and isinstance(expression.func, ast.Name)
        and expression.func.id == "camera_qos"
    ):
        return tuple(qos_module.camera_qos(kind) for kind in qos_module.CAMERA_QOS_KINDS)
    raise AssertionError(f"{where}: cannot tell the QoS of `{ast.unparse(expression)}`")


def resolve_topic(name: str, remappings: dict[str, object], defaults: dict[str, object]) -> str:
    """A node-relative topic name after the launch file's remappings, as resolved in the
    namespace everything is launched in (rviz2 included): relative to it, written without
    the leading slash as the configuration's relative names are."""
    target = remappings.get(name, name)
    if isinstance(target, LaunchConfigurationRef):
        target = defaults[target.name]
    assert isinstance(target, str), f"topic '{name}' remapped to something not literal: {target}"
    return target


def launched_publishers() -> list[Publisher]:
    """Every publisher of every node our launch files start, with its topic as launched."""
    publishers = []
    for launch_file in LAUNCH_FILES:
        defaults = argument_defaults(launch_file)
        for node in launch_nodes(launch_file):
            package, executable = node["package"], node["executable"]
            if not str(package).startswith("stac_"):
                continue  # rviz2 itself
            module = console_scripts(package)[executable]
            path = REPO_ROOT / package / Path(*module.split("."))
            source = path.with_suffix(".py")
            remappings = dict(node.get("remappings") or [])
            tree = ast.parse(source.read_text(), filename=str(source))
            for call in ast.walk(tree):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "create_publisher"
                ):
                    continue
                where = f"{source.relative_to(REPO_ROOT)}:{call.lineno}"
                message, topic, qos = call.args[:3]
                if not (isinstance(topic, ast.Constant) and isinstance(message, ast.Name)):
                    continue  # e.g. the statistics publisher's constant topic: not an image
                publishers.append(
                    Publisher(
                        node=str(node.get("name") or executable),
                        topic=resolve_topic(topic.value, remappings, defaults),
                        message_type=message.id,
                        qos=publisher_qos(qos, where),
                    )
                )
    return publishers


def displays(config: dict) -> list[dict]:
    """Every display of a configuration, inside groups too."""
    found = []

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            found.append(entry)
            if entry.get("Class") == "rviz_common/Group":
                walk(entry.get("Displays"))

    walk(config["Visualization Manager"]["Displays"])
    return found


def qos_problems(name: str, topic: dict, publisher: Publisher) -> list[str]:
    """Why this rviz subscription would not be matched with this publisher, if it would not."""
    problems = []
    reliability = topic.get("Reliability Policy", "System Default")
    durability = topic.get("Durability Policy", "System Default")
    for profile in publisher.qos:
        # "System Default" is the RMW default: reliable, volatile.
        if reliability in ("Reliable", "System Default") and (
            profile.reliability != ReliabilityPolicy.RELIABLE
        ):
            problems.append(
                f"{name}: a {reliability} (reliable) subscription to {publisher.topic} gets "
                f"nothing from {publisher.node}, which may publish {profile.reliability.name}"
            )
        if durability == "Transient Local" and profile.durability != (
            DurabilityPolicy.TRANSIENT_LOCAL
        ):
            problems.append(
                f"{name}: a Transient Local subscription to {publisher.topic} is not matched "
                f"with {publisher.node}, which publishes {profile.durability.name}"
            )
    return problems


def config_problems(config: dict, publishers: list[Publisher]) -> list[str]:
    """Everything in an rviz configuration that rviz2 Jazzy or DDS would not do as meant."""
    problems = []
    for panel in config.get("Panels") or []:
        if panel.get("Class") not in PANEL_CLASSES:
            problems.append(f"panel class {panel.get('Class')!r} is not an rviz2 Jazzy panel")
    manager = config["Visualization Manager"]
    for tool in manager.get("Tools") or []:
        if tool.get("Class") not in TOOL_CLASSES:
            problems.append(f"tool class {tool.get('Class')!r} is not an rviz2 Jazzy tool")
    view = (manager.get("Views") or {}).get("Current") or {}
    if view.get("Class") not in VIEW_CLASSES:
        problems.append(f"view class {view.get('Class')!r} is not an rviz2 Jazzy view")
    by_topic: dict[str, list[Publisher]] = {}
    for publisher in publishers:
        by_topic.setdefault(publisher.topic, []).append(publisher)
    for display in displays(config):
        name, cls = display.get("Name", "<unnamed>"), display.get("Class")
        if cls not in DISPLAY_CLASSES:
            problems.append(f"{name}: display class {cls!r} is not an rviz2 Jazzy display")
            continue
        if cls not in DISPLAY_KEYS:
            problems.append(f"{name}: no property list for {cls} here; add it from rviz2's source")
            continue
        missing = {"Class", "Name", "Enabled"} - set(display)
        unknown = set(display) - COMMON_DISPLAY_KEYS - DISPLAY_KEYS[cls]
        if missing:
            problems.append(f"{name}: missing {sorted(missing)}")
        if unknown:
            problems.append(f"{name}: rviz2 {cls} has no properties {sorted(unknown)}")
        if "Topic" not in DISPLAY_KEYS[cls]:
            continue
        topic = display.get("Topic") or {}
        unknown = set(topic) - TOPIC_KEYS
        if unknown:
            problems.append(f"{name}: rviz2's Topic block has no {sorted(unknown)}")
        for key, allowed in (
            ("History Policy", HISTORY_POLICIES),
            ("Reliability Policy", RELIABILITY_POLICIES),
            ("Durability Policy", DURABILITY_POLICIES),
        ):
            if key in topic and topic[key] not in allowed:
                problems.append(f"{name}: {key} {topic[key]!r} is not one of {sorted(allowed)}")
        depth = topic.get("Depth", 5)
        if not isinstance(depth, int) or depth < 1:
            problems.append(f"{name}: Depth {depth!r} is not a positive integer")
        value = topic.get("Value")
        senders = by_topic.get(value, [])
        if not senders:
            problems.append(f"{name}: no launched node publishes {value!r}")
        for publisher in senders:
            if publisher.message_type != DISPLAY_MESSAGE_TYPES[cls]:
                problems.append(
                    f"{name}: {value} carries {publisher.message_type} from {publisher.node}, "
                    f"but {cls} shows {DISPLAY_MESSAGE_TYPES[cls]}"
                )
            problems += qos_problems(name, topic, publisher)
    return problems


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(RVIZ_CONFIG.read_text())


@pytest.fixture(scope="module")
def publishers() -> list[Publisher]:
    return launched_publishers()


def test_publishers_are_read_from_the_launch_files(publishers):
    image_publishers = {p.topic: p.node for p in publishers if p.message_type == "Image"}
    # the video player publishes the camera on the launch argument camera_topic
    camera_topic = argument_defaults(REPO_ROOT / "launch" / "local.launch.py")["camera_topic"]
    assert image_publishers.get(camera_topic) == "video_source", image_publishers
    nodes = {p.node for p in publishers}
    assert {"stac_encoder", "stac_segmenter", "stac_sensitivity", "video_source"} <= nodes


def test_stac_rviz_is_what_rviz2_jazzy_loads_and_our_nodes_feed(config, publishers):
    assert displays(config), f"{RVIZ_CONFIG} has no displays"
    problems = config_problems(config, publishers)
    assert not problems, f"{RVIZ_CONFIG}:\n" + "\n".join(problems)


def test_every_image_display_shows_a_published_topic(config, publishers):
    published = {p.topic for p in publishers if p.message_type == "Image"}
    shown = {
        d["Topic"]["Value"] for d in displays(config) if d["Class"] == "rviz_default_plugins/Image"
    }
    assert shown and shown <= published, f"shown {sorted(shown)}, published {sorted(published)}"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("unknown display class", "is not an rviz2 Jazzy display"),
        ("misspelt QoS property", "has no ['Reliabilty Policy']"),
        ("unknown display property", "has no properties ['Colour Scheme']"),
        ("topic nobody publishes", "no launched node publishes 'stac/mask_rgb'"),
        ("absolute topic", "no launched node publishes '/stac/overlay'"),
        ("reliable camera subscription", "may publish BEST_EFFORT"),
        ("transient-local overlay subscription", "publishes VOLATILE"),
        ("unknown QoS value", "'Sometimes' is not one of"),
        ("unknown tool", "is not an rviz2 Jazzy tool"),
    ],
)
def test_each_fault_is_reported(config, publishers, fault, expected):
    """The check finds each kind of mistake (on copies of stac.rviz with one fault each)."""
    broken = copy.deepcopy(config)
    image_displays = [d for d in displays(broken) if d["Class"] == "rviz_default_plugins/Image"]
    camera = next(d for d in image_displays if d["Topic"]["Reliability Policy"] == "Best Effort")
    other = next(d for d in image_displays if d is not camera)
    if fault == "unknown display class":
        other["Class"] = "rviz_default_plugins/Video"
    elif fault == "misspelt QoS property":
        other["Topic"]["Reliabilty Policy"] = other["Topic"].pop("Reliability Policy")
    elif fault == "unknown display property":
        other["Colour Scheme"] = "viridis"
    elif fault == "topic nobody publishes":
        other["Topic"]["Value"] = "stac/mask_rgb"
    elif fault == "absolute topic":  # would show the root robot whatever the namespace
        other["Topic"]["Value"] = "/stac/overlay"
    elif fault == "reliable camera subscription":
        camera["Topic"]["Reliability Policy"] = "Reliable"
    elif fault == "transient-local overlay subscription":
        other["Topic"]["Durability Policy"] = "Transient Local"
    elif fault == "unknown QoS value":
        other["Topic"]["Reliability Policy"] = "Sometimes"
    elif fault == "unknown tool":
        broken["Visualization Manager"]["Tools"].append({"Class": "rviz/Interact"})
    problems = config_problems(broken, publishers)
    assert any(expected in problem for problem in problems), problems
