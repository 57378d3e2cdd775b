"""Inference engines for the edge's segmentation forward: one call, a batch of frames in, masks out.

Every engine has `segment_batch(frames) -> class_ids`: uint8 NxHxWx3 RGB frames (any N, any
size) to uint8 NxHxW class ids, what `SegmentationModel.predict(..., with_probabilities=False)`
gives, and `segment_batch_with_logits(frames) -> Segmentation`: the same class ids with the
low-resolution logits and the `LogitChain` they came through (for a mask coder that sends
logits). A fleet's scheduler hands one batch of several robots' newest frames to it.

Every engine stops at the model's low-resolution logits (`SegmentationModel.low_res_logits`:
the shipped LiteFPN's stride-4 head, any other model's output) and takes the class ids through
`stac_codec.logit_labels` (per-axis taps and a C++ argmax that interpolates only where a pixel's
support disagrees) instead of upsampling K logit planes to the frame: the same class ids but
for float32 near-ties, a third of an int8 forward less on a CPU.

- `torch`: the loaded PyTorch model, eager.
- `onnxruntime`: the same model exported at start to ONNX (uint8 frames to the low-resolution
  logits: normalisation, resizing to the working resolution, the network; dynamic batch,
  height and width) and run by ONNX Runtime: CPU execution provider on a CPU, CUDA (TensorRT
  where installed) on a GPU. The graph is the full export (to class ids: resizes and argmax
  included) cut at the logits the model's `logit_chain` starts from; where the cut or its check
  fails the full graph runs instead (the reason logged once). Before it is used the graph is
  checked against torch's own class ids on two frame sizes (masks must agree on
  `MIN_AGREEMENT` of the pixels), so a graph that froze a frame size or a branch at export time
  is never used.
- `onnxruntime_int8`: that graph with the network's operators statically quantized to int8
  (QDQ, ONNX Runtime's quantizer) with activation ranges calibrated offline on unlabelled
  frames and stored beside the weights (`int8_ranges_path`, written by `calibrate_int8`),
  checked against torch as the fp32 graph is (`MIN_INT8_AGREEMENT`).

The sensitivity map's backward pass always stays in torch (ONNX Runtime's inference sessions
have no gradients). Whatever cannot run through ONNX Runtime (the library missing, a model the
exporter refuses, a failed check, a session that fails later on a frame) runs on torch instead;
`create_engine` and `FallbackEngine` say why, once, through the caller's log function.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from stac_codec.logit_labels import LogitChain, class_ids_from_logits
from stac_edge_segmenter.loading import SegmentationModel

ENGINE_NAMES = ("torch", "onnxruntime", "onnxruntime_int8")
# The segmenter's default (chosen by measurement: docs/engines.md).
DEFAULT_ENGINE = "onnxruntime"
# An exported graph is used only if its masks agree with torch's on this share of the pixels of
# the check frames (fp32 differences flip only near-ties; a frozen shape flips whole regions).
MIN_AGREEMENT = 0.995
# The int8 graph is checked on the same frames against a lower bar: they are smooth random
# colour fields, far from the camera frames its ranges were calibrated on. The shipped model's
# int8 graph agrees with torch on 89.9 % of their pixels (99.6 % of CamVid val's), with its
# ranges off by a factor of 2 on at most 50 %, with ranges of other tensors on 3 %.
MIN_INT8_AGREEMENT = 0.8
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME, LOGITS_NAME = "frames", "class_ids", "logits"
INT8_RANGES_SUFFIX = ".int8_ranges.json"
NETWORK_SCOPE = "/network/"  # the exporter's name prefix of the network's nodes

LogFn = Callable[[str], None]
ChainFn = Callable[[tuple[int, int], tuple[int, int]], LogitChain]


@dataclass(frozen=True)
class Segmentation:
    """A batch's uint8 NxHxW class ids and, where the engine computed them so, the float32
    NxKxhxw low-resolution logits they came from through `chain` (one for the batch: its
    frames have one size); logits and chain are None where a full graph gave the class ids."""

    class_ids: np.ndarray
    logits: np.ndarray | None = None
    chain: LogitChain | None = None


class Engine(Protocol):
    name: str

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        """uint8 NxHxWx3 RGB -> uint8 NxHxW class ids."""

    def segment_batch_with_logits(self, frames: np.ndarray) -> Segmentation:
        """uint8 NxHxWx3 RGB -> class ids and the low-resolution logits behind them."""


class EngineError(RuntimeError):
    """ONNX Runtime cannot run this model here; the message says why."""


def _frame_batch(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected a non-empty NxHxWx3 uint8 RGB batch, got {frames.dtype} "
                         f"{frames.shape}")  # fmt: skip
    return np.ascontiguousarray(frames)


def _from_logits(logits: np.ndarray, chain: LogitChain) -> Segmentation:
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    class_ids = np.stack([class_ids_from_logits(frame_logits, chain) for frame_logits in logits])
    return Segmentation(class_ids, logits, chain)


class TorchEngine:
    """The PyTorch model as loaded, one forward for the whole batch; `low_res=False`: torch's
    own resizes and argmax (the reference the other engines are checked against)."""

    name = "torch"

    def __init__(self, model: SegmentationModel, low_res: bool = True) -> None:
        self.model = model
        self.low_res = low_res

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        return self.segment_batch_with_logits(frames).class_ids

    def segment_batch_with_logits(self, frames: np.ndarray) -> Segmentation:
        frames = _frame_batch(frames)
        if not self.low_res:
            prediction = self.model.predict(
                frames, batch_size=len(frames), with_probabilities=False
            )
            return Segmentation(prediction.class_ids)
        with torch.inference_mode():
            batch = torch.from_numpy(frames).to(self.model.device)
            logits = self.model.low_res_logits(batch.permute(0, 3, 1, 2).float())
            logits = logits.float().cpu().numpy()
        return _from_logits(logits, self.model.logit_chain(frames.shape[1:3], logits.shape[2:]))


class OnnxRuntimeEngine:
    """An ONNX Runtime session of a graph from `export_onnx` (or its int8 form): cut at the
    low-resolution logits when `chain_for` (the model's `logit_chain`) is given, else the full
    graph to class ids (`full_graph_reason` says why, when a cut was tried)."""

    def __init__(
        self,
        name: str,
        session,
        chain_for: ChainFn | None = None,
        full_graph_reason: str | None = None,
        from_cache: bool = False,
    ) -> None:
        self.name = name
        self.session = session
        self.chain_for = chain_for
        self.full_graph_reason = full_graph_reason
        self.from_cache = from_cache  # a checked graph from an EngineCache, not built now

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        return self.segment_batch_with_logits(frames).class_ids

    def segment_batch_with_logits(self, frames: np.ndarray) -> Segmentation:
        frames = _frame_batch(frames)
        if self.chain_for is None:
            (class_ids,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: frames})
            if class_ids.shape != frames.shape[:3] or class_ids.dtype != np.uint8:
                raise EngineError(
                    f"the ONNX graph gave {class_ids.dtype} {class_ids.shape} class ids for "
                    f"frames {frames.shape}"
                )
            return Segmentation(class_ids)
        (logits,) = self.session.run([LOGITS_NAME], {INPUT_NAME: frames})
        if logits.ndim != 4 or len(logits) != len(frames) or logits.dtype != np.float32:
            raise EngineError(
                f"the ONNX graph gave {logits.dtype} {logits.shape} logits for frames "
                f"{frames.shape}"
            )
        return _from_logits(logits, self.chain_for(frames.shape[1:3], logits.shape[2:]))


class _FramesToClassIds(torch.nn.Module):
    """What is exported: uint8 NxHxWx3 RGB -> uint8 NxHxW class ids through the model's own
    `logits` (which, while traced, keeps both resizes in the graph whatever the example size)."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.network = model.network  # a submodule: its nodes are named NETWORK_SCOPE...
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(frames.permute(0, 3, 1, 2).float())
        return logits.argmax(1).to(torch.uint8)


def _example_size(model: SegmentationModel) -> tuple[int, int]:
    """(width, height) of the export example and the first check frame."""
    return model.spec.input_size or (480, 360)


def export_onnx(model: SegmentationModel) -> bytes:
    """The model as an ONNX graph (uint8 frames -> uint8 class ids), dynamic batch, height and
    width; EngineError when the exporter refuses it."""
    width, height = _example_size(model)
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8, device=model.device)
    buffer = io.BytesIO()
    dynamic = {0: "batch", 1: "height", 2: "width"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation notes, not failures
            # Traced first: the ONNX exporter cannot trace into a TorchScript network itself.
            traced = torch.jit.trace(_FramesToClassIds(model).eval(), example, check_trace=False)
            torch.onnx.export(
                traced,
                (example,),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
            )
    except Exception as error:  # the exporter raises many kinds for what it cannot express
        raise EngineError(f"ONNX export failed: {type(error).__name__}: {error}") from error
    return _canonical_names(buffer.getvalue())


def _canonical_names(onnx_model: bytes) -> bytes:
    """Name every node and intermediate tensor by its place in the graph: `network/<i>_<op>`
    for the network's nodes, `frame/<i>_<op>` for the rest (normalisation, resizes, argmax).
    The exporter's own names vary between exports of the same model (module scopes are named
    differently the second time in a process), and the int8 activation ranges are stored by
    tensor name. Graphs with subgraphs (If, Loop) keep the exporter's names."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    if any(
        attribute.g.node or attribute.graphs for node in graph.node for attribute in node.attribute
    ):
        return onnx_model
    kept = {value.name for value in (*graph.input, *graph.output, *graph.initializer)}
    renamed: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        scope = "network" if node.name.startswith(NETWORK_SCOPE) else "frame"
        node.name = f"{scope}/{index}_{node.op_type}"
        for position, name in enumerate(node.input):
            node.input[position] = renamed.get(name, name)
        for position, name in enumerate(node.output):
            if name and name not in kept:
                renamed[name] = node.output[position] = f"{node.name}:{position}"
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)
    return model.SerializeToString()


def _providers(device: torch.device, available: list[str]) -> list:
    """GPU execution providers first where the model lives on a GPU, always the CPU last."""
    wanted: list = []
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        wanted += [
            (name, options)
            for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
            if name in available
        ]
    return [*wanted, "CPUExecutionProvider"]


def create_session(onnx_model: bytes, device: torch.device, threads: int = 0):
    """An ONNX Runtime session; `threads` intra-op threads (0 = ONNX Runtime's default). The
    worker threads sleep between calls instead of spinning, so the cores go to the map pass
    and the decoder while the segmenter waits for a frame."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about providers are not failures
    providers = _providers(device, ort.get_available_providers())
    try:
        return ort.InferenceSession(onnx_model, options, providers=providers)
    except Exception as error:  # ORT's own exception types derive from Exception only
        raise EngineError(
            f"ONNX Runtime session failed: {type(error).__name__}: {error}"
        ) from error


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise EngineError(f"onnxruntime cannot be imported: {error}") from error
    return onnxruntime


def check_batches(model: SegmentationModel) -> list[np.ndarray]:
    """Deterministic batches (smooth colour fields) that a usable graph must get right: two
    frames of the example size in one batch, and one frame larger by half whose sides are not
    multiples of 32."""
    width, height = _example_size(model)
    generator = np.random.default_rng(0)

    def field(size: tuple[int, int]) -> np.ndarray:
        coarse = generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)

    larger = (width * 3 // 2 + 6, height * 3 // 2 + 6)
    return [np.stack([field((width, height)), field((width, height))]), field(larger)[None]]


def agreement(engine: Engine, reference: Engine, batches: Iterable[np.ndarray]) -> float:
    """The share of pixels on which two engines' masks agree, over `batches`."""
    same = total = 0
    for batch in batches:
        mask = engine.segment_batch(batch)
        same += int(np.count_nonzero(mask == reference.segment_batch(batch)))
        total += mask.size
    return same / total


def _checked(
    engine: OnnxRuntimeEngine, model: SegmentationModel, minimum: float = MIN_AGREEMENT
) -> OnnxRuntimeEngine:
    """The engine, if its masks on the check batches agree with torch's own (torch's resizes
    and argmax, not the low-resolution tail) on `minimum` of the pixels; else EngineError."""
    try:
        share = agreement(engine, TorchEngine(model, low_res=False), check_batches(model))
    except Exception as error:
        raise EngineError(f"the {engine.name} graph failed on a check frame: {error}") from error
    if share < minimum:
        raise EngineError(
            f"the {engine.name} graph's masks agree with torch on {100 * share:.2f}% of the "
            f"check batches' pixels (< {100 * minimum:.1f}%): the export froze something, or "
            "the int8 ranges do not fit this model"
        )
    return engine


def int8_ranges_path(model: SegmentationModel) -> Path:
    """Where the int8 activation ranges of a model live: beside its weights."""
    weights = model.spec.weights
    return weights.with_name(weights.stem + INT8_RANGES_SUFFIX)


def _prepared(onnx_model: bytes, directory: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (shape inference, constant folding, every
    zero Pad merged into the convolution after it): the graph the quantizer and the int8
    ranges see. Without it each TF-style "same" padding of a stride-2 convolution stayed a
    float Pad between a DequantizeLinear and a QuantizeLinear (~15 % of an int8 forward)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = directory / "exported.onnx", directory / "prepared.onnx"
    source.write_bytes(onnx_model)
    quant_pre_process(source, target)
    return target


def _graph_maps(nodes) -> tuple[dict, dict[str, list]]:
    """{tensor: the node producing it}, {tensor: the nodes reading it} over `nodes`."""
    producer = {output: node for node in nodes for output in node.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _float_nodes(graph) -> list[str]:
    """Nodes left in float: everything outside the network (normalisation, resizes, argmax)
    and the network's own tail from its last convolution to the argmax (the upsampling of the
    logits to the frame and the crop), so the argmax sees float logits, not 8-bit ones."""
    producer, _ = _graph_maps(graph.node)
    kept = [node.name for node in graph.node if not node.name.startswith("network/")]
    for node in graph.node:
        if node.op_type != "ArgMax":
            continue
        step = producer.get(node.input[0])
        while step is not None and step.op_type in ("Resize", "Slice"):
            kept.append(step.name)
            step = producer.get(step.input[0])
    return kept


def _constant(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for initializer in graph.initializer:
        if initializer.name == name:
            return numpy_helper.to_array(initializer)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _normalisation(graph) -> tuple[float, float, str] | None:
    """(mean, std, the Div's output) of the graph's `Cast -> Sub(mean) -> Div(std)` on the
    uint8 frames where mean and std are one value each and mean an integer in 0..255 (then the
    uint8 frame is exactly the normalised frame quantized with scale 1/std and zero point
    mean); else None."""
    producer, _ = _graph_maps(graph.node)
    for node in graph.node:
        if node.op_type != "Div":
            continue
        sub = producer.get(node.input[0])
        cast = producer.get(sub.input[0]) if sub is not None and sub.op_type == "Sub" else None
        if cast is None or cast.op_type != "Cast":
            continue
        mean, std = _constant(graph, sub.input[1]), _constant(graph, node.input[1])
        if mean is None or std is None or np.unique(mean).size != 1 or np.unique(std).size != 1:
            return None
        mean, std = float(mean.flat[0]), float(std.flat[0])
        if mean.is_integer() and 0 <= mean <= 255 and std > 0:
            return mean, std, node.output[0]
    return None


def _stored_ranges(graph, ranges: Path, target: Path, aliases: dict[str, str]) -> Path:
    """The calibrated ranges as `graph` needs them, written to `target`:
    - the normalised frame's tensors (the Div's output and the working-size Resize's) set to
      exactly what the uint8 frame covers, [-mean/std, (255-mean)/std], so that their
      quantization is the frame itself (`_uint8_ends`);
    - each tensor of `aliases` (name -> the name it was calibrated under) given that range:
      the cut graph's LOGITS_NAME, which the full graph's calibration knows by the tensor
      the cut made it from."""
    import json

    data = json.loads(ranges.read_text())
    for name, calibrated in aliases.items():
        if calibrated in data["data"]:
            data["data"][name] = data["data"][calibrated]
    normalisation = _normalisation(graph)
    if normalisation is not None:
        mean, std, normalised = normalisation
        _, consumers = _graph_maps(graph.node)
        exact = {
            "lowest": {"data": [-mean / std], "dtype": "float32", "CLS": "numpy.array"},
            "highest": {"data": [(255 - mean) / std], "dtype": "float32", "CLS": "numpy.array"},
            "CLS": "TensorData",
        }
        tensors = [normalised]
        tensors += [c.output[0] for c in consumers.get(normalised, []) if c.op_type == "Resize"]
        for tensor in tensors:
            if tensor in data["data"]:
                data["data"][tensor] = exact
    target.write_text(json.dumps(data))
    return target


def _uint8_ends(model):
    """The quantized graph with its two ends in uint8 where that is exact:
    - the frame: `QuantizeLinear(Resize(Div(Sub(Cast(frames), mean), std)))` with scale 1/std
      and zero point mean is the uint8 frame resized: the float normalisation goes;
    - `DequantizeLinear -> Pad (edge, reflect) | Resize | Slice -> QuantizeLinear` with the
      same quantization on both sides: the op moves onto the uint8 tensor (ONNX Runtime's own
      QDQ fusions leave a float Pad and some Resizes here);
    - `Shape` of a DequantizeLinear's output takes the shape of its input, and
      DequantizeLinears nobody uses go."""
    graph = model.graph
    removed: set[str] = set()

    def live_maps():
        live = [node for node in graph.node if node.name not in removed]
        return live, *_graph_maps(live)

    def rewire(old: str, new: str, consumers) -> None:
        for consumer in consumers.get(old, []):
            for position, name in enumerate(consumer.input):
                if name == old:
                    consumer.input[position] = new

    def same_quantization(a, b) -> bool:
        pairs = [
            (_constant(graph, x), _constant(graph, y))
            for x, y in zip(a.input[1:3], b.input[1:3], strict=True)
        ]
        return all(x is not None and x.size == 1 and np.array_equal(x, y) for x, y in pairs)

    normalisation = _normalisation(graph)
    live, producer, consumers = live_maps()
    for quantize in live:
        if normalisation is None or quantize.op_type != "QuantizeLinear":
            continue
        resize = producer.get(quantize.input[0])
        div = (
            producer.get(resize.input[0])
            if resize is not None and resize.op_type == "Resize"
            else None
        )
        mean, std, normalised = normalisation
        if div is None or div.output[0] != normalised:
            continue
        sub = producer[div.input[0]]
        cast = producer[sub.input[0]]
        scale, zero_point = _constant(graph, quantize.input[1]), _constant(graph, quantize.input[2])
        if zero_point is None or zero_point.dtype != np.uint8 or zero_point.size != 1:
            continue
        if int(zero_point) != mean or not np.array_equal(scale, np.float32(1 / std)):
            continue
        resize.input[0] = cast.input[0]
        rewire(quantize.output[0], resize.output[0], consumers)
        for tensor in (cast.output[0], sub.output[0], div.output[0]):
            for user in consumers.get(tensor, []):
                if user.op_type == "Shape":
                    user.input[0] = cast.input[0]
        removed.update({quantize.name, div.name, sub.name, cast.name})
    movable = {"Resize", "Slice", "Pad"}
    changed = True
    while changed:
        changed = False
        live, producer, consumers = live_maps()
        for node in live:
            modes = [a.s for a in node.attribute if a.name == "mode"]
            if node.op_type not in movable or (
                node.op_type == "Pad" and modes in ([], [b"constant"])
            ):
                continue
            dequantize, users = producer.get(node.input[0]), consumers.get(node.output[0], [])
            if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(users) != 1:
                continue
            quantize = users[0]
            if quantize.op_type != "QuantizeLinear" or not same_quantization(dequantize, quantize):
                continue
            node.input[0] = dequantize.input[0]
            rewire(quantize.output[0], node.output[0], consumers)
            removed.add(quantize.name)
            changed = True
            break
    live, producer, consumers = live_maps()
    for node in live:
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type == "Shape" and source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
    used = {name for node in graph.node if node.name not in removed for name in node.input}
    used |= {output.name for output in graph.output}
    removed |= {
        node.name
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.output[0] not in used
    }
    kept = [node for node in graph.node if node.name not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.value_info[:]  # some tensors are uint8 now: ONNX Runtime infers the types again
    return model


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantizer reports progress through the root logger: errors only while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize(onnx_model: bytes, ranges: Path, reader=None) -> bytes:
    """quantize_static of the network's operators (QDQ, uint8 activations, int8 weights per
    channel, no reduced range: VNNI needs none) on the pre-processed graph; activation ranges
    from `ranges`, computed there first from `reader` if given; then `_uint8_ends`."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as error:
        raise EngineError(f"int8 quantization needs onnx and onnxruntime: {error}") from error
    with _quiet_root_logger(), tempfile.TemporaryDirectory(prefix="stac-int8-") as directory:
        source = _prepared(onnx_model, Path(directory))
        target = Path(directory) / "int8.onnx"
        graph = onnx.load(source).graph
        if reader is None:
            aliases = {
                node.output[0]: node.input[0]
                for node in onnx.load_from_string(onnx_model).graph.node
                if node.op_type == "Identity" and node.output[0] == LOGITS_NAME
            }
            ranges = _stored_ranges(graph, ranges, Path(directory) / "ranges.json", aliases)
        quantize_static(
            source,
            target,
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            nodes_to_exclude=_float_nodes(graph),
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=ranges,
        )
        return _uint8_ends(onnx.load(target)).SerializeToString()


class _FrameReader:
    """onnxruntime's CalibrationDataReader protocol over a list of frames, one per batch."""

    def __init__(self, frames: Iterable[np.ndarray]) -> None:
        self._frames = iter(frames)

    def get_next(self) -> dict | None:
        frame = next(self._frames, None)
        return None if frame is None else {INPUT_NAME: _frame_batch(frame[None])}


def calibrate_int8(model: SegmentationModel, frames: Iterable[np.ndarray], ranges: Path) -> Path:
    """Measure the activation ranges of the model's exported graph on unlabelled uint8 HxWx3
    RGB frames (MinMax over all of them) and write them to `ranges` (replaced if present)."""
    ranges = Path(ranges)
    ranges.unlink(missing_ok=True)
    _quantize(export_onnx(model), ranges, _FrameReader(frames))
    return ranges


def _cut_at_low_res_logits(onnx_model: bytes, through_network: bool) -> bytes:
    """The full graph cut where `SegmentationModel.low_res_logits` stops: back from the ArgMax
    through the resize to the frame and, `through_network`, the network's own Resize and Slice
    nodes (LiteFPN's upsampling to the padded size and its crop); that tensor becomes the
    output LOGITS_NAME and the nodes only the tail used go. Tensor names stay, so the int8
    ranges calibrated on the full graph serve it. EngineError where the graph ends otherwise."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    producer, _ = _graph_maps(graph.node)
    argmaxes = [node for node in graph.node if node.op_type == "ArgMax"]
    if len(argmaxes) != 1:
        raise EngineError(f"the graph has {len(argmaxes)} ArgMax nodes, not one")
    tensor, skipped = argmaxes[0].input[0], 0
    while (step := producer.get(tensor)) is not None and step.op_type in ("Resize", "Slice"):
        in_network = step.name.startswith(("network/", NETWORK_SCOPE))
        if in_network and not through_network:
            break
        tensor, skipped = step.input[0], skipped + 1
    if not skipped:
        raise EngineError("no Resize or Slice between the network's logits and the ArgMax")
    graph.node.append(onnx.helper.make_node("Identity", [tensor], [LOGITS_NAME], "frame/logits"))
    needed, kept = {LOGITS_NAME}, []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    del graph.output[:]
    output = onnx.helper.make_tensor_value_info(LOGITS_NAME, onnx.TensorProto.FLOAT, None)
    graph.output.append(output)
    live = {name for node in kept for name in node.output}
    kept_info = [value for value in graph.value_info if value.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    kept_initializers = [value for value in graph.initializer if value.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    return model.SerializeToString()


class GraphCache(Protocol):
    """Checked graphs kept between starts (`engine_cache.EngineCache`, which builds on this
    module: hence a protocol here, not an import)."""

    def engine(
        self, model: SegmentationModel, name: str, threads: int
    ) -> OnnxRuntimeEngine | None: ...

    def keep(self, model: SegmentationModel, graph: bytes, engine: OnnxRuntimeEngine) -> bool: ...


def build_onnxruntime_engine(
    model: SegmentationModel,
    int8: bool = False,
    threads: int = 0,
    cache: GraphCache | None = None,
) -> OnnxRuntimeEngine:
    """The model exported, cut at its low-resolution logits (the full graph where that fails
    its check, with the reason), checked against torch and (int8) quantized and checked again;
    EngineError why not. With a `cache`, a graph it holds for this model and engine is used
    instead of building one, and a graph built is stored in it."""
    name = "onnxruntime_int8" if int8 else "onnxruntime"
    if cache is not None and (engine := cache.engine(model, name, threads)) is not None:
        return engine
    graph, engine = _built_engine(model, int8, threads)
    if cache is not None:
        cache.keep(model, graph, engine)
    return engine


def _built_engine(
    model: SegmentationModel, int8: bool, threads: int
) -> tuple[bytes, OnnxRuntimeEngine]:
    """build_onnxruntime_engine's engine without a cache, and the graph it runs."""
    graph = export_onnx(model)
    full_graph_reason = None
    try:
        cut = _cut_at_low_res_logits(graph, model.tail_in_network)
        session = create_session(cut, model.device, threads)
        engine = _checked(OnnxRuntimeEngine("onnxruntime", session, model.logit_chain), model)
        graph, chain_for = cut, model.logit_chain
    except EngineError as error:
        full_graph_reason, chain_for = f"the graph cut at the low-resolution logits: {error}", None
        session = create_session(graph, model.device, threads)
        engine = _checked(OnnxRuntimeEngine("onnxruntime", session, None, full_graph_reason), model)
    if not int8:
        return graph, engine
    ranges = int8_ranges_path(model)
    if not ranges.is_file():
        raise EngineError(f"no int8 activation ranges for this model at {ranges} "
                          "(stac-quantize writes them)")  # fmt: skip
    try:
        quantized = _quantize(graph, ranges)
    except Exception as error:  # third-party code: whatever it raises, int8 is not usable
        raise EngineError(f"int8 quantization with {ranges} failed: {error}") from error
    session = create_session(quantized, model.device, threads)
    engine = OnnxRuntimeEngine("onnxruntime_int8", session, chain_for, full_graph_reason)
    return quantized, _checked(engine, model, MIN_INT8_AGREEMENT)


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs and, when it is not the one asked for, why."""

    engine: Engine
    requested: str
    fallback_reason: str | None = None


def create_engine(
    model: SegmentationModel, name: str, threads: int = 0, cache: GraphCache | None = None
) -> EngineChoice:
    """The engine `name` for `model`, or the closest one that works (int8 -> fp32 ONNX Runtime
    -> torch) with the reason; ValueError for an unknown name. `cache`: checked graphs kept
    between starts (`engine_cache.EngineCache`)."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose from {ENGINE_NAMES}")
    if name == "torch":
        return EngineChoice(TorchEngine(model), name)
    reasons = []
    for int8 in (True, False) if name == "onnxruntime_int8" else (False,):
        try:
            engine = build_onnxruntime_engine(model, int8=int8, threads=threads, cache=cache)
        except EngineError as error:
            reasons.append(str(error))
            continue
        return EngineChoice(engine, name, "; ".join(reasons) or None)
    return EngineChoice(TorchEngine(model), name, "; ".join(reasons))


class FallbackEngine:
    """An engine that moves to torch for good when its session fails on a batch (the batch is
    done again on torch), telling `log` once; bad input is the caller's error, not a failure.
    An ONNX Runtime engine that runs its full graph (class ids in the graph, no logits) is
    told once at start too."""

    def __init__(self, choice: EngineChoice, model: SegmentationModel, log: LogFn) -> None:
        self.engine = choice.engine
        self.model = model
        self.log = log
        self.fallback_reason = choice.fallback_reason
        if choice.fallback_reason:
            log(f"engine {choice.requested!r} unavailable, using {self.engine.name!r}: "
                f"{choice.fallback_reason}")  # fmt: skip
        full_graph_reason = getattr(self.engine, "full_graph_reason", None)
        if full_graph_reason:
            log(f"engine {self.engine.name!r} runs the full graph (no low-resolution logits "
                f"for a mask coder): {full_graph_reason}")  # fmt: skip

    @property
    def name(self) -> str:
        return self.engine.name

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        return self.segment_batch_with_logits(frames).class_ids

    def segment_batch_with_logits(self, frames: np.ndarray) -> Segmentation:
        frames = _frame_batch(frames)
        if isinstance(self.engine, TorchEngine):
            return self.engine.segment_batch_with_logits(frames)
        try:
            return self.engine.segment_batch_with_logits(frames)
        except Exception as error:  # ORT raises its own Exception subclasses
            self.fallback_reason = (
                f"{self.engine.name} failed on a batch: {type(error).__name__}: {error}"
            )
            self.log(f"engine {self.engine.name!r} failed, using 'torch' from now on: "
                     f"{self.fallback_reason}")  # fmt: skip
            self.engine = TorchEngine(self.model)
            return self.engine.segment_batch_with_logits(frames)
