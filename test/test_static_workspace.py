"""Static checks of the workspace: packages, launch files and parameter files.

`ros2 launch` is not available on machines without a ROS install, so launch files are
checked here statically: every Node's package/executable is installed in the colcon install
space, every referenced file exists, and every parameter in a params file is declared by the
node that receives it.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import xml.etree.ElementTree as ET

import pytest
import yaml

from conftest import REPO_ROOT
from stac_eval.launch_args import (
    LaunchConfigurationRef,
    argument_defaults,
    launch_environment,
    launch_nodes,
    ros_args,
)

# every ament_python package of the workspace (a new one cannot be forgotten here)
PYTHON_PACKAGES = sorted(path.parent.name for path in REPO_ROOT.glob("stac_*/setup.py"))
LAUNCH_FILES = sorted((REPO_ROOT / "launch").glob("*.launch.py"))
PARAMS_FILES = sorted((REPO_ROOT / "config").glob("*.yaml"))
INSTALL = REPO_ROOT / "install"
# Nodes of other ROS packages that launch files may start; they come with a desktop ROS
# install and cannot be checked on a machine without one.
EXTERNAL_EXECUTABLES = {("rviz2", "rviz2")}


def console_scripts(package: str) -> dict[str, str]:
    """executable name -> 'module:function' from a package's setup.py."""
    text = (REPO_ROOT / package / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+)\s*=\s*([\w.]+:\w+)"', text))


def declared_parameters(module: str) -> set[str]:
    """Parameter names a node module declares (its PARAMETERS table of ParameterSpec)."""
    return {spec.name for spec in importlib.import_module(module).PARAMETERS}


@pytest.mark.parametrize("package", PYTHON_PACKAGES + ["stac_msgs"])
def test_package_manifest(package):
    root = ET.parse(REPO_ROOT / package / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == package
    build_type = root.find("export/build_type").text
    assert build_type == ("ament_cmake" if package == "stac_msgs" else "ament_python")
    if build_type == "ament_python":
        assert (REPO_ROOT / package / "resource" / package).is_file()
        assert (REPO_ROOT / package / package / "__init__.py").is_file()
        assert (
            f"install_scripts=$base/lib/{package}"
            in (REPO_ROOT / package / "setup.cfg").read_text()
        )


@pytest.mark.parametrize("package", PYTHON_PACKAGES)
def test_console_scripts_are_installed(package):
    for executable, target in console_scripts(package).items():
        path = INSTALL / package / "lib" / package / executable
        assert path.is_file() and os.access(path, os.X_OK), (
            f"{executable} ({target}) is not installed at {path}: run scripts/setup.sh"
        )


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_nodes_are_installed(launch_file):
    nodes = launch_nodes(launch_file)
    text = launch_file.read_text()
    assert "def generate_launch_description" in text
    assert nodes or "IncludeLaunchDescription" in text, f"{launch_file.name} starts nothing"
    for node in nodes:
        package, executable = node["package"], node["executable"]
        if (package, executable) in EXTERNAL_EXECUTABLES:
            continue
        assert package in PYTHON_PACKAGES, f"unknown package {package}"
        assert executable in console_scripts(package), f"{package} has no {executable}"
        assert (INSTALL / package / "lib" / package / executable).is_file()
    for referenced in re.findall(r'"([\w.-]+\.(?:yaml|rviz|launch\.py))"', text):
        assert any((REPO_ROOT / d / referenced).is_file() for d in ("config", "launch")), (
            f"{launch_file.name} references missing file {referenced}"
        )


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_configurations_are_declared(launch_file):
    """Every LaunchConfiguration a file reads is a DeclareLaunchArgument of that file."""
    text = launch_file.read_text()
    used = set(re.findall(r'LaunchConfiguration\(\s*"(\w+)"', text))
    declared = set(re.findall(r'DeclareLaunchArgument\(\s*"(\w+)"', text))
    assert used <= declared, f"{launch_file.name}: undeclared {sorted(used - declared)}"


def test_robot_and_edge_topics_meet():
    """The edge subscribes the encoded topic the robot publishes, and the robot the maps."""
    remapped = {}
    for launch_file in LAUNCH_FILES:
        for node in launch_nodes(launch_file):
            for source, target in node.get("remappings") or []:
                if isinstance(target, str):
                    remapped.setdefault((node["executable"], source), set()).add(target)
    robot_encoded = remapped[("encoder_node", "encoded")]
    assert robot_encoded == remapped[("segmenter_node", "encoded")]
    assert robot_encoded == remapped[("sensitivity_node", "encoded")]
    assert robot_encoded == remapped[("edge_container", "encoded")]
    robot_maps = remapped[("encoder_node", "qp_map")]
    assert robot_maps == remapped[("sensitivity_node", "qp_map")]
    assert robot_maps == remapped[("edge_container", "qp_map")]


def test_the_workspace_has_its_launch_and_parameter_files():
    names = {path.name for path in LAUNCH_FILES + PARAMS_FILES}
    assert {"robot.launch.py", "edge.launch.py", "local.launch.py"} <= names
    assert {"robot.yaml", "edge.yaml"} <= names


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_node_takes_the_namespace_and_relative_names(launch_file):
    """Each launch file has a namespace argument (default: root) that every node is put in,
    and remaps only to relative names, so a namespace moves all of a robot's names."""
    defaults = argument_defaults(launch_file)
    assert defaults.get("namespace") == "", f"{launch_file.name}: no namespace argument"
    for node in launch_nodes(launch_file):
        assert node.get("namespace") == LaunchConfigurationRef("namespace"), (
            f"{launch_file.name}: {node['executable']} is not put in the namespace"
        )
        for source, target in node.get("remappings") or []:
            if isinstance(target, LaunchConfigurationRef):
                target = defaults[target.name]
            assert not str(target).startswith("/"), (
                f"{launch_file.name}: {node['executable']} remaps {source} to absolute {target}"
            )


def test_the_namespace_becomes_the_nodes_ros_args():
    robot = REPO_ROOT / "launch" / "robot.launch.py"
    assert "__ns:=/r1" in ros_args(robot, "encoder_node", namespace="r1")
    assert not any(a.startswith("__ns:=") for a in ros_args(robot, "encoder_node"))
    edge = ros_args(REPO_ROOT / "launch" / "edge.launch.py", "edge_container", namespace="/r2")
    assert "__ns:=/r2" in edge and "request_keyframe:=stac_encoder/request_keyframe" in edge


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_the_discovery_server_is_a_launch_option(launch_file, monkeypatch):
    """discovery_server:=HOST:PORT makes every process a client of that Fast DDS Discovery
    Server; by default the shell's ROS_DISCOVERY_SERVER (none: multicast) stays as it is; the
    edge is a super client, so that it can find robots in the graph."""
    monkeypatch.delenv("ROS_DISCOVERY_SERVER", raising=False)
    assert launch_environment(launch_file)["ROS_DISCOVERY_SERVER"] == ""
    monkeypatch.setenv("ROS_DISCOVERY_SERVER", "10.0.0.5:11811")
    assert launch_environment(launch_file)["ROS_DISCOVERY_SERVER"] == "10.0.0.5:11811"
    given = launch_environment(launch_file, discovery_server="127.0.0.1:11811")
    assert given["ROS_DISCOVERY_SERVER"] == "127.0.0.1:11811"
    if launch_file.name == "edge.launch.py":
        assert given["ROS_SUPER_CLIENT"] == "TRUE"


@pytest.mark.parametrize("params_file", PARAMS_FILES, ids=lambda p: p.name)
def test_params_file_matches_declared_parameters(params_file):
    """Every parameter in a params file is declared by the node it is meant for; every
    section is keyed /**/<node name>, so it reaches that node in any namespace."""
    content = yaml.safe_load(params_file.read_text())
    assert isinstance(content, dict) and content, f"{params_file.name} is empty"
    modules_by_node = {}
    for launch_file in LAUNCH_FILES:
        for node in launch_nodes(launch_file):
            if node["package"] not in PYTHON_PACKAGES:
                continue
            module = console_scripts(node["package"])[node["executable"]].split(":")[0]
            if isinstance(node.get("name"), str):
                modules_by_node[node["name"]] = module
            else:  # a container: the nodes it composes, by their own names
                modules_by_node.update(importlib.import_module(module).NODE_MODULES)
    for key, section in content.items():
        assert key.startswith("/**/"), f"{params_file.name}: {key} is not keyed /**/<node>"
        node_name = key.removeprefix("/**/")
        assert set(section) == {"ros__parameters"}, f"{node_name}: only ros__parameters allowed"
        assert node_name in modules_by_node, f"{params_file.name}: no launched node {node_name}"
        declared = declared_parameters(modules_by_node[node_name])
        unknown = set(section["ros__parameters"]) - declared
        assert not unknown, f"{params_file.name}: {node_name} does not declare {sorted(unknown)}"


def test_the_robot_subscribes_the_camera_as_drivers_publish_by_default():
    """Camera drivers publish best effort: a reliable subscription would receive nothing.
    Every launch file that sets the encoder's camera_qos defaults it to sensor_data."""
    for launch_file in LAUNCH_FILES:
        defaults = argument_defaults(launch_file)
        tree = ast.parse(launch_file.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "camera_qos":
                    assert isinstance(value, ast.Call), (
                        f"{launch_file.name} hard-codes camera_qos {ast.unparse(value)}"
                    )
                    (argument,) = [a.value for a in value.args]
                    assert defaults[argument] == "sensor_data", launch_file.name
