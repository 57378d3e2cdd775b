"""`stac-bench`: one command, one subcommand per benchmark; each prints a table and writes JSON.

A benchmark module (`BENCHMARK_MODULES`) provides `add_arguments(parser)` and
`run(args) -> dict`; the dispatcher adds the command line and the environment to the JSON.
Modules are imported lazily so `stac-bench codec` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

BENCHMARKS = {
    "model": "forward / backward-to-input timings and val mIoU of the segmentation model",
    "codec": "H.264 encode/decode speed, QP-map overhead and bytes per frame",
    "spatial": "bits-vs-mIoU curves and BD-rate of STAC against the baselines (intra)",
    "live": "the ROS 2 graph on a clip: encoder CPU time, fps, latency, bits/s",
    "faults": "fault injection on the real nodes: loss, rate cap, restarts, flood, rogue input",
    "temporal": "STAC on video: stream-mode BD-rate, delays, keyframe mode, bitrate target, "
    "robot time per frame",
    "masks": "masks sent back to the robot: bytes, agreement and speed of every coder",
    "keyframe": "keyframe mode's accuracy ceiling, lever by lever: ways to carry masks, "
    "keyframe pacing, masks at scene cuts, flow width",
    "fleet": "N robots on one edge (fairness, latency, memory, cross-talk), discovery with "
    "multicast vs a discovery server, failover between two edges",
    "gpu": "forward and map pass at batch 1/4/16, torch CUDA vs ONNX Runtime CUDA (skips "
    "without a GPU)",
}
# The live graph runs real nodes, so its benchmark lives with the ROS front ends.
BENCHMARK_MODULES = {
    "model": "stac_eval.bench_model",
    "codec": "stac_eval.bench_codec",
    "spatial": "stac_eval.bench_spatial",
    "live": "stac_eval.ros.bench_live",
    "faults": "stac_eval.ros.bench_faults",
    "temporal": "stac_eval.bench_temporal",
    "masks": "stac_eval.bench_masks",
    "keyframe": "stac_eval.bench_keyframe",
    "fleet": "stac_eval.ros.bench_fleet",
    "gpu": "stac_eval.bench_gpu",
}


def _module(name: str):
    return importlib.import_module(BENCHMARK_MODULES[name])


def build_parser(available: dict[str, str], chosen: str | None = None) -> argparse.ArgumentParser:
    """Every benchmark as a subcommand; only `chosen`'s module is imported for its options
    when it is given (a GPU machine without ROS runs `stac-bench gpu`, although the ROS
    benchmarks' modules import rclpy), every module's otherwise."""
    parser = argparse.ArgumentParser(prog="stac-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, help_text in available.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", type=Path, required=True, help="JSON file to write")
        if chosen is None or name == chosen:
            _module(name).add_arguments(p)
    return parser


def available_benchmarks() -> dict[str, str]:
    """The benchmarks whose module is installed (a package may not be built yet)."""
    found = {}
    for name, help_text in BENCHMARKS.items():
        if importlib.util.find_spec(BENCHMARK_MODULES[name]) is not None:
            found[name] = help_text
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = available_benchmarks()
    chosen = argv[0] if argv and argv[0] in available else None
    args = build_parser(available, chosen).parse_args(argv)
    started = time.time()
    load_at_start = os.getloadavg()[0]
    result = _module(args.benchmark).run(args)
    result["meta"] = {
        "command": shlex.join(["stac-bench", *argv]),
        "wall_s": round(time.time() - started, 2),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # the machine is shared: the 1-min load average says how much else ran beside it
        "load_average_1min_at_start": round(load_at_start, 2),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
