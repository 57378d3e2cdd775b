"""`stac-bench model`: forward and forward+backward-to-input times, and val mIoU of a model,
and every inference engine side by side.

Timings are per frame, the median over `--repeats` runs after one warm-up, with `--threads`
CPU threads (torch's and ONNX Runtime's). `forward_ms` / `backward_ms`: the torch network's
logits and the sensitivity gradient at batch 1; 480x360 and 960x540 frames go through the
configured working resolution (the default model resizes 960x540 to 480x360 and back); the
`native` row runs the network at the frame's own 960x540, as a sensitivity map at full
resolution would. `engines`: what the edge's segmenter runs per frame, uint8 frames in and
class ids out (`engines.Engine.segment_batch`), for each engine (torch, onnxruntime,
onnxruntime_int8), timed in turn within each repeat so that all see the same machine load,
with its val mIoU and the share of val pixels on which its masks agree with torch's. Every
engine takes its class ids from the low-resolution logits (`stac_codec.logit_labels`);
`torch_full_tail` is torch with its own upsampling and argmax (what the torch engine ran
before), timed in the same turns, and `forward_ratio_to_torch_full_tail` each engine against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from stac_edge_segmenter.engines import ENGINE_NAMES, Engine, TorchEngine, create_engine
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
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINE_NAMES,
        default=list(ENGINE_NAMES),
        help="inference engines compared (torch is always included: the reference)",
    )


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


# (name, width, height, batch): per-frame times of the edge's segmentation call.
ENGINE_CASES = (
    ("480x360", 480, 360, 1),
    ("960x540", 960, 540, 1),
    ("480x360_batch4", 480, 360, 4),
)
VAL_BATCH = 4
FULL_TAIL = "torch_full_tail"


def _interleaved_medians_ms(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median time of each call, the calls taking turns within every repeat."""
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def time_engines(engines: dict[str, Engine], repeats: int) -> dict[str, dict[str, float]]:
    """name -> case -> ms per frame of `segment_batch` on random frames."""
    generator = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {name: {} for name in engines}
    for case, width, height, batch in ENGINE_CASES:
        frames = generator.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        calls = {
            name: lambda e=engine, f=frames: e.segment_batch(f) for name, engine in engines.items()
        }
        for name, ms in _interleaved_medians_ms(calls, repeats).items():
            result[name][case] = round(ms / batch, 1)
    return result


def engine_accuracy(engines: dict[str, Engine], model: SegmentationModel, split) -> dict:
    """name -> val mIoU and the share of val pixels whose class agrees with torch's."""
    masks = {
        name: np.concatenate(
            [
                engine.segment_batch(split.images[start : start + VAL_BATCH])
                for start in range(0, len(split), VAL_BATCH)
            ]
        )
        for name, engine in engines.items()
    }
    result = {}
    for name, predicted in masks.items():
        matrix = ConfusionMatrix(model.num_classes, IGNORE_INDEX)
        matrix.update(split.labels, predicted)
        result[name] = {
            "val_miou": matrix.summary(model.classes)["miou"],
            "agreement_with_torch": round(float(np.mean(predicted == masks["torch"])), 5),
        }
    return result


def compare_engines(args: argparse.Namespace) -> tuple[dict, dict[str, float]]:
    """Every engine asked for, built as the edge builds it, timed and scored in one run, and
    the times of torch with its own upsampling and argmax (`FULL_TAIL`) in the same turns."""
    model = build_model(read_spec(args.config), args.device)
    engines: dict[str, Engine] = {"torch": TorchEngine(model)}
    full_tail = TorchEngine(model, low_res=False)
    built = {}
    for name in args.engines:
        if name == "torch":
            continue
        started = time.perf_counter()
        choice = create_engine(model, name, args.threads)
        built[name] = {
            "runs_as": choice.engine.name,
            "fallback_reason": choice.fallback_reason,
            "start_s": round(time.perf_counter() - started, 2),
            "providers": getattr(choice.engine, "providers", None),
        }
        engines[name] = choice.engine
    forward_ms = time_engines({**engines, FULL_TAIL: full_tail}, args.repeats)
    accuracy = engine_accuracy(
        engines, model, load_split(args.data_dir / "val", limit=args.val_limit)
    )
    result = {}
    for name in engines:
        ratio, full_tail_ratio = (
            {case: round(ms / forward_ms[base][case], 3) for case, ms in forward_ms[name].items()}
            for base in ("torch", FULL_TAIL)
        )
        result[name] = {
            "forward_ms": forward_ms[name],
            "forward_ratio_to_torch": ratio,
            "forward_ratio_to_torch_full_tail": full_tail_ratio,
            **accuracy[name],
            **built.get(name, {"runs_as": "torch"}),
        }
    return result, forward_ms[FULL_TAIL]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    forward_ms, backward_ms = time_cases(args.config, args.device, args.repeats)
    accuracy = val_accuracy(args.config, args.device, args.data_dir, args.val_limit)
    engines, full_tail_ms = compare_engines(args)
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
        "engines": engines,
        FULL_TAIL: {"forward_ms": full_tail_ms},
        "engines_note": "forward_ms: segment_batch per frame (uint8 frames in, class ids out), "
        "the engines timed in turn within each repeat; agreement_with_torch: share of val pixels",
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
    cases = [case for case, *_ in ENGINE_CASES]
    print(f"{'engine':<18}" + "".join(f"{case + ' ms':>20}" for case in cases)
          + f"{'val mIoU':>10}{'agree':>9}")  # fmt: skip
    for name, entry in result["engines"].items():
        times = "".join(
            f"{entry['forward_ms'][c]:>12.1f} ({entry['forward_ratio_to_torch'][c]:.2f}x)"
            for c in cases
        )
        print(f"{name:<18}{times}{entry['val_miou']:>10.4f}{entry['agreement_with_torch']:>9.4f}")
        if entry.get("fallback_reason"):
            print(f"  runs as {entry['runs_as']}: {entry['fallback_reason']}")
    times = "".join(f"{result[FULL_TAIL]['forward_ms'][c]:>20.1f}" for c in cases)
    print(f"{FULL_TAIL:<18}{times}")
