"""Inference engines for the edge's segmentation forward: one call, a batch of frames in, masks out.

Every engine has `segment_batch(frames) -> class_ids`: uint8 NxHxWx3 RGB frames (any N, any
size) to uint8 NxHxW class ids, what `SegmentationModel.predict(..., with_probabilities=False)`
gives. A fleet's scheduler hands one batch of several robots' newest frames to it.

- `torch`: the loaded PyTorch model, eager (`SegmentationModel.predict`).
- `onnxruntime`: the same model exported at start to ONNX (uint8 frames to class ids in one
  graph: normalisation, resizing to the working resolution and back, argmax; dynamic batch,
  height and width) and run by ONNX Runtime: CPU execution provider on a CPU, CUDA (TensorRT
  where installed) on a GPU. Before it is used the export is checked against torch on two
  frame sizes (masks must agree on `MIN_AGREEMENT` of the pixels), so a graph that froze a
  frame size or a branch at export time is never used.
- `onnxruntime_int8`: that graph with the network's operators statically quantized to int8
  (QDQ, ONNX Runtime's quantizer) with activation ranges calibrated offline on unlabelled
  frames and stored beside the weights (`int8_ranges_path`, written by `calibrate_int8`).

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

from stac_edge_segmenter.loading import SegmentationModel

ENGINE_NAMES = ("torch", "onnxruntime", "onnxruntime_int8")
# The segmenter's default (chosen by measurement: docs/engines.md).
DEFAULT_ENGINE = "onnxruntime"
# An exported graph is used only if its masks agree with torch's on this share of the pixels of
# the check frames (fp32 differences flip only near-ties; a frozen shape flips whole regions).
MIN_AGREEMENT = 0.995
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "frames", "class_ids"
INT8_RANGES_SUFFIX = ".int8_ranges.json"
NETWORK_SCOPE = "/network/"  # the exporter's name prefix of the network's nodes

LogFn = Callable[[str], None]


class Engine(Protocol):
    name: str

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        """uint8 NxHxWx3 RGB -> uint8 NxHxW class ids."""


class EngineError(RuntimeError):
    """ONNX Runtime cannot run this model here; the message says why."""


def _frame_batch(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected a non-empty NxHxWx3 uint8 RGB batch, got {frames.dtype} "
                         f"{frames.shape}")  # fmt: skip
    return np.ascontiguousarray(frames)


class TorchEngine:
    """The PyTorch model as loaded, one forward for the whole batch."""

    name = "torch"

    def __init__(self, model: SegmentationModel) -> None:
        self.model = model

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        frames = _frame_batch(frames)
        prediction = self.model.predict(frames, batch_size=len(frames), with_probabilities=False)
        return prediction.class_ids


class OnnxRuntimeEngine:
    """An ONNX Runtime session of a graph from `export_onnx` (or its int8 form)."""

    def __init__(self, name: str, session) -> None:
        self.name = name
        self.session = session

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        frames = _frame_batch(frames)
        (class_ids,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: frames})
        if class_ids.shape != frames.shape[:3] or class_ids.dtype != np.uint8:
            raise EngineError(
                f"the ONNX graph gave {class_ids.dtype} {class_ids.shape} class ids for frames "
                f"{frames.shape}"
            )
        return class_ids


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


def _checked(engine: OnnxRuntimeEngine, model: SegmentationModel) -> OnnxRuntimeEngine:
    try:
        share = agreement(engine, TorchEngine(model), check_batches(model))
    except Exception as error:
        raise EngineError(f"the ONNX graph failed on a check frame: {error}") from error
    if share < MIN_AGREEMENT:
        raise EngineError(
            f"the ONNX graph's masks agree with torch on {100 * share:.2f}% of the check "
            f"batches' pixels (< {100 * MIN_AGREEMENT:.1f}%): the export froze something"
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


def _exact_input_ranges(graph, ranges: Path, target: Path) -> Path:
    """The calibrated ranges with the normalised frame's tensors (the Div's output and the
    working-size Resize's) set to exactly what the uint8 frame covers, [-mean/std,
    (255-mean)/std], so that their quantization is the frame itself (`_uint8_ends`)."""
    import json

    normalisation = _normalisation(graph)
    if normalisation is None:
        return ranges
    mean, std, normalised = normalisation
    _, consumers = _graph_maps(graph.node)
    data = json.loads(ranges.read_text())
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
            ranges = _exact_input_ranges(graph, ranges, Path(directory) / "ranges.json")
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


def build_onnxruntime_engine(
    model: SegmentationModel, int8: bool = False, threads: int = 0
) -> OnnxRuntimeEngine:
    """The model exported, checked against torch and (int8) quantized; EngineError why not."""
    graph = export_onnx(model)
    engine = _checked(
        OnnxRuntimeEngine("onnxruntime", create_session(graph, model.device, threads)), model
    )
    if not int8:
        return engine
    ranges = int8_ranges_path(model)
    if not ranges.is_file():
        raise EngineError(f"no int8 activation ranges for this model at {ranges} "
                          "(stac-quantize writes them)")  # fmt: skip
    try:
        quantized = _quantize(graph, ranges)
    except Exception as error:  # third-party code: whatever it raises, int8 is not usable
        raise EngineError(f"int8 quantization with {ranges} failed: {error}") from error
    return OnnxRuntimeEngine("onnxruntime_int8", create_session(quantized, model.device, threads))


@dataclass(frozen=True)
class EngineChoice:
    """The engine that runs and, when it is not the one asked for, why."""

    engine: Engine
    requested: str
    fallback_reason: str | None = None


def create_engine(model: SegmentationModel, name: str, threads: int = 0) -> EngineChoice:
    """The engine `name` for `model`, or the closest one that works (int8 -> fp32 ONNX Runtime
    -> torch) with the reason; ValueError for an unknown name."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose from {ENGINE_NAMES}")
    if name == "torch":
        return EngineChoice(TorchEngine(model), name)
    reasons = []
    for int8 in (True, False) if name == "onnxruntime_int8" else (False,):
        try:
            engine = build_onnxruntime_engine(model, int8=int8, threads=threads)
        except EngineError as error:
            reasons.append(str(error))
            continue
        return EngineChoice(engine, name, "; ".join(reasons) or None)
    return EngineChoice(TorchEngine(model), name, "; ".join(reasons))


class FallbackEngine:
    """An engine that moves to torch for good when its session fails on a batch (the batch is
    done again on torch), telling `log` once; bad input is the caller's error, not a failure."""

    def __init__(self, choice: EngineChoice, model: SegmentationModel, log: LogFn) -> None:
        self.engine = choice.engine
        self.model = model
        self.log = log
        self.fallback_reason = choice.fallback_reason
        if choice.fallback_reason:
            log(f"engine {choice.requested!r} unavailable, using {self.engine.name!r}: "
                f"{choice.fallback_reason}")  # fmt: skip

    @property
    def name(self) -> str:
        return self.engine.name

    def segment_batch(self, frames: np.ndarray) -> np.ndarray:
        frames = _frame_batch(frames)
        if isinstance(self.engine, TorchEngine):
            return self.engine.segment_batch(frames)
        try:
            return self.engine.segment_batch(frames)
        except Exception as error:  # ORT raises its own Exception subclasses
            self.fallback_reason = (
                f"{self.engine.name} failed on a batch: {type(error).__name__}: {error}"
            )
            self.log(f"engine {self.engine.name!r} failed, using 'torch' from now on: "
                     f"{self.fallback_reason}")  # fmt: skip
            self.engine = TorchEngine(self.model)
            return self.engine.segment_batch(frames)
