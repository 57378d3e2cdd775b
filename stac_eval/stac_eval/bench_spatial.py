"""`stac-bench spatial`: bits-vs-mIoU curves of STAC and its baselines, intra-only, and BD-rates.

Every frame is coded on its own (fresh encoder, IDR, slice bytes counted) by every method at
every point of its sweep, decoded, and segmented. Methods:

- uniform: H.264 with no map (same encoder settings as STAC: AQ on at strength 0.001).
- x264_aq: x264's own variance adaptive quantization (AQ mode 1, strength 1), no map.
- two_level: AccMPEG-style map, the top fraction of macroblocks by sensitivity at -6 QP, the
  rest at +6 (same sensitivity and encoder settings as stac_practical).
- jpeg: OpenCV JPEG per frame (compressed_image_transport), swept over quality.
- stac_oracle: STAC map from the gradient (and AC energy) of the uncompressed frame.
- stac_practical: STAC map from the gradient and the AC energy of the frame decoded at the base
  quality (uniform map, same CRF): what the edge really has.
- stac_rate_blind (ablation, when the calibration's rule is rate-aware): stac_practical with
  the rate term off (STAC's original q ~ 1/g), everything else the same.

The H.264 methods sweep the base quality (CRF). Accuracy is mIoU against human labels (when
given) and against the DNN's output on the uncompressed frame (pseudo labels), always. The STAC
settings come from the offline calibration file (stac-calibrate) when there is one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from stac_codec.h264_encoder import PRESETS
from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import encode_qp_map
from stac_edge_segmenter.loading import load_model
from stac_eval.baselines import jpeg_round_trip, two_level_allocation
from stac_eval.bd_rate import NoOverlapError
from stac_eval.frame_dirs import read_frames
from stac_eval.intra import X264_DEFAULT_AQ_STRENGTH, code_intra
from stac_eval.rate_accuracy import (
    LABEL_KINDS,
    MethodCurve,
    bootstrap_bd_rate_ci,
    curve_bd_rate,
    frame_confusion,
    miou_of,
)
from stac_sensitivity.allocation import AllocationConfig, allocate
from stac_sensitivity.calibration import Calibration, find_calibration, load_calibration
from stac_sensitivity.macroblocks import macroblock_ac_energy
from stac_sensitivity.sensitivity import compute_sensitivity

DEFAULT_CRFS = (20, 24, 28, 32, 36, 40, 44)
DEFAULT_JPEG_QUALITIES = (5, 10, 20, 35, 50, 70, 90)
BASELINES = ("uniform", "x264_aq", "two_level", "jpeg")
H264_METHODS = ("uniform", "x264_aq", "two_level", "stac_oracle", "stac_practical")
ABLATION = "stac_rate_blind"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="directory of RGB PNG frames")
    parser.add_argument(
        "--labels", type=Path, default=None, help="directory of class-id PNGs named as the frames"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N frames")
    parser.add_argument(
        "--crf", type=float, nargs="+", default=list(DEFAULT_CRFS), help="H.264 base qualities"
    )
    parser.add_argument(
        "--jpeg-quality", type=int, nargs="+", default=list(DEFAULT_JPEG_QUALITIES), help="1..100"
    )
    parser.add_argument(
        "--two-level-top-fraction", type=float, default=0.4, help="share of fine macroblocks"
    )
    parser.add_argument(
        "--calibration", type=Path, default=None, help="stac-calibrate output (default: found)"
    )
    parser.add_argument("--model", type=Path, default=None, help="model YAML (default: shipped)")
    parser.add_argument(
        "--preset",
        default="veryfast",
        choices=PRESETS,
        help="x264 preset of every H.264 method (keyframe mode codes its far keyframes with "
        "slow's analysis: --preset slow measures the pictures it sends)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="frames per DNN batch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--bootstrap", type=int, default=200, help="BD-rate CI resamples (0: off)")
    parser.add_argument(
        "--plot", type=Path, default=None, help="curves PNG (default: beside --out)"
    )
    parser.add_argument(
        "--heatmap", type=Path, default=None, help="frame + QP map PNG (default: beside --out)"
    )


class SpatialBenchmark:
    """Runs every method over a batch of frames and accumulates the per-frame results."""

    def __init__(self, segmenter, calibration: Calibration, args) -> None:
        self.segmenter = segmenter
        self.calibration = calibration
        self.allocation_config: AllocationConfig = calibration.allocation_config()
        self.rate_blind_config = dataclasses.replace(self.allocation_config, rate_exponent=0.0)
        self.args = args
        classes = segmenter.num_classes
        methods = H264_METHODS + ((ABLATION,) if self.allocation_config.rate_aware else ())
        self.curves = {name: MethodCurve(name, "crf", list(args.crf), classes) for name in methods}
        self.curves["jpeg"] = MethodCurve("jpeg", "quality", list(args.jpeg_quality), classes)
        self.example: dict | None = None
        self.uncompressed_confusion = np.zeros((classes, classes), dtype=np.int64)

    def run_batch(self, images: np.ndarray, labels: np.ndarray | None) -> None:
        raw = self._sensitivity(images)
        truth = {"pseudo": raw.class_ids}
        if labels is not None:
            truth["human"] = labels
            for label, prediction in zip(labels, raw.class_ids, strict=True):
                self.uncompressed_confusion += frame_confusion(
                    label, prediction, self.segmenter.num_classes, None
                )
        raw_energy = [macroblock_ac_energy(frame) for frame in images]
        for point, crf in enumerate(self.args.crf):
            self._run_crf(point, crf, images, (raw.macroblock_sensitivity, raw_energy), truth)
        for point, quality in enumerate(self.args.jpeg_quality):
            coded = [jpeg_round_trip(frame, quality) for frame in images]
            self._record("jpeg", point, [c[0] for c in coded], [c[1] for c in coded], truth)

    def _sensitivity(self, images: np.ndarray):
        return compute_sensitivity(
            self.segmenter.logits,
            images,
            device=self.args.device,
            class_weights=self.calibration.class_weights,
            class_weight_exponent=self.calibration.class_weight_exponent,
        )

    def _run_crf(self, point, crf, images, oracle, truth) -> None:
        preset = self.args.preset
        uniform = [code_intra(frame, crf, preset=preset) for frame in images]
        decoded = np.stack([c.decoded_rgb for c in uniform])
        practical = self._sensitivity(decoded)
        decoded_energy = [macroblock_ac_energy(frame) for frame in decoded]
        config = self.allocation_config
        self._record_predicted(
            "uniform", point, practical.class_ids, [c.slice_bytes for c in uniform], truth
        )
        aq = [
            code_intra(f, crf, aq_strength=X264_DEFAULT_AQ_STRENGTH, preset=preset) for f in images
        ]
        self._record(
            "x264_aq", point, [c.decoded_rgb for c in aq], [c.slice_bytes for c in aq], truth
        )
        maps = {
            "two_level": [
                two_level_allocation(s, self.args.two_level_top_fraction)
                for s in practical.macroblock_sensitivity
            ],
            "stac_practical": [
                allocate(s, config, e)
                for s, e in zip(practical.macroblock_sensitivity, decoded_energy, strict=True)
            ],
            "stac_oracle": [allocate(s, config, e) for s, e in zip(*oracle, strict=True)],
        }
        if ABLATION in self.curves:
            maps[ABLATION] = [
                allocate(s, self.rate_blind_config) for s in practical.macroblock_sensitivity
            ]
        for method, allocations in maps.items():
            self._run_map(method, point, crf, images, allocations, truth)
        if self.example is None and crf >= np.median(self.args.crf):
            self.example = {
                "image": images[0],
                "offsets_qp": maps["stac_practical"][0].offsets_qp,
                "crf": crf,
            }

    def _run_map(self, method, point, crf, images, allocations: list[QPLevelMap], truth):
        coded = [
            code_intra(
                frame,
                crf,
                allocation.offsets_qp,
                aq_strength=self.calibration.aq_strength,
                preset=self.args.preset,
            )
            for frame, allocation in zip(images, allocations, strict=True)
        ]
        feedback = [len(encode_qp_map(allocation)) for allocation in allocations]
        decoded = [c.decoded_rgb for c in coded]
        self._record(method, point, decoded, [c.slice_bytes for c in coded], truth, feedback)

    def _record(self, method, point, decoded, coded_bytes, truth, feedback=None) -> None:
        class_ids = self.segmenter.predict(np.stack(decoded)).class_ids
        self._record_predicted(method, point, class_ids, coded_bytes, truth, feedback)

    def _record_predicted(self, method, point, class_ids, coded_bytes, truth, feedback=None):
        classes = self.segmenter.num_classes
        for index, prediction in enumerate(class_ids):
            confusions = {
                kind: frame_confusion(labels[index], prediction, classes, None)
                for kind, labels in truth.items()
            }
            extra = 0 if feedback is None else feedback[index]
            self.curves[method].add(point, coded_bytes[index], confusions, extra)


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    frames = read_frames(args.images, args.labels, args.limit)
    segmenter = load_model(args.model, device=args.device)
    calibration, calibration_path = _calibration(args.calibration, segmenter)
    bench = SpatialBenchmark(segmenter, calibration, args)
    started = time.time()
    for start in range(0, len(frames.names), args.batch_size):
        stop = start + args.batch_size
        labels = None if frames.labels is None else frames.labels[start:stop]
        bench.run_batch(frames.images[start:stop], labels)
        print(
            f"  frames {min(stop, len(frames.names))}/{len(frames.names)} "
            f"({time.time() - started:.0f} s)",
            flush=True,
        )
    result = summarise(bench.curves, frames.labels is not None, args.bootstrap)
    uncompressed_miou = None
    if frames.labels is not None:
        uncompressed_miou = round(miou_of(bench.uncompressed_confusion, segmenter.num_classes), 4)
    result["uncompressed_miou_human"] = uncompressed_miou
    result["setup"] = {
        "images": str(args.images),
        "labels": None if args.labels is None else str(args.labels),
        "frames": len(frames.names),
        "frame_size": list(frames.images.shape[1:3][::-1]),
        "model": segmenter.spec.name,
        "calibration": str(calibration_path) if calibration_path else "built-in defaults",
        "stac_settings": _settings_json(calibration),
        "settings_chosen_on": {
            key: calibration.provenance[key]
            for key in ("sources", "frames", "frame_size", "labels", "command", "overlap_check")
            if key in calibration.provenance
        }
        or "not recorded (built-in defaults: chosen on CamVid val in the feasibility experiment)",
        "two_level": {"top_fraction": args.two_level_top_fraction, "offsets_qp": [-6, 6]},
        "encoder": f"x264 {args.preset}, intra (fresh encoder per frame, IDR), threads 1, "
        "slice bytes",
        "seconds_coding_and_inference": round(time.time() - started, 1),
    }
    out_stem = args.out.with_suffix("")
    plot_path = args.plot or out_stem.with_name(out_stem.name + "_curves.png")
    heatmap_path = args.heatmap or out_stem.with_name(out_stem.name + "_qpmap.png")
    plot_curves(bench.curves, plot_path, uncompressed_miou)
    if bench.example is not None:
        plot_qp_map(bench.example, heatmap_path)
    result["plots"] = {"curves": str(plot_path), "qp_map": str(heatmap_path)}
    print_tables(result)
    return result


def _calibration(path: Path | None, segmenter) -> tuple[Calibration, Path | None]:
    if path is not None:
        return load_calibration(path), path
    return find_calibration(segmenter.spec.weights)


def _settings_json(calibration: Calibration) -> dict:
    return {
        "alpha": calibration.alpha,
        "max_offset_qp": calibration.max_offset_qp,
        "levels_qp": list(calibration.levels_qp),
        "smoothing_sigma_mb": calibration.smoothing_sigma_mb,
        "class_weighted_loss": calibration.class_weights is not None,
        "class_weight_exponent": calibration.class_weight_exponent,
        "aq_strength": calibration.aq_strength,
        "rate_exponent": calibration.rate_exponent,
        "energy_floor": calibration.energy_floor,
    }


def _bd_or_none(anchor: MethodCurve, test: MethodCurve, kind: str, **kwargs) -> float | None:
    try:
        return round(curve_bd_rate(anchor, test, kind, **kwargs), 2)
    except (NoOverlapError, ValueError):
        return None


def summarise(curves: dict[str, MethodCurve], has_human: bool, resamples: int) -> dict:
    """BD-rate tables (STAC against every baseline), bootstrap intervals and the curves."""
    kind = "human" if has_human else "pseudo"
    practical, oracle = curves["stac_practical"], curves["stac_oracle"]
    result: dict = {"bd_rate_labels": kind}
    result["bd_rate_pct"] = {b: _bd_or_none(curves[b], practical, kind) for b in BASELINES}
    result["bd_rate_pct_pseudo"] = {
        b: _bd_or_none(curves[b], practical, "pseudo") for b in BASELINES
    }
    result["bd_rate_pct_oracle"] = {b: _bd_or_none(curves[b], oracle, kind) for b in BASELINES}
    result["bd_rate_pct_oracle_pseudo"] = {
        b: _bd_or_none(curves[b], oracle, "pseudo") for b in BASELINES
    }
    result["bd_rate_pct_with_feedback"] = {
        b: _bd_or_none(curves[b], practical, kind, with_feedback=True) for b in BASELINES
    }
    result["bd_rate_pct_practical_vs_oracle"] = {
        k: _bd_or_none(oracle, practical, k) for k in LABEL_KINDS if practical.has_labels(k)
    }
    if resamples > 0:
        result["bd_rate_ci95_pct"] = {
            k: {b: bootstrap_bd_rate_ci(curves[b], practical, k, resamples) for b in BASELINES}
            for k in LABEL_KINDS
            if practical.has_labels(k)
        }
    if ABLATION in curves:
        result["bd_rate_pct_rate_blind"] = {
            label_kind: {b: _bd_or_none(curves[b], curves[ABLATION], label_kind) for b in BASELINES}
            for label_kind in LABEL_KINDS
            if practical.has_labels(label_kind)
        }
        result["bd_rate_pct_practical_vs_rate_blind"] = {
            k: _bd_or_none(curves[ABLATION], practical, k)
            for k in LABEL_KINDS
            if practical.has_labels(k)
        }
    result["curves"] = {name: curve.as_json() for name, curve in curves.items()}
    return result


def print_tables(result: dict) -> None:
    print("\nbits-vs-mIoU curves (bytes per frame, slice bytes only; mIoU human / pseudo)")
    if result["uncompressed_miou_human"] is not None:
        print(f"  uncompressed frames: mIoU {result['uncompressed_miou_human']:.3f} (human)")
    for name, curve in result["curves"].items():
        print(f"  {name:15s}", end="")
        for point in curve["points"]:
            human = point.get("miou_human")
            label = f"{human:.3f}/" if human is not None else ""
            print(
                f" {point[curve['knob']]:g}:{point['bytes_per_frame'] / 1000:.1f}kB "
                f"{label}{point['miou_pseudo']:.3f}",
                end="",
            )
        print()
    print(f"\nBD-rate of STAC (negative = fewer bits at equal mIoU), {result['bd_rate_labels']}")
    header = ("practical", "(pseudo)", "oracle", "+feedback")
    print(f"  {'baseline':12s} " + " ".join(f"{h:>10s}" for h in header))
    for baseline in BASELINES:
        cells = [
            result[key][baseline]
            for key in (
                "bd_rate_pct",
                "bd_rate_pct_pseudo",
                "bd_rate_pct_oracle",
                "bd_rate_pct_with_feedback",
            )
        ]
        text = " ".join("        --" if c is None else f"{c:+9.2f}%" for c in cells)
        print(f"  {baseline:12s} {text}")
    if "bd_rate_pct_practical_vs_rate_blind" in result:
        print(
            "  rate term (practical vs the same map without it): "
            f"{result['bd_rate_pct_practical_vs_rate_blind']}"
        )


def plot_curves(
    curves: dict[str, MethodCurve], path: Path, uncompressed_miou: float | None
) -> None:
    """Bits vs mIoU, one line per method, one panel per kind of labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in LABEL_KINDS if curves["uniform"].has_labels(k)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        for name, curve in curves.items():
            axis.plot(
                curve.rates_bytes() * 8 / 1000, curve.mious(kind), marker="o", ms=3, label=name
            )
        axis.set_xscale("log")
        axis.set_xlabel("kbit per frame (intra)")
        axis.set_ylabel(f"mIoU vs {'human labels' if kind == 'human' else 'DNN on raw frame'}")
        axis.grid(True, which="both", alpha=0.3)
        reference = uncompressed_miou if kind == "human" else 1.0
        if reference is not None:
            axis.axhline(reference, color="grey", linestyle="--", linewidth=1, label="uncompressed")
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def plot_qp_map(example: dict, path: Path) -> None:
    """One frame beside its STAC (practical) QP offset map as a heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.imshow(example["image"])
    left.set_title("frame")
    offsets = example["offsets_qp"].astype(float)
    limit = max(1.0, float(np.abs(offsets).max()))
    shown = right.imshow(offsets, cmap="coolwarm", vmin=-limit, vmax=limit)
    right.set_title(f"STAC QP offsets at CRF {example['crf']:g} (blue = finer)")
    figure.colorbar(shown, ax=right, label="QP offset")
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
