"""Loading segmentation models by configuration, and the two entry points on a loaded model."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml

from stac_edge_segmenter.loading import (
    DEFAULT_CONFIG,
    ModelConfigError,
    Prediction,
    load_model,
    read_spec,
)
from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_edge_segmenter.model import DEFAULT_WEIGHTS, WeightsError
from stac_training.camvid import CLASS_NAMES, IGNORE_INDEX, PALETTE, load_split


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two 120x160 frames with structure (gradients and a block), not just noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 160, dtype=np.float32)[None, :, None]
    images = np.broadcast_to(ramp, (2, 120, 160, 3)).copy()
    images[:, 40:80, 50:110] = [200, 30, 30]
    images += rng.normal(0, 8, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_config(tmp_path, **overrides) -> str:
    """The default configuration with absolute weights and the given keys replaced."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["weights"] = str(DEFAULT_WEIGHTS)
    config.update(overrides)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_default_model_declares_camvid(model):
    assert model.classes == CLASS_NAMES and model.num_classes == 11
    np.testing.assert_array_equal(model.palette, PALETTE)
    assert model.device == torch.device("cpu")


def test_shipped_weights_are_compact_fp16():
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 2**20
    saved = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    floats = [t for t in saved["state_dict"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)


def test_predict_shapes_and_class_range(model, frames):
    prediction = model.predict(frames[0])  # a single HxWx3 frame, not CamVid's size
    assert isinstance(prediction, Prediction)
    assert prediction.class_ids.shape == (1, 120, 160) and prediction.class_ids.dtype == np.uint8
    assert prediction.class_ids.max() < model.num_classes
    assert prediction.probabilities.shape == (1, 11, 120, 160)
    assert prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(prediction.probabilities.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prediction.class_ids, prediction.probabilities.argmax(1))


def test_predict_without_probabilities_gives_the_same_mask(model, frames):
    full = model.predict(frames)
    masks_only = model.predict(frames, with_probabilities=False)
    assert masks_only.probabilities is None
    np.testing.assert_array_equal(masks_only.class_ids, full.class_ids)


@pytest.mark.slow
def test_predict_is_deterministic_and_batch_independent(model, frames):
    batched = model.predict(frames, batch_size=2)
    one_by_one = model.predict(frames, batch_size=1)
    again = load_model(device="cpu").predict(frames, batch_size=2)
    np.testing.assert_array_equal(batched.probabilities, again.probabilities)
    np.testing.assert_array_equal(batched.class_ids, one_by_one.class_ids)
    np.testing.assert_allclose(batched.probabilities, one_by_one.probabilities, atol=1e-5)


def test_logits_give_finite_nonzero_input_gradients(model, frames):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().requires_grad_(True)
    logits = model.logits(x)
    assert logits.shape == (2, 11, 120, 160)
    F.cross_entropy(logits, logits.detach().argmax(1)).backward()
    assert x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()  # every frame has a gradient


def test_bad_inputs_raise_value_errors(model, frames):
    with pytest.raises(ValueError, match="uint8 RGB"):
        model.predict(frames[0, :, :, 0])  # grey
    with pytest.raises(ValueError, match="uint8 RGB"):
        model.predict(frames.astype(np.float32))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        model.logits(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="Nx3xHxW"):
        model.logits(torch.zeros(3, 32, 32))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="configuration not found"):
        load_model(tmp_path / "absent.yaml")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_model(write_config(tmp_path, weights=str(tmp_path / "absent.pt")))


def test_wrong_class_count_is_reported(tmp_path):
    config = write_config(tmp_path, classes=CLASS_NAMES[:5], palette=PALETTE[:5].tolist())
    with pytest.raises(ValueError, match="11-class model.*declares 5 classes"):
        load_model(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "keras"}, "kind must be one of"),
        ({"palette": PALETTE[:3].tolist()}, "palette"),
        ({"classes": []}, "classes"),
        ({"normalization": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, "std"),
        ({"input_size": [480]}, "input_size"),
        ({"colour": "red"}, "unknown keys"),
        ({"kind": "torchvision"}, "architecture"),
    ],
)
def test_invalid_configurations_are_rejected(tmp_path, overrides, message):
    with pytest.raises(ModelConfigError, match=message):
        read_spec(write_config(tmp_path, **overrides))


NAN, INF = float("nan"), float("inf")
CAMVID_STD = {"mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0]}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"normalization": {"mean": [NAN, 127, 127], "std": [128, 128, 128]}}, "mean"),
        ({"normalization": {"mean": [127, 127, 127], "std": [128, INF, 128]}}, "std"),
        ({"normalization": {"mean": [127, 127, 127], "std": [NAN, NAN, NAN]}}, "std"),
        ({"normalization": {"mean": "127", "std": [128, 128, 128]}}, "mean"),
        ({"normalization": {"mean": ["a", "b", "c"], "std": [128, 128, 128]}}, "mean"),
        ({"normalization": {"mean": [True, 1, 1], "std": [128, 128, 128]}}, "mean"),
        ({"normalization": [127, 128]}, "normalization"),
        ({"normalization": {"mean": [1, 2, 3]}}, "normalization"),
        ({"classes": "sky building"}, "classes"),
        ({"classes": {"sky": 0}}, "classes"),
        ({"classes": list(range(11))}, "classes"),
        ({"classes": CLASS_NAMES[:10] + ["sky"]}, "classes"),
        ({"palette": [["r", "g", "b"]] * 11}, "palette"),
        ({"palette": [[1.5, 2, 3]] * 11}, "palette"),
        ({"palette": [[NAN, 2, 3]] * 11}, "palette"),
        ({"palette": "red"}, "palette"),
        ({"palette": [[1, 2]] * 10 + [[1, 2, 3, 4]]}, "palette"),
        ({"palette": {"sky": [1, 2, 3]}}, "palette"),
        ({"input_size": ["480", "360"]}, "input_size"),
        ({"input_size": [480.5, 360]}, "input_size"),
        ({"input_size": {"width": 480}}, "input_size"),
        ({"input_size": [10**9, 360]}, "input_size"),
        ({"weights": 12}, "weights"),
        ({"weights": ["a.pt"]}, "weights"),
        ({"kind": ["stac_lite0_fpn"]}, "kind"),
        ({"kind": "torchvision", "architecture": ["fcn"]}, "architecture"),
        ({"options": ["a", "b"]}, "options"),
        ({"name": {"a": 1}}, "name"),
    ],
)
def test_malformed_configurations_raise_model_config_error_naming_the_key(tmp_path, overrides, key):
    """Each of these used to load (NaN normalisation: every pixel NaN, every mask "sky") or
    raise a raw TypeError, AttributeError, ValueError or KeyError."""
    with pytest.raises(ModelConfigError, match=key):
        read_spec(write_config(tmp_path, **overrides))


@pytest.mark.parametrize(
    "text",
    ["kind: [unclosed\n", "a: b: c\n", "- a list\n", "\t kind: x\n", "7\n", "", "1: one\n"],
)
def test_text_that_is_not_a_configuration_raises_model_config_error(tmp_path, text):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(ModelConfigError):
        read_spec(path)
    path.write_bytes(b"kind: \xff\xfe\n")
    with pytest.raises(ModelConfigError, match="not a readable YAML"):
        read_spec(path)


@pytest.mark.parametrize(
    ("kind", "module", "library"),
    [
        ("torchvision", "torchvision", "torchvision"),
        ("smp", "segmentation_models_pytorch", "segmentation-models-pytorch"),
    ],
)
def test_optional_libraries_are_named_when_missing(tmp_path, kind, module, library):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here; this checks the error when it is not")
    weights = tmp_path / "state.pth"
    torch.save({}, weights)
    config = write_config(tmp_path, kind=kind, architecture="anything", weights=str(weights))
    with pytest.raises(ImportError, match=library):
        load_model(config)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # still supported in 2.13
def test_torchscript_export_loads_and_matches(tmp_path, model, frames):
    frame = np.ascontiguousarray(np.resize(frames[0], (360, 480, 3)))  # the traced size
    example = (torch.from_numpy(frame).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.network, example)
    traced.save(str(tmp_path / "model.ts"))
    scripted = load_model(write_config(tmp_path, kind="torchscript", weights="model.ts"), "cpu")
    expected = model.predict(frame).probabilities
    np.testing.assert_allclose(scripted.predict(frame).probabilities, expected, atol=1e-4)

    wrong = write_config(
        tmp_path,
        kind="torchscript",
        weights="model.ts",
        classes=CLASS_NAMES[:5],
        palette=PALETTE[:5].tolist(),
    )
    with pytest.raises(ValueError, match="declares 5 classes"):
        load_model(wrong, "cpu").predict(frame)


@pytest.mark.slow
def test_shipped_weights_reach_065_miou_on_20_val_frames(model, data_dir):
    split = load_split(data_dir / "camvid" / "val", limit=20)
    matrix = ConfusionMatrix(model.num_classes, IGNORE_INDEX)
    matrix.update(split.labels, model.predict(split.images).class_ids)
    assert matrix.mean_iou() >= 0.65


def _shipped_checkpoint() -> dict:
    return torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)


def _malformed_weights(kind: str, path) -> str:
    """Write one kind of broken weights file to `path`; returns the problem its error names."""
    if kind == "text":  # torch.load: KeyError: 101
        path.write_bytes(b"hello world")
        return "not a readable PyTorch weights file"
    if kind == "empty":  # EOFError
        path.write_bytes(b"")
        return "not a readable PyTorch weights file"
    if kind == "truncated":
        path.write_bytes(DEFAULT_WEIGHTS.read_bytes()[:100_000])
        return "not a readable PyTorch weights file"
    saved = _shipped_checkpoint()
    if kind == "no num_classes":  # KeyError: 'num_classes'
        del saved["num_classes"]
        problem = "'num_classes' must be a positive integer"
    elif kind == "fpn_channels text":
        saved["fpn_channels"] = "64"
        problem = "'fpn_channels' must be a positive integer"
    elif kind == "state_dict list":
        saved["state_dict"] = [1, 2]
        problem = "'state_dict' must map parameter names to tensors"
    elif kind == "tensor missing":
        saved["state_dict"].pop(next(iter(saved["state_dict"])))
        problem = "the weights do not fit the network"
    else:
        raise AssertionError(kind)
    torch.save(saved, path)
    return problem


@pytest.mark.parametrize(
    "kind",
    [
        "text",
        "empty",
        "truncated",
        "no num_classes",
        "fpn_channels text",
        "state_dict list",
        "tensor missing",
    ],
)
def test_malformed_weights_fail_with_a_weights_error_naming_file_and_problem(tmp_path, kind):
    weights = tmp_path / "broken.pt"
    problem = _malformed_weights(kind, weights)
    with pytest.raises(WeightsError) as caught:
        load_model(write_config(tmp_path, weights=str(weights)), "cpu")
    assert str(weights) in str(caught.value) and problem in str(caught.value)


def test_malformed_state_dict_files_of_other_kinds_fail_with_a_weights_error(tmp_path):
    weights = tmp_path / "text.pt"
    weights.write_text("not weights")
    for kind, architecture in (("torchscript", None), ("torchvision", "fcn_resnet50")):
        overrides = {"kind": kind, "weights": str(weights)}
        if architecture:
            overrides["architecture"] = architecture
        if kind == "torchvision" and importlib.util.find_spec("torchvision") is None:
            continue
        with pytest.raises(WeightsError, match=str(weights)):
            load_model(write_config(tmp_path, **overrides), "cpu")
