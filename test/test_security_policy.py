"""config/security/stac_policy.xml grants each node exactly what it uses (SROS2).

SROS2 itself cannot run with the PyPI ROS 2 wheels (their Fast DDS has no security plugins),
so this checks the policy statically: its structure (sros2 policy format 0.2.0), and its grants
against the topics and services the node modules create and the launch files remap
(test/policy_check.py). A topic or service added to a node without a policy entry fails here.
Names in the policy are relative, so one file serves a robot in any namespace once its
profiles' ns says which (the README's sed); checked for the root namespace and for /r1.
"""

from __future__ import annotations

import shutil

import pytest
from policy_check import check, graph_needs, read_policy

from conftest import REPO_ROOT

POLICY = REPO_ROOT / "config" / "security" / "stac_policy.xml"
ENCLAVES = {
    "stac_encoder": "/stac/robot",
    "video_source": "/stac/robot",
    "stac_segmenter": "/stac/edge",
    "stac_sensitivity": "/stac/edge",
    "stac_edge": "/stac/edge",
}


def policy_for_namespace(tmp_path, namespace: str):
    """The shipped policy with every profile in `namespace` (what the README's sed writes)."""
    path = tmp_path / "policy.xml"
    path.write_text(POLICY.read_text().replace('ns="/"', f'ns="{namespace}"'))
    return path


def test_the_policy_grants_each_node_exactly_what_it_uses():
    problems = check(REPO_ROOT, POLICY, ENCLAVES)
    assert not problems, "\n".join(problems)


def test_the_policy_serves_a_robot_in_its_namespace(tmp_path):
    problems = check(REPO_ROOT, policy_for_namespace(tmp_path, "/r1"), ENCLAVES, "/r1")
    assert not problems, "\n".join(problems)


def test_a_policy_for_another_namespace_fails(tmp_path):
    problems = check(REPO_ROOT, POLICY, ENCLAVES, "/r1")
    assert "stac_encoder needs publish /r1/stac/encoded, the policy does not grant it" in problems
    assert "stac_encoder is granted publish /stac/encoded, which it does not use" in problems


def test_the_graph_is_read_from_the_code():
    needs = graph_needs(REPO_ROOT)
    assert set(needs) == set(ENCLAVES)
    encoder = needs["stac_encoder"].needs
    assert {"/camera/image_raw", "/stac/qp_map"} <= encoder["subscribe"]
    assert {"/stac/encoded", "/stac/statistics", "/rosout"} <= encoder["publish"]
    assert "/stac_encoder/request_keyframe" in encoder["reply"]
    assert "/stac/qp_map" in needs["stac_sensitivity"].needs["publish"]
    assert "/stac/mask" in needs["stac_segmenter"].needs["publish"]


def test_a_namespace_moves_every_relative_name():
    needs = graph_needs(REPO_ROOT, "/r1")
    encoder = needs["stac_encoder"].needs
    assert {"/r1/camera/image_raw", "/r1/stac/qp_map"} <= encoder["subscribe"]
    assert {"/r1/stac/encoded", "/r1/stac/statistics", "/rosout"} <= encoder["publish"]
    assert "/r1/stac_encoder/request_keyframe" in encoder["reply"]
    assert "/r1/stac_encoder/request_keyframe" in needs["stac_segmenter"].needs["request"]
    assert "/r1/stac_sensitivity/get_parameters" in needs["stac_sensitivity"].needs["reply"]


def test_the_policy_has_the_sros2_structure():
    profiles = read_policy(POLICY)
    assert {p.enclave for p in profiles} == {"/stac/robot", "/stac/edge"}
    assert sorted(p.node for p in profiles) == sorted(ENCLAVES)


@pytest.fixture
def workspace(tmp_path):
    """A copy of the code the check reads: node modules, setup.py files, launch files."""
    for item in ["launch", *[p.name for p in REPO_ROOT.glob("stac_*") if p.is_dir()]]:
        shutil.copytree(
            REPO_ROOT / item,
            tmp_path / item,
            ignore=shutil.ignore_patterns("__pycache__", "*.pt", "weights", "results"),
        )
    return tmp_path


def test_a_new_topic_without_a_policy_entry_fails(workspace):
    node = workspace / "stac_encoder" / "stac_encoder" / "encoder_node.py"
    source = node.read_text()
    anchor = (
        '        self._publisher = self.create_publisher(EncodedFrame, "encoded", ENCODED_QOS)\n'
    )
    assert anchor in source
    node.write_text(
        source.replace(
            anchor, anchor + '        self.create_publisher(Image, "debug_image", OUTPUT_QOS)\n'
        )
    )
    problems = check(workspace, POLICY, ENCLAVES)
    assert problems == ["stac_encoder needs publish /debug_image, the policy does not grant it"], (
        problems
    )


def test_a_new_service_client_and_a_new_remapping_fail(workspace):
    node = workspace / "stac_sensitivity" / "stac_sensitivity" / "sensitivity_node.py"
    source = node.read_text()
    anchor = '        self.create_service(Trigger, "~/compute_now", self._on_compute_now)\n'
    assert anchor in source
    node.write_text(
        source.replace(anchor, anchor + '        self.create_client(Trigger, "reset_map")\n')
    )
    launch = workspace / "launch" / "robot.launch.py"
    launch.write_text(launch.read_text().replace('"stac/qp_map"', '"stac/feedback"'))
    problems = check(workspace, POLICY, ENCLAVES)
    assert "stac_sensitivity needs request /reset_map, the policy does not grant it" in problems
    assert "stac_encoder needs subscribe /stac/feedback, the policy does not grant it" in problems
    assert "stac_encoder is granted subscribe /stac/qp_map, which it does not use" in problems


def test_a_broken_policy_is_refused(tmp_path):
    broken = tmp_path / "policy.xml"
    broken.write_text(POLICY.read_text().replace('publish="ALLOW"', 'publish="MAYBE"', 1))
    with pytest.raises(ValueError, match="ALLOW"):
        read_policy(broken)
    broken.write_text(POLICY.read_text().replace('version="0.2.0"', 'version="0.1.0"'))
    with pytest.raises(ValueError, match="0.2.0"):
        read_policy(broken)
