"""Inference engines (stac_edge_segmenter.engines): every engine stops at the low-resolution
logits and gives torch's masks through stac_codec.logit_labels, a batch gives each frame its own
mask, an int8 graph is checked against torch, and a model that ONNX Runtime cannot run falls back
to torch, saying why once."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper

from stac_codec.logit_labels import class_ids_from_logits
from stac_edge_segmenter import engines
from stac_edge_segmenter.engine_cache import (
    ENTRY_SUFFIX,
    KEPT_ENTRIES,
    CachedGraph,
    EngineCache,
    cache_key,
)
from stac_edge_segmenter.engines import (
    MIN_AGREEMENT,
    EngineChoice,
    FallbackEngine,
    OnnxRuntimeEngine,
    TorchEngine,
    agreement,
    build_onnxruntime_engine,
    check_batches,
    create_engine,
    create_session,
    int8_ranges_path,
)
from stac_edge_segmenter.loading import load_model
from stac_edge_segmenter.model_parameters import engine_from
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


def _check_segmentation(segmentation, batch: np.ndarray) -> None:
    """Class ids of the batch's size, and exactly what the kernel makes of the logits given."""
    assert segmentation.class_ids.shape == batch.shape[:3]
    assert segmentation.class_ids.dtype == np.uint8
    assert segmentation.logits.dtype == np.float32 and segmentation.logits.ndim == 4
    assert segmentation.chain.out_shape == batch.shape[1:3]
    for logits, class_ids in zip(segmentation.logits, segmentation.class_ids, strict=True):
        np.testing.assert_array_equal(class_ids_from_logits(logits, segmentation.chain), class_ids)


@pytest.mark.parametrize("size", [(480, 360), (960, 540), (726, 546)])
def test_torch_engine_takes_class_ids_from_low_res_logits(model, frames, size):
    batch = _resized(frames[:2], *size)
    segmentation = TorchEngine(model).segment_batch_with_logits(batch)
    _check_segmentation(segmentation, batch)
    assert segmentation.logits.shape == (2, len(CLASS_NAMES), 96, 120)  # stride 4 of 480x384
    reference = TorchEngine(model, low_res=False)
    assert agreement(TorchEngine(model), reference, [batch]) >= 0.9999


@pytest.mark.slow  # exports the shipped model to ONNX
def test_onnxruntime_runs_the_graph_cut_at_the_low_res_logits(model, onnx_engine, frames):
    assert onnx_engine.chain_for is not None and onnx_engine.full_graph_reason is None
    batch = _resized(frames[:2], 960, 540)
    segmentation = onnx_engine.segment_batch_with_logits(batch)
    _check_segmentation(segmentation, batch)
    expected = TorchEngine(model).segment_batch_with_logits(batch)
    assert segmentation.chain == expected.chain
    np.testing.assert_allclose(segmentation.logits, expected.logits, atol=2e-3)


@pytest.mark.slow  # exports the shipped model to ONNX
def test_a_graph_that_cannot_be_cut_runs_whole_and_says_so_once(model, frames, monkeypatch):
    from stac_edge_segmenter import engines

    def refuse(*_):
        raise engines.EngineError("no cut here")

    monkeypatch.setattr(engines, "_cut_at_low_res_logits", refuse)
    logged = []
    engine = FallbackEngine(create_engine(model, "onnxruntime", threads=1), model, logged.append)
    segmentation = engine.segment_batch_with_logits(frames[:2])
    assert segmentation.logits is None and segmentation.chain is None
    assert agreement(engine, TorchEngine(model, low_res=False), [frames]) >= MIN_AGREEMENT
    engine.segment_batch(frames[:1])
    assert len(logged) == 1 and "full graph" in logged[0] and "no cut here" in logged[0]


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
    assert choice.engine.name == "onnxruntime_int8" and choice.engine.chain_for is not None
    # int8 moves some boundary pixels; stac-bench model reports its val mIoU.
    assert agreement(choice.engine, TorchEngine(model, low_res=False), [frames]) > 0.97


@pytest.mark.slow  # exports and quantizes the shipped model
def test_int8_ranges_that_do_not_fit_the_model_are_refused(tmp_path, frames):
    """Ranges off by a factor of 4 (what another model's would be like): the int8 graph's
    masks fail the start-up check against torch, and the engine is fp32 ONNX Runtime."""
    import json
    import shutil

    from stac_edge_segmenter.loading import DEFAULT_CONFIG, build_model, read_spec

    shipped = read_spec(DEFAULT_CONFIG)
    spec = shipped.__class__(**{**shipped.__dict__, "weights": tmp_path / shipped.weights.name})
    shutil.copy(shipped.weights, spec.weights)
    model = build_model(spec, "cpu")
    data = json.loads(int8_ranges_path(load_model(device="cpu")).read_text())
    for tensor in data["data"].values():
        for end in ("lowest", "highest"):
            tensor[end]["data"] = [4 * value for value in tensor[end]["data"]]
    int8_ranges_path(model).write_text(json.dumps(data))
    choice = create_engine(model, "onnxruntime_int8", threads=1)
    assert choice.engine.name == "onnxruntime"
    assert "onnxruntime_int8 graph's masks agree with torch on" in choice.fallback_reason


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


def _torchscript_model(tmp_path, network: torch.nn.Module, input_size=None):
    weights = tmp_path / "net.pt"
    torch.jit.trace(network.eval(), torch.zeros(1, 3, 32, 32)).save(str(weights))
    config = {
        "kind": "torchscript",
        "weights": weights.name,
        "classes": CLASS_NAMES,
        "palette": PALETTE.tolist(),
        "normalization": {"mean": [127.0] * 3, "std": [128.0] * 3},
        "input_size": input_size,
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


@pytest.mark.parametrize("input_size", [None, [64, 48]])
def test_a_full_resolution_model_runs_through_the_cut_graph(tmp_path, frames, input_size):
    """A model whose logits are at its input's size (as torchvision's): the chain is the
    resize to the frame (none without a working size), the masks torch's."""
    network = torch.nn.Conv2d(3, len(CLASS_NAMES), 3, padding=1)
    model = _torchscript_model(tmp_path, network, input_size)
    choice = create_engine(model, "onnxruntime", threads=1)
    assert choice.fallback_reason is None and choice.engine.chain_for is not None
    batch = _resized(frames[:2], 120, 90)
    segmentation = choice.engine.segment_batch_with_logits(batch)
    _check_segmentation(segmentation, batch)
    assert segmentation.logits.shape[2:] == ((48, 64) if input_size else (90, 120))
    reference = TorchEngine(model, low_res=False)
    for engine in (choice.engine, TorchEngine(model)):
        assert agreement(engine, reference, [batch]) >= 0.9999


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


@pytest.mark.slow  # exports and quantizes the shipped model
def test_the_cut_int8_graph_ends_at_float_logits(model):
    """Cut at the head's output, the int8 graph has no resize or argmax left at its end and
    gives float logits (the stored ranges, calibrated on the full graph, still fit)."""
    from stac_edge_segmenter.engines import _cut_at_low_res_logits, _quantize, export_onnx

    cut = _cut_at_low_res_logits(export_onnx(model), through_network=True)
    graph = onnx.load_from_string(_quantize(cut, int8_ranges_path(model))).graph
    ops = [node.op_type for node in graph.node]
    assert "ArgMax" not in ops and ops.count("Conv") == 54
    assert [output.name for output in graph.output] == ["logits"]
    producer = {output: node for node in graph.node for output in node.output}
    assert producer["logits"].op_type in ("DequantizeLinear", "Conv", "Identity")


def _conv_model(tmp_path, seed: int):
    torch.manual_seed(seed)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _torchscript_model(tmp_path, torch.nn.Conv2d(3, len(CLASS_NAMES), 3, padding=1))


def _entries(directory) -> list:
    return sorted(directory.glob(f"*{ENTRY_SUFFIX}"))


def test_a_cached_graph_is_used_at_the_next_start(tmp_path, monkeypatch):
    """The second start finds the checked graph: no export, the same masks and logits."""
    model, cache = _conv_model(tmp_path / "model", 0), EngineCache(tmp_path / "cache")
    built = create_engine(model, "onnxruntime", threads=1, cache=cache).engine
    assert not built.from_cache and len(_entries(tmp_path / "cache")) == 1

    def no_export(model):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(engines, "export_onnx", no_export)
    choice = create_engine(model, "onnxruntime", threads=1, cache=cache)
    assert choice.engine.from_cache and choice.fallback_reason is None
    for batch in check_batches(model):
        cached, fresh = (e.segment_batch_with_logits(batch) for e in (choice.engine, built))
        np.testing.assert_array_equal(cached.class_ids, fresh.class_ids)
        np.testing.assert_array_equal(cached.logits, fresh.logits)


def test_the_key_follows_what_the_graph_depends_on(tmp_path):
    first = _conv_model(tmp_path / "a", 0)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = load_model(tmp_path / "b" / "net.yaml", device="cpu")
    other_weights = _conv_model(tmp_path / "c", 1)
    assert cache_key(first, "onnxruntime") == cache_key(copy, "onnxruntime")  # same bytes
    assert cache_key(first, "onnxruntime") != cache_key(other_weights, "onnxruntime")
    assert cache_key(first, "onnxruntime") != cache_key(first, "onnxruntime_int8")
    cache = EngineCache(tmp_path / "cache")
    create_engine(first, "onnxruntime", threads=1, cache=cache)
    assert not create_engine(other_weights, "onnxruntime", threads=1, cache=cache).engine.from_cache
    assert create_engine(copy, "onnxruntime", threads=1, cache=cache).engine.from_cache


def test_an_unreadable_or_lying_entry_is_rebuilt(tmp_path):
    """Garbage in the entry's file, or stored masks the graph does not give: the engine is
    built as without a cache and the entry written again."""
    model, cache = _conv_model(tmp_path / "model", 0), EngineCache(tmp_path / "cache")
    create_engine(model, "onnxruntime", threads=1, cache=cache)
    (entry,) = _entries(tmp_path / "cache")
    entry.write_bytes(b"PK\x03\x04 not a zip")
    assert not create_engine(model, "onnxruntime", threads=1, cache=cache).engine.from_cache
    key = cache_key(model, "onnxruntime")
    stored = cache.load(key)
    assert stored is not None
    lying = [(mask + 1) % len(CLASS_NAMES) for mask in stored.check_masks]
    cache.store(key, CachedGraph(stored.graph, True, None, [m.astype(np.uint8) for m in lying]))
    assert not create_engine(model, "onnxruntime", threads=1, cache=cache).engine.from_cache
    assert create_engine(model, "onnxruntime", threads=1, cache=cache).engine.from_cache


def test_a_cache_that_cannot_be_written_still_builds_the_engine(tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("")
    model = _conv_model(tmp_path / "model", 0)
    choice = create_engine(model, "onnxruntime", threads=1, cache=EngineCache(blocker / "x"))
    assert choice.engine.name == "onnxruntime" and not choice.engine.from_cache


def test_the_cache_keeps_only_the_most_recently_used_entries(tmp_path):
    cache = EngineCache(tmp_path)
    entry = CachedGraph(b"graph", True, None, [np.zeros((1, 2, 2), np.uint8)])
    for index in range(KEPT_ENTRIES + 3):
        assert cache.store(f"{index:064x}", entry)
        os.utime(tmp_path / f"{index:064x}{ENTRY_SUFFIX}", (index, index))
    assert len(_entries(tmp_path)) == KEPT_ENTRIES
    assert cache.load(f"{0:064x}") is None
    newest = cache.load(f"{KEPT_ENTRIES + 2:064x}")
    assert newest is not None and newest.graph == b"graph"


def test_the_nodes_engine_parameters_use_the_cache_directory(tmp_path):
    model = _conv_model(tmp_path / "model", 0)
    params = {"engine": "onnxruntime", "torch_threads": 1}
    engine_from({**params, "engine_cache_dir": str(tmp_path / "cache")}, model, print)
    assert len(_entries(tmp_path / "cache")) == 1
    engine = engine_from({**params, "engine_cache_dir": ""}, model, print)
    assert not engine.engine.from_cache
