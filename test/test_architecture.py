"""The architecture holds (test/import_graph.py), and the check catches each kind of fault.

The synthetic workspaces below reproduce, one by one, the faults this layout was made to end:
an edge package importing the robot package, a cycle between packages or between modules, a
node importing a node, a core module importing a message package (directly or through another
module), and imports that package.xml does not declare.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO_ROOT
from import_graph import LAYERS, check


def test_workspace_follows_the_architecture():
    problems = check(REPO_ROOT)
    assert not problems, "\n".join(problems)


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in REPO_ROOT.glob("stac_*/package.xml")}
    assert packages == set(LAYERS)


MANIFEST = """<?xml version="1.0"?>
<package format="3">
  <name>{name}</name>
{depends}
  <export><build_type>ament_python</build_type></export>
</package>
"""


def _workspace(tmp_path: Path, files: dict[str, str], depends: dict[str, list[str]]) -> Path:
    """A fake workspace: `files` maps 'pkg/module.py' to source; every package gets a
    package.xml with `depends` (plain exec_depend keys or 'pip:NAME' comments)."""
    for package in LAYERS:
        lines = []
        for key in depends.get(package, []):
            if key.startswith("pip:"):
                lines.append(f"  <!-- not in rosdep: pip install {key[4:]} -->")
            else:
                lines.append(f"  <exec_depend>{key}</exec_depend>")
        (tmp_path / package / package).mkdir(parents=True)
        (tmp_path / package / "setup.py").write_text("")
        (tmp_path / package / "package.xml").write_text(
            MANIFEST.format(name=package, depends="\n".join(lines))
        )
        (tmp_path / package / package / "__init__.py").write_text("")
    for relative, source in files.items():
        package, module = relative.split("/", 1)
        path = tmp_path / package / package / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_a_clean_fake_workspace_passes(tmp_path):
    root = _workspace(
        tmp_path,
        {
            "stac_codec/h264.py": "import numpy\nimport av\n",
            "stac_encoder/core.py": "from stac_codec.h264 import x\n",
            "stac_encoder/encoder_node.py": "import rclpy\nfrom stac_msgs.msg import A\n",
            "stac_sensitivity/online.py": "from stac_edge_segmenter import model\n",
        },
        {
            "stac_codec": ["python3-numpy", "pip:av==18.1.0"],
            "stac_encoder": ["stac_codec", "rclpy", "stac_msgs"],
            "stac_sensitivity": ["stac_edge_segmenter"],
        },
    )
    assert check(root) == []


FAULTS = {
    "edge imports the robot package": (
        {"stac_edge_segmenter/decoding.py": "from stac_encoder.h264_decoder import D\n"},
        {"stac_edge_segmenter": ["stac_encoder"]},
        "may only import lower layers",
    ),
    "a cycle between packages": (
        {"stac_sensitivity/calibrate.py": "from stac_eval.rate_accuracy import curve\n"},
        {"stac_sensitivity": ["stac_eval"]},
        "may only import lower layers",
    ),
    "a cycle between modules of one package": (
        {
            "stac_eval/bench_temporal.py": "from stac_eval.temporal_maps import maps\n",
            "stac_eval/temporal_maps.py": "def f():\n    from stac_eval.bench_temporal import h\n",
        },
        {},
        "import cycle between modules: stac_eval.bench_temporal -> stac_eval.temporal_maps",
    ),
    "a longer cycle through a subpackage": (
        {
            "stac_eval/replay/__init__.py": "",
            "stac_eval/replay/simulation.py": "from stac_eval import progress\n",
            "stac_eval/progress.py": "from stac_eval.replay.report import r\n",
            "stac_eval/replay/report.py": "import stac_eval.replay.simulation\n",
        },
        {},
        "import cycle between modules: stac_eval.progress -> stac_eval.replay.report -> "
        "stac_eval.replay.simulation",
    ),
    "a node imports a node": (
        {
            "stac_edge_segmenter/segmenter_node.py": "X = 1\n",
            "stac_sensitivity/sensitivity_node.py": (
                "from stac_edge_segmenter.segmenter_node import X\n"
            ),
        },
        {"stac_sensitivity": ["stac_edge_segmenter"]},
        "imports node module",
    ),
    "a core imports a message package": (
        {"stac_encoder/frame_sources.py": "from sensor_msgs.msg import Image\n"},
        {"stac_encoder": ["sensor_msgs"]},
        "is a core module but uses ROS",
    ),
    "a core uses ROS through another module": (
        {
            "stac_ros_common/image_conversion.py": "from sensor_msgs.msg import Image\n",
            "stac_encoder/frame_sources.py": "from stac_ros_common.image_conversion import f\n",
        },
        {"stac_ros_common": ["sensor_msgs"], "stac_encoder": ["stac_ros_common"]},
        "is a core module but uses ROS",
    ),
    "the evaluation holds an rclpy node outside its ros subpackage": (
        {"stac_eval/graph_runner.py": "import rclpy\n"},
        {"stac_eval": ["rclpy"]},
        "is a core module but uses ROS",
    ),
    "an undeclared stac package": (
        {"stac_eval/calibrate.py": "from stac_sensitivity import allocation\n"},
        {},
        "undeclared in stac_eval/package.xml",
    ),
    "an undeclared ROS package": (
        {"stac_encoder/encoder_node.py": "from std_srvs.srv import Trigger\n"},
        {},
        "undeclared in stac_encoder",
    ),
    "an undeclared rosdep module": (
        {"stac_sensitivity/online.py": "import cv2\n"},
        {},
        "does not depend on python3-opencv",
    ),
    "an undeclared pip module": (
        {"stac_encoder/frame_sources.py": "def f():\n    from rosbags.highlevel import R\n"},
        {},
        "pip install rosbags",
    ),
    "a module the rules do not know": (
        {"stac_codec/h264.py": "import somethingnew\n"},
        {},
        "no rosdep key or pip name",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_the_check_catches(tmp_path, fault):
    files, depends, message = FAULTS[fault]
    problems = check(_workspace(tmp_path, files, depends))
    assert any(message in problem for problem in problems), problems
