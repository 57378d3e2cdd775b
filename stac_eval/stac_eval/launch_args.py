"""Read launch files without ROS: the Node actions they declare and the --ros-args those
become, so the demo, the live benchmark and the tests start the installed executables exactly
as `ros2 launch` would on a machine that has it (launch_ros is not available as a wheel).

Only the forms our launch files use are understood: literal values, LaunchConfiguration of a
declared argument, EnvironmentVariable("NAME", default_value=...) (read from this process's
environment), SetEnvironmentVariable("NAME", value), and
PathJoinSubstitution([ThisLaunchFileDir(), ...literal parts]).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LaunchConfigurationRef:
    """A `LaunchConfiguration("name")` in a launch file."""

    name: str


@dataclass(frozen=True)
class ConfigFileRef:
    """A `PathJoinSubstitution([ThisLaunchFileDir(), "..", "config", "<file>"])`."""

    path: Path


@dataclass(frozen=True)
class EnvironmentVariableRef:
    """An `EnvironmentVariable("NAME", default_value=...)`: the variable when launched."""

    name: str
    default: str = ""

    def value(self) -> str:
        return os.environ.get(self.name, self.default)


def _literal(node: ast.AST, launch_dir: Path) -> object:
    """A literal value, lists/tuples/dicts element-wise; references for launch substitutions;
    None for anything else computed at launch time."""
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(element, launch_dir) for element in node.elts]
    if isinstance(node, ast.Dict):
        return {
            _literal(k, launch_dir): _literal(v, launch_dir)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_literal(a, launch_dir) for a in node.args]
        if node.func.id == "LaunchConfiguration" and args and isinstance(args[0], str):
            return LaunchConfigurationRef(args[0])
        if node.func.id == "EnvironmentVariable" and args and isinstance(args[0], str):
            kwargs = {kw.arg: _literal(kw.value, launch_dir) for kw in node.keywords}
            return EnvironmentVariableRef(args[0], str(kwargs.get("default_value", "")))
        if node.func.id == "PathJoinSubstitution" and args and isinstance(args[0], list):
            parts = [p for p in args[0][1:] if isinstance(p, str)]
            return ConfigFileRef(launch_dir.joinpath(*parts).resolve())
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def launch_nodes(path: Path) -> list[dict[str, object]]:
    """The keyword arguments of every `Node(...)` in a launch file."""
    return [
        {kw.arg: _literal(kw.value, path.parent) for kw in c.keywords} for c in _calls(path, "Node")
    ]


def argument_defaults(path: Path) -> dict[str, object]:
    """name -> default_value of every DeclareLaunchArgument in a launch file."""
    defaults = {}
    for call in _calls(path, "DeclareLaunchArgument"):
        kwargs = {kw.arg: _literal(kw.value, path.parent) for kw in call.keywords}
        defaults[_literal(call.args[0], path.parent)] = kwargs.get("default_value")
    return defaults


def ros_namespace(value: object) -> str:
    """A launch file's `namespace` value as launch_ros applies it: "" = none, else absolute."""
    if not isinstance(value, str):
        raise ValueError(f"namespace must be a string, got {value!r}")
    value = value.strip("/")
    return f"/{value}" if value else ""


def _resolver(path: Path, overrides: dict[str, str]):
    """Resolves a launch file's values: launch arguments (`overrides` by name, else their
    defaults) and environment variables."""
    defaults = argument_defaults(path)

    def resolve(value: object) -> object:
        if isinstance(value, LaunchConfigurationRef):
            return resolve(overrides.get(value.name, defaults[value.name]))
        if isinstance(value, EnvironmentVariableRef):
            return value.value()
        return value

    return resolve


def launch_environment(path: Path, **overrides: str) -> dict[str, str]:
    """The environment variables the launch file sets (SetEnvironmentVariable) for the
    processes it starts, resolved as `ros2 launch <path>` with `overrides` would."""
    resolve = _resolver(path, overrides)
    environment = {}
    for call in _calls(path, "SetEnvironmentVariable"):
        name, value = (_literal(arg, path.parent) for arg in call.args[:2])
        environment[str(name)] = str(resolve(value))
    return environment


def ros_args(path: Path, executable: str, **overrides: str) -> list[str]:
    """The --ros-args `ros2 launch <path>` passes to `executable` (defaults of the launch
    arguments, or `overrides` by argument name; `namespace` puts the node in a namespace)."""
    resolve = _resolver(path, overrides)

    (node,) = [n for n in launch_nodes(path) if n["executable"] == executable]
    args = ["--ros-args"]
    if node.get("name"):  # a process of several nodes (a container) keeps their own names
        args += ["-r", f"__node:={node['name']}"]
    namespace = ros_namespace(resolve(node.get("namespace") or ""))
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    for entry in node.get("parameters") or []:
        entry = resolve(entry)
        if isinstance(entry, ConfigFileRef):
            args += ["--params-file", str(entry.path)]
        elif isinstance(entry, dict):
            for key, value in entry.items():
                value = resolve(value)
                args += ["-p", f"{key}:={value if value != '' else repr('')}"]
    for source, target in node.get("remappings") or []:
        args += ["-r", f"{source}:={resolve(target)}"]
    return args
