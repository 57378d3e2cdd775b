"""`stac-bench gpu`: the edge's forward and map pass on a GPU, at batch 1, 4 and 16.

Forward (uint8 frames in, class ids out, `engines.Engine.segment_batch`) for torch on CUDA
and ONNX Runtime's CUDA execution provider (TensorRT's where installed: onnxruntime-gpu); the
map pass (forward + backward to the input, `sensitivity.compute_sensitivity`, the part of a
QP map that needs the GPU) for torch on CUDA. Per-frame milliseconds, the median of
`--repeats` timed runs after a warm-up, at 480x360 and at 960x540. With `--video`, also the
share of pixels where torch on CUDA gives the same class ids as the CPU engines (torch, ONNX
Runtime) on the clip's first `--frames` frames: the replay's `fast` profile times a GPU edge
but takes its masks from the CPU. Without a CUDA device, or without ONNX Runtime's CUDA
provider, the parts that need them are skipped and the JSON says why: the command always
succeeds, so it can be run blind on any machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stac_edge_segmenter.engines import (
    ENGINE_NAMES,
    Engine,
    EngineError,
    TorchEngine,
    agreement,
    build_onnxruntime_engine,
    create_engine,
)
from stac_edge_segmenter.loading import DEFAULT_CONFIG, build_model, read_spec
from stac_eval.replay.source import open_source
from stac_sensitivity.sensitivity import compute_sensitivity

BATCHES = (1, 4, 16)
SIZES = ((480, 360), (960, 540))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model YAML")
    parser.add_argument("--device", default="cuda", help="CUDA device (cuda, cuda:1, ...)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes")
    parser.add_argument(
        "--video", type=Path, default=None, help="clip for the GPU / CPU mask agreement"
    )
    parser.add_argument("--frames", type=int, default=30, help="frames of --video")


def _median_ms_per_frame(call: Callable[[], object], repeats: int, batch: int) -> float:
    call()  # warm-up: kernels, cuDNN algorithm choice, ORT's memory arena
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times) / batch, 2)


def _frames(batch: int, width: int, height: int) -> np.ndarray:
    generator = np.random.default_rng(batch)
    return generator.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def run(args: argparse.Namespace) -> dict:
    result: dict = {"device": args.device, "batches": args.batches, "measured": False}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device visible to torch: nothing measured"
        print(f"stac-bench gpu: {result['skipped']}")
        return result
    model = build_model(read_spec(args.config), args.device)
    result.update(measured=True, gpu=torch.cuda.get_device_name(model.device))
    engines = {"torch": TorchEngine(model)}
    try:
        engines["onnxruntime"] = build_onnxruntime_engine(model)
        result["onnxruntime_providers"] = engines["onnxruntime"].providers
    except EngineError as error:
        result["onnxruntime_skipped"] = str(error)
    if "onnxruntime" in engines and engines["onnxruntime"].providers[0] == "CPUExecutionProvider":
        result["onnxruntime_skipped"] = "no CUDA execution provider (pip install onnxruntime-gpu)"
        del engines["onnxruntime"]
    forward: dict = {name: {} for name in engines}
    map_pass: dict = {}
    for width, height in SIZES:
        for batch in args.batches:
            case = f"{width}x{height}_batch{batch}"
            frames = _frames(batch, width, height)
            for name, engine in engines.items():
                forward[name][case] = _median_ms_per_frame(
                    lambda e=engine, f=frames: e.segment_batch(f), args.repeats, batch
                )
            map_pass[case] = _median_ms_per_frame(
                lambda f=frames: compute_sensitivity(model.logits, f, device=model.device),
                args.repeats,
                batch,
            )
    if "onnxruntime" in engines:
        check = [_frames(2, *SIZES[0])]
        result["onnxruntime_agreement_with_torch"] = agreement(
            engines["onnxruntime"], engines["torch"], check
        )
    result.update(forward_ms=forward, map_pass_ms=map_pass, engines_known=list(ENGINE_NAMES))
    if args.video is not None:
        result["agreement_with_cpu"] = _agreement_with_cpu(args, engines["torch"])
    _print_table(result)
    return result


def _agreement_with_cpu(args: argparse.Namespace, gpu_engine: Engine) -> dict:
    frames = [frame.image for frame in open_source(str(args.video)).frames(args.frames)]
    cpu_model = build_model(read_spec(args.config), "cpu")
    cpu_engines: dict[str, Engine] = {"torch": TorchEngine(cpu_model)}
    choice = create_engine(cpu_model, "onnxruntime")
    if choice.engine.name == "onnxruntime":
        cpu_engines["onnxruntime"] = choice.engine
    return {
        "video": str(args.video),
        "frames": len(frames),
        **agreement_on_frames(gpu_engine, cpu_engines, frames),
    }


def agreement_on_frames(
    engine: Engine, references: dict[str, Engine], frames: list[np.ndarray]
) -> dict[str, float]:
    """The share of pixels where `engine`'s class ids equal each reference engine's, one frame
    at a time (the edge's batch of one)."""
    batches = [frame[None] for frame in frames]
    return {
        name: round(agreement(engine, reference, batches), 6)
        for name, reference in references.items()
    }


def _print_table(result: dict) -> None:
    print(f"{result['gpu']}: ms per frame")
    names = list(result["forward_ms"])
    print(f"{'case':<24}" + "".join(f"{name + ' fwd':>18}" for name in names) + f"{'map':>10}")
    for case, map_ms in result["map_pass_ms"].items():
        cells = "".join(f"{result['forward_ms'][name][case]:>18.2f}" for name in names)
        print(f"{case:<24}{cells}{map_ms:>10.2f}")
    if result.get("onnxruntime_skipped"):
        print(f"onnxruntime skipped: {result['onnxruntime_skipped']}")
    if "agreement_with_cpu" in result:
        print(f"class ids, CUDA torch against the CPU: {result['agreement_with_cpu']}")
