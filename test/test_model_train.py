"""stac-train pieces (schedule, augmentation, class weights) and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from stac_edge_segmenter.loading import DEFAULT_CONFIG, load_model
from stac_edge_segmenter.model import DEFAULT_WEIGHTS
from stac_training.camvid import IGNORE_INDEX
from stac_training.train import Augmenter, class_weights, load_checkpoint, lr_factor, main


def test_lr_warms_up_then_decays_to_zero():
    factors = [lr_factor(i, warmup=10, total=100) for i in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, warmup=10, total=100) == pytest.approx(0.0)


def _augment(seed: int, image: np.ndarray, label: np.ndarray):
    augmenter = Augmenter(64, 48, 0.75, 1.5, np.random.default_rng(seed))
    return augmenter(image, label)


def test_augmentation_crops_keeps_label_ids_and_is_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (72, 96), dtype=np.uint8)
    crop, crop_label = _augment(3, image, label)
    assert crop.shape == (48, 64, 3) and crop_label.shape == (48, 64)
    assert crop.min() >= 0 and crop.max() <= 255
    assert set(np.unique(crop_label)) <= {0, 1, 2, 3}  # nearest-neighbour labels
    again, again_label = _augment(3, image, label)
    np.testing.assert_array_equal(crop, again)
    np.testing.assert_array_equal(crop_label, again_label)


def test_frames_smaller_than_the_crop_are_padded_with_void():
    image = np.zeros((20, 30, 3), np.uint8)
    label = np.zeros((20, 30), np.uint8)
    crop, crop_label = _augment(0, image, label)  # even scaled 1.5x: 30x45 < 48x64
    assert crop.shape == (48, 64, 3)
    assert (crop_label == IGNORE_INDEX).any() and (crop_label == 0).any()


def test_rare_classes_weigh_more_and_weights_average_one():
    counts = [200, 50, *[10] * 9]  # every CamVid class present, void too
    labels = np.repeat(np.arange(12, dtype=np.uint8), [*counts, 100])
    weights = class_weights(labels, power=0.5).numpy()
    assert weights[0] < weights[1] < weights[2] == pytest.approx(weights[10])
    frequency = np.array(counts) / sum(counts)
    assert float((weights * frequency).sum()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(class_weights(labels, power=0.0).numpy(), 1.0, rtol=1e-6)


def _train(tmp_path, name: str, iterations: int, data_dir, resume: bool = False) -> dict:
    """A tiny run; its weights go to the default place, <out-dir>/weights.pt."""
    out = tmp_path / name
    argv = [
        "--data-dir", str(data_dir / "camvid"), "--out-dir", str(out),
        "--iterations", str(iterations),
        "--batch-size", "2", "--crop", "96x64", "--train-limit", "4", "--val-limit", "2",
        "--checkpoint-every", "1", "--warmup", "1", "--threads", "2",
    ]  # fmt: skip
    assert main([*argv, "--resume"] if resume else argv) == 0
    return load_checkpoint(out / "checkpoint.pt")["model"]


@pytest.mark.slow
def test_tiny_run_exports_loadable_weights_and_resumes_exactly(tmp_path, data_dir):
    shipped_before = DEFAULT_WEIGHTS.stat().st_mtime_ns
    straight = _train(tmp_path, "straight", 2, data_dir)
    assert DEFAULT_WEIGHTS.stat().st_mtime_ns == shipped_before, "the shipped model was written"
    metrics = json.loads((tmp_path / "straight" / "weights.metrics.json").read_text())
    assert metrics["iterations"] == 2 and metrics["val_frames"] == 2
    assert set(metrics["val_per_class_iou"]) >= {"sky", "pole", "bicyclist"}
    assert 0.0 <= metrics["val_miou"] <= 1.0 and metrics["command"].startswith("stac-train")

    _train(tmp_path, "resumed", 1, data_dir)
    resumed = _train(tmp_path, "resumed", 2, data_dir, resume=True)
    commands = json.loads((tmp_path / "resumed" / "weights.metrics.json").read_text())["command"]
    assert len(commands) == 2 and commands[1].endswith("--resume  # from iteration 1")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, msg=f"{name} differs after resume")

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["weights"] = str(tmp_path / "straight" / "weights.pt")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    frame = np.zeros((64, 96, 3), np.uint8)
    assert load_model(tmp_path / "tiny.yaml", "cpu").predict(frame).class_ids.shape == (1, 64, 96)


class _Planted:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('the planted checkpoint ran code')",))


def test_a_planted_checkpoint_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": _Planted(), "optimizer": {}, "rng": {}, "run": {}}, path)
    with pytest.raises(ValueError, match="not a stac-train checkpoint"):
        load_checkpoint(path)
