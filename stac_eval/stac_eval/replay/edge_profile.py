"""How long the edge takes per pass: measured here, a fast (GPU) profile, or fixed.

Timeliness decides which mode wins (a slow edge makes every mask late, and keyframe mode sends
only what the edge can take), so the system comparison runs under two edge profiles:

- `measured`: the median time of one segmentation forward on the edge's inference engine
  (`--engine`, the segmenter's `engine` parameter) and of one sensitivity pass (forward +
  backward + allocation on torch, QPMapComputer) on the source's first frames, on this
  machine's device, with the edge's threads (`--edge-threads`, default the node's: its
  `torch_threads` default, 0 = the library's default, which the live edge container gets
  too), measured once per model, frame size, device, thread count and engine and cached (the
  replay is deterministic: a rerun reuses the figure); the load average at the measurement
  is kept with it;
- `fast`: a datacenter-GPU edge. For the shipped model, measured on an NVIDIA H200 (torch on
  CUDA, `stac-replay edge-timing --device cuda`, stac_eval/results/gpu_edge_h200.json) at
  the two clips' frame sizes, the nearest in pixels taken for another size; for any other
  model, published figures for this class of model (EfficientNet-B0), scaled to the model's
  working resolution, not measured. The constants and their sources are below and in
  docs/system_comparison.md;
- a JSON file (`--edge-profile FILE`): a measurement written by `stac-replay edge-timing
  --device cuda --out FILE` on a machine with a GPU (how the H200 figures were taken);
- `--edge-ms FORWARD/SENSITIVITY`: fixed numbers.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stac_edge_segmenter.engines import create_engine
from stac_edge_segmenter.loading import DEFAULT_CONFIG, SegmentationModel, read_spec
from stac_edge_segmenter.model_parameters import MODEL_PARAMETERS
from stac_eval.replay.truth import write_atomically
from stac_sensitivity.online import QPMapComputer

TIMING_FORMAT = "stac-replay-edge-timing-v1"
PROFILES = ("measured", "fast")

# The `fast` profile of the shipped model: an NVIDIA H200 edge (torch 2.11 on CUDA 13, eager,
# batch 1, the machine's 16 CPU threads for the allocation and the class ids), 2026-12-04, the
# median over three runs of `stac-replay edge-timing CLIP --device cuda --engine torch
# --forwards 40 --passes 40` of each run's median (stac_eval/results/gpu_edge_h200.json):
# frame size (width, height) -> (segmentation forward ms, sensitivity pass ms).
H200_SHIPPED_MODEL_MS = {(960, 540): (5.5, 17.2), (768, 576): (7.7, 15.7)}
H200_SOURCE = (
    "measured on an NVIDIA H200 (torch on CUDA, eager, 16 CPU threads; 2026-12-04, the median "
    "of three runs of stac-replay edge-timing --device cuda --engine torch --forwards 40 "
    "--passes 40, stac_eval/results/gpu_edge_h200.json)"
)

# Published figures behind the `fast` profile of any other model (EfficientNet-B0, 224x224):
# - batch-1 latency on an NVIDIA A100, TensorFlow FP32: 6.77 ms (NVIDIA TensorRT TensorFlow
#   quantization toolkit, "Model Zoo Results", EfficientNet-B0 baseline row): what a framework's
#   eager forward of this network costs at batch 1 (kernel launches dominate);
# - per-image time at full occupancy on an NVIDIA V100-32GB, PyTorch AMP channels-last (timm
#   benchmarks, R. Wightman, NGC 21.02): inference 6496.56 img/s, training 1556.66 img/s.
FAST_BATCH1_MS_224 = 6.77
FAST_INFERENCE_MS_PER_IMAGE_224 = 1e3 / 6496.56
FAST_TRAIN_OVER_INFERENCE = 6496.56 / 1556.66  # forward + backward against forward alone
REFERENCE_PIXELS = 224 * 224

# The edge nodes' `torch_threads` default (0: the library's default, which the live edge
# container also runs with).
NODE_TORCH_THREADS = next(p.default for p in MODEL_PARAMETERS if p.name == "torch_threads")
NODE_THREADS_NOTE = (
    f"the edge nodes' torch_threads default, {NODE_TORCH_THREADS}"
    if NODE_TORCH_THREADS
    else "the edge nodes' torch_threads default 0: the library's default, what torch gives a "
    "fresh process on this machine (its cores)"
)


@functools.cache
def library_default_threads() -> int:
    """What torch gives a process that sets no thread count (a fresh interpreter: this one
    may have set its own)."""
    result = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(result.stdout.strip())


def node_default_threads() -> int:
    """The threads an edge node runs its model with when `torch_threads` is left at its
    default: that default, or where it is 0 the library's default on this machine."""
    return NODE_TORCH_THREADS or library_default_threads()


@dataclass(frozen=True)
class EdgeTiming:
    """How long the edge takes for one frame: a segmentation forward, or a sensitivity pass
    (forward + backward + allocation), in ms; profile: 'measured', 'fast' or 'fixed'; source:
    where the figures come from."""

    segment_ms: float
    map_ms: float
    source: str = "fixed"
    profile: str = "fixed"
    # a measurement's circumstances (None where the figures were not measured here)
    threads: int | None = None
    load_average_1min: float | None = None
    measured_at: str | None = None

    @classmethod
    def parse(cls, spec: str) -> EdgeTiming:
        """'150' (both passes 150 ms) or '80/300' (forward 80 ms, sensitivity pass 300 ms)."""
        parts = spec.split("/")
        try:
            values = [float(part) for part in parts]
        except ValueError as error:
            raise ValueError(f"--edge-ms '{spec}': expected MS or SEGMENT_MS/MAP_MS") from error
        if len(values) not in (1, 2) or min(values) < 0:
            raise ValueError(f"--edge-ms '{spec}': expected MS or SEGMENT_MS/MAP_MS, >= 0")
        return cls(values[0], values[-1], "fixed", "fixed")

    def as_json(self) -> dict:
        data = {
            "profile": self.profile,
            "segment_ms": self.segment_ms,
            "map_ms": self.map_ms,
            "source": self.source,
        }
        if self.threads is not None:
            data["threads"] = self.threads
        if self.load_average_1min is not None:
            data["load_average_1min"] = self.load_average_1min
        if self.measured_at is not None:
            data["measured_at"] = self.measured_at
        return data

    @classmethod
    def from_measurement(cls, data: dict, source: str) -> EdgeTiming:
        """A `measure_edge` result (or a file holding one)."""
        return cls(
            float(data["segment_ms"]),
            float(data["map_ms"]),
            source,
            "measured",
            data.get("threads"),
            data.get("load_average_1min"),
            data.get("date"),
        )


def fast_edge_timing(model: SegmentationModel, width: int, height: int) -> EdgeTiming:
    """The `fast` profile for frames of width x height: the H200 measurement for the shipped
    model (`h200_edge_timing`), the published figures for any other (`published_edge_timing`)."""
    if _is_shipped_model(model):
        return h200_edge_timing(width, height)
    return published_edge_timing(model, width, height)


def _is_shipped_model(model: SegmentationModel) -> bool:
    """Whether `model` runs the shipped weights (which the H200 figures were measured with)."""
    shipped = read_spec(DEFAULT_CONFIG).weights
    return Path(model.spec.weights).resolve() == Path(shipped).resolve()


def h200_edge_timing(width: int, height: int) -> EdgeTiming:
    """The shipped model's H200 figures at the measured frame size nearest in pixels (the
    network sees its 480x360 working resolution whatever the size; the class ids at the
    frame's size and the allocation on the CPU are what the size changes)."""
    size = min(H200_SHIPPED_MODEL_MS, key=lambda s: (abs(s[0] * s[1] - width * height), s))
    forward_ms, map_ms = H200_SHIPPED_MODEL_MS[size]
    source = f"{H200_SOURCE} at {size[0]}x{size[1]}"
    if size != (width, height):
        source += f", the measured size nearest in pixels to this {width}x{height} source"
    return EdgeTiming(forward_ms, map_ms, source, "fast")


def published_edge_timing(model: SegmentationModel, width: int, height: int) -> EdgeTiming:
    """Published figures for frames of width x height: the batch-1 latency plus the published
    per-image compute scaled by the pixels the network sees (its working resolution, or the
    frame's own size), and the sensitivity pass as that forward times the published training
    / inference ratio. The allocation's CPU part (macroblock aggregation, the residual's flow)
    is left out."""
    working = model.spec.input_size or (width, height)
    scale = working[0] * working[1] / REFERENCE_PIXELS
    forward_ms = FAST_BATCH1_MS_224 + FAST_INFERENCE_MS_PER_IMAGE_224 * scale
    map_ms = forward_ms * FAST_TRAIN_OVER_INFERENCE
    source = (
        f"published GPU figures for EfficientNet-B0 scaled to the {working[0]}x{working[1]} "
        "network input (A100 batch-1 6.77 ms at 224 px, NVIDIA TensorRT quantization toolkit "
        "model zoo; V100 per-image inference / training 0.154 / 0.642 ms, timm benchmarks); "
        "not measured"
    )
    return EdgeTiming(round(forward_ms, 2), round(map_ms, 2), source, "fast")


def timing_from_file(path: Path) -> EdgeTiming:
    """A measurement written by `stac-replay edge-timing` (or the replay's cache)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--edge-profile {path}: not a readable JSON file ({error})") from error
    if data.get("format") != TIMING_FORMAT:
        raise ValueError(f"--edge-profile {path}: format is not {TIMING_FORMAT}")
    where = (
        f"measured on {data.get('device')} ({data.get('engine', 'torch')}), "
        f"{data.get('date')}, file {path}"
    )
    return EdgeTiming.from_measurement(data, where)


def measure_edge(
    model: SegmentationModel,
    computer: QPMapComputer,
    images: list[np.ndarray],
    threads: int,
    engine_name: str,
    forwards: int = 6,
    passes: int = 4,
) -> dict:
    """Medians of `forwards` forwards on the engine and `passes` sensitivity passes, cycling
    over the frames given (up to 4), after a warm-up (both return numpy arrays, so a GPU has
    finished when the clock stops), on `threads` threads (torch's count is restored
    afterwards). The engine is built as the segmenter builds it; where it falls back to torch,
    the figures are torch's and the JSON says so. The JSON also names ONNX Runtime's execution
    providers (a CPU-only ONNX Runtime beside a CUDA model runs on the CPU) and the GPU."""
    if threads < 1:
        raise ValueError(f"edge threads must be >= 1, got {threads}")
    if forwards < 1 or passes < 1:
        raise ValueError(f"forwards and passes must be >= 1, got {forwards} and {passes}")
    height, width = images[0].shape[:2]
    load = os.getloadavg()[0]
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        choice = create_engine(model, engine_name, threads)
        engine = choice.engine
        engine.segment_batch(images[0][None])
        computer.compute(images[0])
        forward_ms = []
        for index in range(forwards):
            started = time.perf_counter()
            engine.segment_batch(images[index % len(images)][None])
            forward_ms.append(1e3 * (time.perf_counter() - started))
        pass_ms = []
        for index in range(passes):
            started = time.perf_counter()
            computer.compute(images[index % len(images)])
            pass_ms.append(1e3 * (time.perf_counter() - started))
    finally:
        torch.set_num_threads(caller_threads)
    return {
        "format": TIMING_FORMAT,
        "segment_ms": round(statistics.median(forward_ms), 1),
        "map_ms": round(statistics.median(pass_ms), 1),
        "forwards": forwards,
        "passes": passes,
        # the spread of the timed runs (the median is the profile's figure)
        "segment_ms_quartiles": _quartiles(forward_ms),
        "map_ms_quartiles": _quartiles(pass_ms),
        "frame_size": [width, height],
        "device": str(model.device),
        "threads": threads,
        "engine": engine.name,
        "engine_requested": engine_name,
        "engine_fallback_reason": choice.fallback_reason,
        "engine_providers": getattr(engine, "providers", None),
        "accelerator": accelerator_name(model.device),
        "load_average_1min": round(load, 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _quartiles(values: list[float]) -> list[float]:
    """The first and third quartiles, rounded as the medians are (a single value twice)."""
    if len(values) < 2:
        return [round(values[0], 1)] * 2
    first, _, third = statistics.quantiles(values, n=4)
    return [round(first, 1), round(third, 1)]


def accelerator_name(device: torch.device) -> str | None:
    """The GPU's name where the model runs on CUDA (a measurement says what it ran on), else
    None."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device)


def measured_edge_timing(
    cache_dir: Path,
    model: SegmentationModel,
    model_key: str,
    computer: QPMapComputer,
    frames: Iterator[np.ndarray],
    threads: int,
    engine_name: str,
) -> EdgeTiming:
    """The cached measurement for this model, frame size, device, thread count and engine,
    or a new one (`measure_edge`) on the first 4 frames."""
    images = [image for _, image in zip(range(4), frames, strict=False)]
    height, width = images[0].shape[:2]
    key = f"{model_key[:16]}-{width}x{height}-{model.device}-t{threads}-{engine_name}"
    path = cache_dir / "edge_timing" / f"{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("format") == TIMING_FORMAT:
            return EdgeTiming.from_measurement(data, f"measured, cached in {path}")
    data = measure_edge(model, computer, images, threads, engine_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
    return EdgeTiming.from_measurement(data, f"measured now, cached in {path}")
