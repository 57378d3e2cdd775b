"""Inference engines (stac_edge_segmenter.engines): ONNX Runtime gives torch's masks, a batch gives
each frame its own mask, and a model that ONNX Runtime cannot run falls back to torch, saying
why once."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from stac_edge_segmenter.engines import (
    MIN_AGREEMENT,
    EngineChoice,
    FallbackEngine,
    OnnxRuntimeEngine,
    TorchEngine,
    agreement,
    build_onnxruntime_engine,
    create_engine,
    create_session,
)
from stac_edge_segmenter.loading import load_model
from stac_training.camvid import CLASS_NAMES, PALETTE


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def frames(data_dir):
    from stac_eval.frame_dirs import read_frames

    return read_frames(data_dir / "camvid" / "val", limit=3, stride=30).images


@pytest.fixture(scope="module")
def onnx_engine(model):
    return build_onnxruntime_engine(model, threads=1)


def _resized(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([cv2.resize(frame, (width, height)) for frame in frames])


@pytest.mark.slow  # exports the shipped model to ONNX
@pytest.mark.parametrize("size", [(480, 360), (960, 540), (640, 272)])
def test_onnxruntime_masks_agree_with_torch(model, onnx_engine, frames, size):
    batch = _resized(frames, *size)
    assert onnx_engine.name == "onnxruntime"
    assert agreement(onnx_engine, TorchEngine(model), [batch]) >= MIN_AGREEMENT


@pytest.mark.slow  # exports the shipped model to ONNX
def test_a_batch_gives_each_frame_its_own_mask(onnx_engine, frames):
    together = onnx_engine.segment_batch(frames)
    assert together.shape == frames.shape[:3] and together.dtype == np.uint8
    for frame, mask in zip(frames, together, strict=True):
        np.testing.assert_array_equal(onnx_engine.segment_batch(frame[None])[0], mask)


@pytest.mark.slow  # exports the shipped model to ONNX
def test_int8_engine_uses_the_shipped_ranges(model, frames):
    choice = create_engine(model, "onnxruntime_int8", threads=1)
    assert choice.fallback_reason is None
    assert choice.engine.name == "onnxruntime_int8"
    # int8 moves some boundary pixels; stac-bench model reports its val mIoU.
    assert agreement(choice.engine, TorchEngine(model), [frames]) > 0.97


@pytest.mark.slow  # exports the shipped model to ONNX
def test_bad_input_is_refused_not_a_fallback(model, onnx_engine):
    logged = []
    engine = FallbackEngine(EngineChoice(onnx_engine, "onnxruntime"), model, logged.append)
    with pytest.raises(ValueError):
        engine.segment_batch(np.zeros((1, 8, 8), np.uint8))
    assert engine.name == "onnxruntime" and not logged


class _RunningMaximum(torch.nn.Module):
    """A segmentation network ONNX cannot express: aten::cummax has no ONNX operator."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = torch.nn.Conv2d(3, len(CLASS_NAMES), 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(self.classifier(x), dim=2).values


def _torchscript_model(tmp_path, network: torch.nn.Module):
    weights = tmp_path / "net.pt"
    torch.jit.trace(network.eval(), torch.zeros(1, 3, 32, 32)).save(str(weights))
    config = {
        "kind": "torchscript",
        "weights": weights.name,
        "classes": CLASS_NAMES,
        "palette": PALETTE.tolist(),
        "normalization": {"mean": [127.0] * 3, "std": [128.0] * 3},
        "input_size": None,
    }
    path = tmp_path / "net.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_model(path, device="cpu")


@pytest.mark.slow  # tries to export a TorchScript model to ONNX
def test_a_model_that_cannot_export_runs_on_torch_and_says_why_once(tmp_path, frames):
    model = _torchscript_model(tmp_path, _RunningMaximum())
    choice = create_engine(model, "onnxruntime", threads=1)
    assert choice.engine.name == "torch"
    assert "export" in choice.fallback_reason and "cummax" in choice.fallback_reason
    logged = []
    engine = FallbackEngine(choice, model, logged.append)
    for _ in range(3):
        masks = engine.segment_batch(frames[:2])
    np.testing.assert_array_equal(
        masks, model.predict(frames[:2], with_probabilities=False).class_ids
    )
    assert len(logged) == 1 and "cummax" in logged[0]


def test_int8_without_ranges_falls_back_to_float(tmp_path, frames):
    model = _torchscript_model(tmp_path, torch.nn.Conv2d(3, len(CLASS_NAMES), 3, padding=1))
    choice = create_engine(model, "onnxruntime_int8", threads=1)
    assert choice.engine.name == "onnxruntime"
    assert "int8_ranges.json" in choice.fallback_reason


def _constant_mask_graph() -> bytes:
    """A real ONNX graph with the engine's input and output names whose masks have the wrong
    shape (always 1x2x2): what a graph that froze a size at export would do on a new one."""
    frames = helper.make_tensor_value_info("frames", TensorProto.UINT8, ["n", "h", "w", 3])
    class_ids = helper.make_tensor_value_info("class_ids", TensorProto.UINT8, [1, 2, 2])
    constant = helper.make_tensor("mask", TensorProto.UINT8, [1, 2, 2], [0, 0, 0, 0])
    node = helper.make_node("Constant", [], ["class_ids"], value=constant)
    graph = helper.make_graph([node], "frozen", [frames], [class_ids])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def test_a_session_that_fails_on_a_batch_moves_to_torch_for_good(model, frames):
    session = create_session(_constant_mask_graph(), torch.device("cpu"), threads=1)
    logged = []
    engine = FallbackEngine(
        EngineChoice(OnnxRuntimeEngine("onnxruntime", session), "onnxruntime"), model, logged.append
    )
    for _ in range(3):
        masks = engine.segment_batch(frames[:2])
    np.testing.assert_array_equal(masks, TorchEngine(model).segment_batch(frames[:2]))
    assert engine.name == "torch"
    assert len(logged) == 1 and "class ids for frames" in logged[0]


def test_unknown_engine_is_refused(model):
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine(model, "tensorflow")


@pytest.mark.slow  # exports the shipped model to ONNX
def test_graph_names_its_network_nodes(model):
    """int8 quantizes the network's nodes only: the export must tell them from the rest, and
    name them the same way every time (the int8 ranges are stored by tensor name)."""
    from stac_edge_segmenter.engines import export_onnx

    exported = export_onnx(model)
    assert export_onnx(model) == exported
    graph = onnx.load_from_string(exported).graph
    inside = [node for node in graph.node if node.name.startswith("network/")]
    assert sum(node.op_type == "Conv" for node in inside) > 50
    assert not any(node.op_type == "ArgMax" for node in inside)


@pytest.mark.slow  # exports and quantizes the shipped model
def test_int8_graph_keeps_its_ends_in_uint8(model):
    """The int8 graph takes the uint8 frame as the quantized normalised frame (no float
    normalisation), moves paddings and nearest resizes onto uint8 tensors, and leaves the
    logits' upsampling and the argmax in float."""
    from stac_edge_segmenter.engines import _quantize, export_onnx, int8_ranges_path

    graph = onnx.load_from_string(_quantize(export_onnx(model), int8_ranges_path(model))).graph
    producer = {output: node for node in graph.node for output in node.output}
    ops = [node.op_type for node in graph.node]
    assert "Sub" not in ops and "Div" not in ops
    assert ops.count("Conv") == 54 and ops.count("QuantizeLinear") > 50
    for node in graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type in ("Pad", "Shape") or (
            node.op_type == "Resize" and "frame" in node.input[0]
        ):
            assert source is None or source.op_type != "DequantizeLinear", node.name
    argmax = next(node for node in graph.node if node.op_type == "ArgMax")
    assert producer[argmax.input[0]].op_type == "Resize"  # float logits, not 8-bit ones
