"""What the ROS graph of this workspace needs from an SROS2 policy, read statically, and the
comparison with config/security/stac_policy.xml (used by test_security_policy.py).

Needs: every node class of a node module (`super().__init__("name")`) with its
create_publisher / create_subscription / create_service / create_client calls (literal
names or module constants), the helpers of stac_ros_common that create endpoints for a node
they are given (StatisticsReporter: /stac/statistics), the executables of the setup.py files
and the node classes each one starts (edge_container: both edge nodes), and the remappings
and node names of the launch files (`stac_eval.launch_args.launch_nodes`, camera topic at its
launch-argument default). Every rclpy node also publishes /rosout and /parameter_events and
answers its parameter and type-description services.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from stac_eval.launch_args import LaunchConfigurationRef, argument_defaults, launch_nodes

ENDPOINT_KINDS = {
    "create_publisher": "publish",
    "create_subscription": "subscribe",
    "create_service": "reply",
    "create_client": "request",
}
DEFAULT_TOPICS = {"publish": {"/rosout", "/parameter_events"}}
DEFAULT_SERVICES = (
    "describe_parameters",
    "get_parameter_types",
    "get_parameters",
    "get_type_description",
    "list_parameters",
    "set_parameters",
    "set_parameters_atomically",
)
RULES = {"topics": ("publish", "subscribe"), "services": ("reply", "request")}


@dataclass
class NodeNeeds:
    """Permissions one node needs: kind (publish/subscribe/reply/request) -> resolved names."""

    name: str
    executable: str
    needs: dict[str, set[str]] = field(default_factory=dict)


def _string(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _module_constants(paths: list[Path]) -> dict[str, str]:
    constants = {}
    for path in paths:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        constants[target.id] = node.value.value
    return constants


def _endpoint_calls(tree: ast.AST, constants: dict[str, str], receiver: str) -> list[tuple]:
    """(kind, name) of every <receiver>.create_*(Type, name, ...) call under tree."""
    found = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        kind = ENDPOINT_KINDS.get(call.func.attr)
        owner = call.func.value
        if kind is None or not (isinstance(owner, ast.Name) and owner.id == receiver):
            continue
        if len(call.args) < 2:
            raise ValueError(f"{call.func.attr} without a literal name at line {call.lineno}")
        name = _string(call.args[1], constants)
        if name is None:
            raise ValueError(f"{call.func.attr} with a computed name at line {call.lineno}")
        found.append((kind, name))
    return found


def _helpers(root: Path, constants: dict[str, str]) -> dict[str, list[tuple]]:
    """Classes of stac_ros_common that create endpoints on a node handed to them."""
    helpers = {}
    for path in sorted((root / "stac_ros_common" / "stac_ros_common").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                calls = _endpoint_calls(node, constants, "node")
                if calls:
                    helpers[node.name] = calls
    return helpers


def _node_classes(path: Path, constants, helpers) -> dict[str, tuple[str, list[tuple]]]:
    """class name -> (default node name, endpoints) of the node classes a module defines."""
    classes = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        name = None
        for call in ast.walk(node):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "__init__"
                and isinstance(call.func.value, ast.Call)
                and getattr(call.func.value.func, "id", "") == "super"
                and call.args
            ):
                name = _string(call.args[0], constants)
        if name is None:
            continue
        endpoints = _endpoint_calls(node, constants, "self")
        used = {
            c.func.id
            for c in ast.walk(node)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        }
        for helper, calls in helpers.items():
            if helper in used:
                endpoints += calls
        classes[node.name] = (name, endpoints)
    return classes


def _executables(root: Path) -> dict[str, Path]:
    """console_scripts name -> module file, for the packages' setup.py files."""
    executables = {}
    for setup in sorted(root.glob("stac_*/setup.py")):
        for constant in ast.walk(ast.parse(setup.read_text())):
            if isinstance(constant, ast.Constant) and isinstance(constant.value, str):
                text = constant.value
                if " = " in text and ":" in text:
                    executable, target = (part.strip() for part in text.split("=", 1))
                    module = target.split(":")[0]
                    executables[executable] = setup.parent.joinpath(*module.split(".")).with_suffix(
                        ".py"
                    )
    return executables


def _resolve(name: str, node_name: str, remaps: dict[str, str], namespace: str = "/") -> str:
    """A topic or service name as a node in `namespace` resolves it (after remapping)."""
    name = remaps.get(name, name)
    prefix = namespace.rstrip("/")
    if name.startswith("~/"):
        return f"{prefix}/{node_name}/{name[2:]}"
    return name if name.startswith("/") else f"{prefix}/{name}"


def graph_needs(root: Path, namespace: str = "/") -> dict[str, NodeNeeds]:
    """node name -> what it needs, for every node the launch files start, launched with
    `namespace:=<namespace>` (every launch file's namespace argument)."""
    constants = _module_constants(sorted(root.glob("stac_*/stac_*/*.py")))
    helpers = _helpers(root, constants)
    executables = _executables(root)
    node_classes: dict[str, tuple[str, list[tuple]]] = {}
    for pattern in ("*_node.py", "*_container.py"):
        for path in sorted(root.glob(f"stac_*/stac_*/{pattern}")):
            node_classes.update(_node_classes(path, constants, helpers))
    result: dict[str, NodeNeeds] = {}
    for launch_file in sorted((root / "launch").glob("*.launch.py")):
        defaults = argument_defaults(launch_file)
        for entry in launch_nodes(launch_file):
            module = executables.get(entry.get("executable"))
            if module is None:
                continue  # not ours (rviz2)
            source = module.read_text()
            started = [
                cls
                for cls in node_classes
                if f"{cls}(" in source  # the classes the executable instantiates
            ]
            remaps = {}
            for old, new in entry.get("remappings") or []:
                if isinstance(new, LaunchConfigurationRef):
                    new = defaults[new.name]
                remaps[old] = new
            for cls in started:
                default_name, endpoints = node_classes[cls]
                node_name = entry.get("name") if len(started) == 1 else None
                node_name = node_name or default_name
                needs = result.setdefault(
                    node_name, NodeNeeds(node_name, entry["executable"])
                ).needs
                for kind, name in endpoints:
                    needs.setdefault(kind, set()).add(_resolve(name, node_name, remaps, namespace))
                for kind, names in DEFAULT_TOPICS.items():
                    needs.setdefault(kind, set()).update(names)
                needs.setdefault("reply", set()).update(
                    _resolve(f"~/{service}", node_name, {}, namespace)
                    for service in DEFAULT_SERVICES
                )
    return result


@dataclass
class PolicyProfile:
    enclave: str
    node: str
    grants: dict[str, set[str]]


def read_policy(path: Path) -> list[PolicyProfile]:
    """The profiles of an sros2 policy (format 0.2.0), relative names resolved in each
    profile's namespace as sros2 does. Raises ValueError when the file breaks the format's
    structure."""
    root = ET.parse(path).getroot()
    if root.tag != "policy" or root.get("version") != "0.2.0":
        raise ValueError('root must be <policy version="0.2.0">')
    (enclaves,) = root.findall("enclaves")
    profiles = []
    for enclave in enclaves:
        if enclave.tag != "enclave" or not (enclave.get("path") or "").startswith("/"):
            raise ValueError(f"bad enclave element {enclave.tag} {enclave.attrib}")
        for profile in enclave.findall("profiles/profile"):
            ns, node = profile.get("ns"), profile.get("node")
            if not (ns or "").startswith("/") or not node:
                raise ValueError(f"profile needs an absolute ns and a node name: {profile.attrib}")
            grants: dict[str, set[str]] = {}
            for group in profile:
                rules = RULES.get(group.tag)
                if rules is None or set(group.attrib) - set(rules) or not group.attrib:
                    raise ValueError(f"{node}: bad element <{group.tag} {group.attrib}>")
                item_tag = group.tag[:-1]
                names = [item.text.strip() for item in group]
                if any(item.tag != item_tag for item in group) or not names:
                    raise ValueError(f"{node}: <{group.tag}> must hold <{item_tag}> elements")
                for rule, value in group.attrib.items():
                    if value != "ALLOW":
                        raise ValueError(f"{node}: only ALLOW rules are used, got {value}")
                    grants.setdefault(rule, set()).update(
                        _resolve(name, node, {}, ns) for name in names
                    )
            profiles.append(PolicyProfile(enclave.get("path"), node, grants))
    return profiles


def check(
    root: Path, policy_path: Path, enclaves: dict[str, str], namespace: str = "/"
) -> list[str]:
    """Problems: nodes without a profile (or in the wrong enclave), permissions a node needs
    that the policy does not grant, and grants no node needs; the nodes launched in
    `namespace`, against the policy as it is written (its profiles' ns)."""
    needs = graph_needs(root, namespace)
    profiles = {p.node: p for p in read_policy(policy_path)}
    problems = []
    for node_name, node in sorted(needs.items()):
        profile = profiles.get(node_name)
        if profile is None:
            problems.append(f"node {node_name} ({node.executable}) has no profile in the policy")
            continue
        if enclaves.get(node_name) != profile.enclave:
            problems.append(
                f"node {node_name} is in enclave {profile.enclave}, "
                f"expected {enclaves.get(node_name)}"
            )
        for kind in sorted(set(node.needs) | set(profile.grants)):
            missing = node.needs.get(kind, set()) - profile.grants.get(kind, set())
            extra = profile.grants.get(kind, set()) - node.needs.get(kind, set())
            for name in sorted(missing):
                problems.append(f"{node_name} needs {kind} {name}, the policy does not grant it")
            for name in sorted(extra):
                problems.append(f"{node_name} is granted {kind} {name}, which it does not use")
    for node_name in sorted(set(profiles) - set(needs)):
        problems.append(f"the policy has a profile for {node_name}, which no launch file starts")
    return problems
