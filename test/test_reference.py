"""docs/reference.md is what the nodes declare, and the generator refuses to guess.

The page is regenerated from the nodes (built in this process with discovery off) and must
equal the committed file; a node endpoint nobody described, a description of an endpoint the
node does not create, and a declared parameter without a spec each stop the generator.
"""

from __future__ import annotations

import pytest
from rclpy.node import Node
from std_msgs.msg import String

from conftest import REPO_ROOT
from stac_eval.ros import reference
from stac_ros_common.parameter_spec import ParameterSpec

pytestmark = pytest.mark.dds


def test_the_committed_reference_is_what_the_nodes_declare():
    generated = reference.render(*reference.collect())
    committed = (REPO_ROOT / "docs" / "reference.md").read_text()
    assert generated == committed, (
        "docs/reference.md is out of date: python -m stac_eval.ros.reference --out "
        "docs/reference.md"
    )


@pytest.fixture
def node():
    with reference.offline_ros([]):
        node = Node("reference_probe")
        yield node
        node.destroy_node()


def test_an_undescribed_topic_is_refused(node):
    node.create_publisher(String, "chatter", 1)
    with pytest.raises(ValueError, match="no description in ENDPOINTS for \\['chatter'\\]"):
        reference.node_endpoints(node, {})
    described = reference.node_endpoints(node, {"chatter": "words"})
    assert [(e.kind, e.name, e.type_name, e.qos) for e in described] == [
        ("publishes", "chatter", "std_msgs/msg/String", "reliable, keep last 1")
    ]


def test_a_description_of_a_missing_topic_is_refused(node):
    with pytest.raises(ValueError, match="never creates"):
        reference.node_endpoints(node, {"chatter": "words"})


def test_a_parameter_without_a_spec_is_refused(node):
    node.declare_parameter("speed", 1.0)
    with pytest.raises(ValueError, match="without a spec \\['speed'\\]"):
        reference.node_parameters(node, ())
    spec = ParameterSpec("speed", 1.0, "How fast.")
    assert reference.node_parameters(node, (spec,)) == (spec,)
