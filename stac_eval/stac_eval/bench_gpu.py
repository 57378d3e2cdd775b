"""`stac-bench gpu`: the edge's forward and map pass on a GPU, at batch 1, 4 and 16.

Forward (uint8 frames in, class ids out, `engines.Engine.segment_batch`) for torch on CUDA
and ONNX Runtime's CUDA execution provider (TensorRT's where installed: onnxruntime-gpu); the
map pass (forward + backward to the input, `sensitivity.compute_sensitivity`, the part of a
QP map that needs the GPU) for torch on CUDA. Per-frame milliseconds, the median of
`--repeats` timed runs after a warm-up, at 480x360 and at 960x540. Without a CUDA device, or
without ONNX Runtime's CUDA provider, the parts that need them are skipped and the JSON says
why: the command always succeeds, so it can be run blind on any machine.
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
    EngineError,
    TorchEngine,
    agreement,
    build_onnxruntime_engine,
)
from stac_edge_segmenter.loading import DEFAULT_CONFIG, build_model, read_spec
from stac_sensitivity.sensitivity import compute_sensitivity

BATCHES = (1, 4, 16)
SIZES = ((480, 360), (960, 540))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model YAML")
    parser.add_argument("--device", default="cuda", help="CUDA device (cuda, cuda:1, ...)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes")


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
    _print_table(result)
    return result


def _print_table(result: dict) -> None:
    print(f"{result['gpu']}: ms per frame")
    names = list(result["forward_ms"])
    print(f"{'case':<24}" + "".join(f"{name + ' fwd':>18}" for name in names) + f"{'map':>10}")
    for case, map_ms in result["map_pass_ms"].items():
        cells = "".join(f"{result['forward_ms'][name][case]:>18.2f}" for name in names)
        print(f"{case:<24}{cells}{map_ms:>10.2f}")
    if result.get("onnxruntime_skipped"):
        print(f"onnxruntime skipped: {result['onnxruntime_skipped']}")
