"""`stac-bench model`: forward and forward+backward-to-input times, and val mIoU of a model.

Timings are per frame (batch 1), the median over `--repeats` runs after one warm-up, with
`--threads` torch threads. 480x360 and 960x540 frames go through the configured working
resolution (the default model resizes 960x540 to 480x360 and back); the `native` row runs the
network at the frame's own 960x540, as a sensitivity map at full resolution would.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, build_model, read_spec
from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_training.camvid import IGNORE_INDEX, load_split
from stac_training.train import default_data_dir

CASES = (
    ("480x360", 480, 360, False),
    ("960x540", 960, 540, False),
    ("960x540_native", 960, 540, True),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model YAML")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="CamVid root with val/ and valannot/",
    )
    parser.add_argument("--val-limit", type=int, default=None, help="first N val frames only")


def _median_ms(function, repeats: int) -> float:
    function()  # warm-up: allocator, kernels selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def _forward(model: SegmentationModel, frame: torch.Tensor) -> None:
    with torch.inference_mode():
        model.logits(frame)


def _forward_backward(model: SegmentationModel, frame: torch.Tensor) -> None:
    """The sensitivity computation: CE against the model's own prediction, dL/dx."""
    x = frame.clone().requires_grad_(True)
    logits = model.logits(x)
    F.cross_entropy(logits, logits.detach().argmax(1)).backward()


def time_cases(config: Path, device: str, repeats: int) -> tuple[dict, dict]:
    spec = read_spec(config)
    models = {
        False: build_model(spec, device),
        True: build_model(dataclasses.replace(spec, input_size=None), device),
    }
    generator = torch.Generator().manual_seed(0)
    forward_ms, backward_ms = {}, {}
    for name, width, height, native in CASES:
        frame = (torch.rand(1, 3, height, width, generator=generator) * 255).to(device)
        forward_ms[name] = _median_ms(lambda m=models[native], f=frame: _forward(m, f), repeats)
        backward_ms[name] = _median_ms(
            lambda m=models[native], f=frame: _forward_backward(m, f), repeats
        )
    return forward_ms, backward_ms


def val_accuracy(config: Path, device: str, data_dir: Path, limit: int | None) -> dict:
    model = build_model(read_spec(config), device)
    split = load_split(data_dir / "val", limit=limit)
    matrix = ConfusionMatrix(model.num_classes, IGNORE_INDEX)
    matrix.update(split.labels, model.predict(split.images).class_ids)
    return {**matrix.summary(model.classes), "frames": len(split)}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    forward_ms, backward_ms = time_cases(args.config, args.device, args.repeats)
    accuracy = val_accuracy(args.config, args.device, args.data_dir, args.val_limit)
    result = {
        "model": str(args.config),
        "device": args.device,
        "threads": args.threads,
        "val_miou": accuracy["miou"],
        "val_pixel_accuracy": accuracy["pixel_accuracy"],
        "val_per_class_iou": accuracy["per_class_iou"],
        "val_frames": accuracy["frames"],
        "forward_ms": forward_ms,
        "backward_ms": backward_ms,
        "backward_ms_note": "forward + backward to the input (the sensitivity gradient)",
    }
    print_table(result)
    return result


def print_table(result: dict) -> None:
    print(f"model {result['model']} on {result['device']}, {result['threads']} threads")
    print(f"{'frame':<16}{'forward ms':>12}{'fwd+bwd ms':>12}")
    for name in result["forward_ms"]:
        print(f"{name:<16}{result['forward_ms'][name]:>12.1f}{result['backward_ms'][name]:>12.1f}")
    print(
        f"val mIoU {result['val_miou']:.4f}, pixel accuracy {result['val_pixel_accuracy']:.4f} "
        f"({result['val_frames']} frames)"
    )
    for name, iou in result["val_per_class_iou"].items():
        print(f"  {name:<12}{'n/a' if iou is None else f'{iou:.3f}':>8}")
