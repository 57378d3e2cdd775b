"""`stac-quantize`: calibrate the int8 engine's activation ranges on unlabelled frames.

The edge's `onnxruntime_int8` engine quantizes the exported graph at start with activation
ranges measured here once (MinMax over the frames, ONNX Runtime's static quantization) and
stored beside the model's weights (`engines.int8_ranges_path`), so the edge needs no frames of
its own to start. Only images are read: labels, where a directory has them, are not used. The
default frames are CamVid train, the model's training split, so CamVid val stays held out for
the int8 mIoU that `stac-bench model` reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from stac_edge_segmenter.engines import calibrate_int8, int8_ranges_path
from stac_edge_segmenter.loading import load_model
from stac_eval.frame_dirs import read_frames
from stac_training.train import default_data_dir

DEFAULT_FRAMES = 32


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stac-quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model YAML (default: the shipped model)")
    parser.add_argument(
        "--images",
        type=Path,
        default=default_data_dir() / "train",
        help="directory of PNG frames (default: CamVid train)",
    )
    parser.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help="frames spread evenly over the directory"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument(
        "--out", type=Path, default=None, help="ranges file (default: beside the model weights)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.frames < 1:
        raise SystemExit("stac-quantize: --frames must be >= 1")
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    available = len(list(args.images.glob("*.png")))
    frames = read_frames(args.images, limit=args.frames, stride=max(1, available // args.frames))
    out = args.out or int8_ranges_path(model)
    calibrate_int8(model, frames.images, out)
    print(
        f"int8 ranges of {model.spec.name} from {len(frames.names)} frames of {args.images}: {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
