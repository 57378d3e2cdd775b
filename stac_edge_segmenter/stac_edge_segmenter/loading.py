"""Segmentation models by configuration, behind one interface: `load_model(config, device)`.

A model configuration is a YAML file:

    kind: stac_lite0_fpn | torchvision | torchscript | smp
    weights: file            # relative paths are relative to the YAML file
    classes: [sky, ...]      # K names; the network must output K channels
    palette: [[r, g, b], ...]  # K colours for overlays
    normalization: {mean: [r, g, b], std: [r, g, b]}  # in 0..255 pixel units
    input_size: [width, height]  # working resolution, or null for the frame's own size
    architecture: name       # torchvision: a torchvision.models.segmentation builder;
                             # smp: a segmentation_models_pytorch architecture
    options: {}              # extra keyword arguments for that builder (smp: encoder_name, ...)

Without a configuration the shipped CamVid model (EfficientNet-Lite0 + FPN) is loaded.
torchvision and segmentation_models_pytorch are imported only when a configuration asks for them.

Security: weights of the kinds stac_lite0_fpn, torchvision and smp are read with
`torch.load(weights_only=True)`, which refuses pickled code, so such a weights file from
elsewhere cannot run code on the edge. A `torchscript` file is different by design:
`torch.jit.load` builds and runs the program the file contains, so it is as trusted as any
code you install; load only TorchScript files you made or verified (a checksum from a source
you trust), and keep the model directory writable by its owner only. A malformed model YAML
raises ModelConfigError naming the key.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from torch import nn

from stac_codec.logit_labels import LogitChain
from stac_edge_segmenter.model import (
    LiteFPN,
    WeightsError,
    fuse_for_inference,
    load_lite0_fpn,
    padded_size,
    read_weights_file,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "camvid_lite0_fpn.yaml"
KINDS = ("stac_lite0_fpn", "torchvision", "torchscript", "smp")
_KEYS = {
    "name",
    "kind",
    "weights",
    "classes",
    "palette",
    "normalization",
    "input_size",
    "architecture",
    "options",
}


class ModelConfigError(ValueError):
    """A model configuration that cannot describe a usable model."""


@dataclass(frozen=True)
class ModelSpec:
    """A validated model configuration."""

    name: str
    kind: str
    weights: Path
    classes: list[str]
    palette: np.ndarray  # Kx3 uint8
    mean: tuple[float, float, float]  # 0..255 units
    std: tuple[float, float, float]
    input_size: tuple[int, int] | None  # (width, height); None: each frame's own size
    architecture: str | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """class_ids NxHxW uint8 and probabilities NxKxHxW float32 (None when not asked for),
    at the input frames' size."""

    class_ids: np.ndarray
    probabilities: np.ndarray | None


def read_spec(config: str | Path) -> ModelSpec:
    """Parse and validate a model YAML file.

    FileNotFoundError when it does not exist; ModelConfigError, naming the key, for anything
    else that is wrong with it (not YAML, wrong types, non-finite numbers, out-of-range values).
    """
    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model configuration not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise ModelConfigError(f"{path}: not a readable YAML file: {error}") from error
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path}: expected a mapping at the top level")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ModelConfigError(
            f"{path}: unknown keys {sorted(map(str, unknown))}; known: {sorted(_KEYS)}"
        )
    return _spec_from_mapping(raw, path)


def _spec_from_mapping(raw: dict, path: Path) -> ModelSpec:
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ModelConfigError(f"{path}: kind must be one of {KINDS}, got {kind!r}")
    architecture = raw.get("architecture")
    if architecture is not None and not (isinstance(architecture, str) and architecture):
        raise ModelConfigError(f"{path}: 'architecture' must be a name, got {architecture!r}")
    if kind in ("torchvision", "smp") and not architecture:
        raise ModelConfigError(f"{path}: kind {kind} needs an 'architecture'")
    weights = raw.get("weights")
    if not isinstance(weights, str) or not weights or "\x00" in weights:
        raise ModelConfigError(f"{path}: 'weights' (a file name) is required, got {weights!r}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str | int | float) or isinstance(name, bool):
        raise ModelConfigError(f"{path}: 'name' must be a string, got {name!r}")
    classes = _classes(raw.get("classes"), path)
    normalization = raw.get("normalization")
    if not isinstance(normalization, dict) or set(normalization) != {"mean", "std"}:
        raise ModelConfigError(
            f"{path}: 'normalization' must be a mapping with 'mean' and 'std', "
            f"got {normalization!r}"
        )
    options = raw.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ModelConfigError(f"{path}: 'options' must be a mapping of names, got {options!r}")
    return ModelSpec(
        name=str(name),
        kind=kind,
        weights=(path.parent / Path(weights).expanduser()).resolve(),
        classes=classes,
        palette=_palette(raw.get("palette"), len(classes), path),
        mean=_triple(normalization.get("mean"), "normalization.mean", path),
        std=_triple(normalization.get("std"), "normalization.std", path, positive=True),
        input_size=_input_size(raw.get("input_size"), path),
        architecture=architecture,
        options=dict(options),
    )


MAX_INPUT_SIDE = 8192  # pixels: a working resolution beyond this is a typo, not a model


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _classes(value, path: Path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise ModelConfigError(f"{path}: 'classes' must be a non-empty list of names")
    if len(set(value)) != len(value):
        raise ModelConfigError(f"{path}: 'classes' names a class twice: {value}")
    if len(value) > 256:
        raise ModelConfigError(f"{path}: 'classes' lists {len(value)} classes; masks hold 256")
    return value


def _palette(value, num_classes: int, path: Path) -> np.ndarray:
    rows_ok = isinstance(value, list) and len(value) == num_classes
    if rows_ok:
        rows_ok = all(
            isinstance(row, list)
            and len(row) == 3
            and all(_is_int(c) and 0 <= c <= 255 for c in row)
            for row in value
        )
    if not rows_ok:
        raise ModelConfigError(
            f"{path}: 'palette' must hold {num_classes} [r, g, b] rows of integers in 0..255 "
            f"(one per class), got {str(value)[:80]}"
        )
    return np.asarray(value, dtype=np.uint8).reshape(num_classes, 3)


def _triple(value, key: str, path: Path, positive: bool = False) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3 or not all(map(_is_finite_number, value)):
        raise ModelConfigError(
            f"{path}: '{key}' must be three finite numbers (r, g, b), got {value!r}"
        )
    triple = tuple(float(v) for v in value)
    if positive and min(triple) <= 0:
        raise ModelConfigError(f"{path}: '{key}' must be positive, got {value!r}")
    return triple


def _input_size(value, path: Path) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_int(v) and 0 < v <= MAX_INPUT_SIDE for v in value)
    ):
        raise ModelConfigError(
            f"{path}: 'input_size' must be [width, height] (integers in 1..{MAX_INPUT_SIDE}) "
            f"or null, got {value!r}"
        )
    return value[0], value[1]


class SegmentationModel:
    """A loaded network with its classes, palette, normalisation and working resolution."""

    def __init__(self, network: nn.Module, spec: ModelSpec, device: torch.device) -> None:
        self.network = network.to(device).eval()
        # Inference only: no parameter gradients, so the sensitivity's backward pass computes
        # the gradient to the input and nothing else.
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.spec = spec
        self.device = device
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    @property
    def palette(self) -> np.ndarray:
        return self.spec.palette

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW float RGB in 0..255 on `device` -> NxKxHxW logits at the input size.

        Differentiable w.r.t. x: normalisation and resizing to the working resolution and
        back happen inside, so dL/dx is the sensitivity of the frame as given. While traced
        (ONNX export) both resizes stay in the graph even where the example frame needs none
        (a same-size bilinear resize is the identity), so the graph serves every frame size."""
        tracing = torch.jit.is_tracing()
        height, width = x.shape[-2:]
        logits = self._checked(self.network(self._working(x)))
        if tracing or logits.shape[-2:] != (height, width):
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        return logits

    @property
    def tail_in_network(self) -> bool:
        """Whether `low_res_logits` stops inside the network, before its own bilinear
        upsampling and crop (LiteFPN), not at its output."""
        return isinstance(self.network, LiteFPN)

    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW float RGB in 0..255 -> the logits before the network's bilinear tail: the
        stride-4 head's for the shipped LiteFPN, the network's output for any other model.
        `logit_chain` says how they become `logits(x)` (class_ids_from_logits gives its
        argmax without computing it)."""
        x = self._working(x)
        if self.tail_in_network:
            return self._checked(self.network.low_res_logits(x))
        return self._checked(self.network(x))

    def logit_chain(self, frame_size: tuple[int, int], low_size: tuple[int, int]) -> LogitChain:
        """The chain from `low_res_logits` of low_size (height, width) to a frame of
        frame_size (height, width): for LiteFPN up to its padded working size and cropped to
        the working size, then (any model) bilinear to the frame where the sizes differ."""
        working = self.spec.input_size[::-1] if self.spec.input_size else tuple(frame_size)
        if self.tail_in_network:
            return LogitChain.of(tuple(low_size), padded_size(*working), working, frame_size)
        return LogitChain.of(tuple(low_size), out=tuple(frame_size))

    def _working(self, x: torch.Tensor) -> torch.Tensor:
        """Frames normalised and (when the model has a working resolution) resized to it."""
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"expected a float Nx3xHxW tensor, got {x.dtype} {tuple(x.shape)}")
        height, width = x.shape[-2:]
        x = (x - self._mean) / self._std
        working = self.spec.input_size
        if working is not None and (torch.jit.is_tracing() or (width, height) != working):
            x = F.interpolate(x, size=working[::-1], mode="bilinear", align_corners=False)
        return x

    def _checked(self, output) -> torch.Tensor:
        logits = output["out"] if isinstance(output, dict) else output
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"model {self.spec.name!r} output shape {tuple(logits.shape)}, but the "
                f"configuration declares {self.num_classes} classes"
            )
        return logits

    def predict(
        self, images: np.ndarray, batch_size: int = 4, with_probabilities: bool = True
    ) -> Prediction:
        """HxWx3 or NxHxWx3 uint8 RGB frames (any size) -> class ids and probabilities.

        with_probabilities=False skips the softmax and its NxKxHxW copy (about a third of
        the time of a 960x540 frame on a CPU) when only the mask is needed."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected HxWx3 or NxHxWx3 uint8 RGB, got {images.dtype} {images.shape}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        class_ids = np.empty((len(images), *images.shape[1:3]), dtype=np.uint8)
        probabilities = None
        if with_probabilities:
            probabilities = np.empty(
                (len(images), self.num_classes, *images.shape[1:3]), dtype=np.float32
            )
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device)
                logits = self.logits(batch.permute(0, 3, 1, 2).float())
                class_ids[start : start + batch_size] = logits.argmax(1).cpu().numpy()
                if probabilities is not None:
                    probabilities[start : start + batch_size] = logits.softmax(1).cpu().numpy()
        return Prediction(class_ids=class_ids, probabilities=probabilities)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(config: str | Path | None = None, device: str | None = None) -> SegmentationModel:
    """The model a YAML configuration describes; the shipped CamVid model when None."""
    spec = read_spec(DEFAULT_CONFIG if config is None else config)
    return build_model(spec, device)


def build_model(spec: ModelSpec, device: str | None = None) -> SegmentationModel:
    """Load the network of a validated spec onto `device` (default: CUDA when available)."""
    if not spec.weights.is_file():
        raise FileNotFoundError(f"weights file of model {spec.name!r} not found: {spec.weights}")
    torch_device = torch.device(device) if device else default_device()
    network = _LOADERS[spec.kind](spec)
    if spec.kind != "torchscript" and torch_device.type == "cpu":
        # channels-last is faster for depthwise-heavy networks on the CPU; outputs are equal.
        network = network.to(memory_format=torch.channels_last)
    return SegmentationModel(network, spec, torch_device)


def _load_lite0_fpn(spec: ModelSpec) -> nn.Module:
    # BatchNorms folded into the convolutions: the same outputs to float32 rounding, cheaper
    # forward and backward passes (the model is only ever evaluated through this loader).
    return fuse_for_inference(load_lite0_fpn(spec.weights, num_classes=len(spec.classes)))


def _load_torchscript(spec: ModelSpec) -> nn.Module:
    """The TorchScript program in spec.weights. torch.jit.load executes that program's code by
    design (no weights_only mode exists for it): only load files you trust."""
    try:
        return torch.jit.load(str(spec.weights), map_location="cpu")
    except Exception as error:  # noqa: BLE001 - torch.jit.load raises anything on a bad file
        raise WeightsError(
            f"{spec.weights} is not a loadable TorchScript file ({type(error).__name__}: {error})"
        ) from error


def _import_optional(module: str, package: str, kind: str):
    try:
        return importlib.import_module(module)
    except (ImportError, OSError, RuntimeError) as error:
        raise ImportError(
            f"model kind {kind!r} needs the library {package}, which cannot be imported here "
            f"({type(error).__name__}: {error}); install it or use a TorchScript export"
        ) from error


def _load_torchvision(spec: ModelSpec) -> nn.Module:
    segmentation = _import_optional("torchvision.models.segmentation", "torchvision", spec.kind)
    builder = getattr(segmentation, spec.architecture, None)
    if not callable(builder):
        raise ModelConfigError(f"torchvision has no segmentation model {spec.architecture!r}")
    network = builder(
        weights=None, weights_backbone=None, num_classes=len(spec.classes), **spec.options
    )
    return _with_state_dict(network, spec)


def _load_smp(spec: ModelSpec) -> nn.Module:
    smp = _import_optional("segmentation_models_pytorch", "segmentation-models-pytorch", spec.kind)
    options = {"encoder_weights": None, **spec.options}
    network = smp.create_model(spec.architecture, classes=len(spec.classes), **options)
    return _with_state_dict(network, spec)


def _with_state_dict(network: nn.Module, spec: ModelSpec) -> nn.Module:
    """Load a state-dict file; a shape mismatch is reported as a class-count problem."""
    state = read_weights_file(spec.weights)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{spec.weights} holds no state dict (got {type(state).__name__})")
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise WeightsError(
            f"weights {spec.weights} do not fit {spec.architecture} with "
            f"{len(spec.classes)} classes (does the class list match?): {error}"
        ) from error
    return network


_LOADERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "stac_lite0_fpn": _load_lite0_fpn,
    "torchvision": _load_torchvision,
    "torchscript": _load_torchscript,
    "smp": _load_smp,
}
