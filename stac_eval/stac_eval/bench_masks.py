"""`stac-bench masks`: what a mask sent back to the robot costs in each coding, and how close
the robot's decoded mask stays to the edge's.

The shipped model segments the frames of a clip (every `--every`-th, as the edge segments the
newest frame it can: about every second frame of vtest.avi in the demo) or of a folder of
images (CamVid val); each full-resolution mask goes through every coder:

- baselines: rle_deflate (the earlier wire form: runs + deflate), png (the ids as an 8-bit
  PNG, level 9: a palette PNG's pixels without its palette), webp_lossless (OpenCV's libwebp);
- the codings the edge can choose (`mask_coding`: lossless, near_lossless, reduced), exactly
  as the segmenter sends them and the robot decodes them (stac_codec.mask_wire);
- measured alternatives that are not wire modes, kept to show why: near_lossless_2 (boundaries
  may move 2 px), reduced_guided (reduced, upsampled with the robot's own frame as guide:
  joint-bilateral weights), conditional (lossless, coded against the previous mask, which both
  ends would hold), conditional_flow (the same against the previous mask moved to this frame
  by dense flow between the two frames: what any motion-compensated prediction, e.g. one from
  the H.264 motion vectors both ends can read, could at best be) and near_lossless_conditional
  (near-lossless against the previous decoded mask: the edge keeps the previous boundaries
  where it may, a temporal stabiliser).

Per coder: bytes_per_mask (mean), ratio_vs_rle_deflate, agreement_miou (the decoded masks
against the edge's, one confusion matrix over all masks), encode_ms and decode_ms (median per
mask, one thread), lossless (every decoded mask equal to the edge's).

What a lossy coding costs the robot is measured too, on clips (`late_masks`): each wire
coding's decoded mask of frame s, carried by the robot's own flow code (`FrameFlow` and
`MaskPropagator`, as `RobotLoop` does for a mask that arrives `--late-frames` frames after its
source frame) to frame s + late-frames, against the edge's mask of that frame: the robot's
timely mIoU for masks that late, without the timing noise of a live run. The same for an edge
that sends only every n-th near_lossless mask (`near_lossless_every_nth_mask`: the robot then
carries the newest mask it got, n - 1 segmented frames older at times): fewer bits for staler
masks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from stac_codec import _mask_coder
from stac_codec.mask_wire import (
    MASK_CODINGS,
    MaskCoding,
    MaskSender,
    decode_mask,
    decode_mask_or_keep,
    encode_mask,
    movable_classes,
)
from stac_edge_segmenter.loading import load_model
from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_encoder.frame_flow import FlowConfig, FrameFlow
from stac_encoder.frame_sources import read_frames
from stac_encoder.mask_warp import MaskPropagator
from stac_eval.progress import progress_bar
from stac_training.camvid import read_image_rgb

BASELINE = "rle_deflate"


LATE_CODERS = ("lossless", "near_lossless", "reduced", "near_lossless_gated")
GATED = "near_lossless_gated"  # a keep instead of a mask that agrees with the last one sent
SEND_EVERY_NTH = (2, 3)  # late_masks: near_lossless masks, only every n-th one sent


@dataclass
class Masked:
    """One segmented frame: its index in the clip, the RGB frame and the edge's class ids."""

    index: int
    image: np.ndarray
    class_ids: np.ndarray


@dataclass
class Coder:
    """encode(mask, state) -> wire bytes; decode(data, state) -> what the robot gets. `state`
    carries what both ends hold across masks (the previous mask) and the robot's frame."""

    name: str
    note: str
    encode: Callable[[Masked, dict], bytes]
    decode: Callable[[bytes, Masked, dict], np.ndarray]


@dataclass
class Tally:
    sizes: list[int] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    exact: bool = True
    kept: int = 0  # keeps sent instead of masks (near_lossless_gated)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, help="clip whose masks are coded")
    parser.add_argument(
        "--images", type=Path, help="folder of images (e.g. CamVid val) whose masks are coded"
    )
    parser.add_argument(
        "--every", type=int, default=2, help="code every N-th frame of the clip (the edge's pace)"
    )
    parser.add_argument(
        "--max-frames", type=int, default=0, help="frames of the clip read (0: all)"
    )
    parser.add_argument(
        "--late-frames",
        type=int,
        default=4,
        help="clips: score the masks the robot holds this many frames after their source "
        "(a multiple of --every; 0: skip)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the model)")


def run(args: argparse.Namespace) -> dict:
    if args.video is None and args.images is None:
        raise SystemExit("stac-bench masks: give --video FILE and/or --images DIR")
    if args.every < 1:
        raise SystemExit("stac-bench masks: --every must be >= 1")
    if args.late_frames < 0 or args.late_frames % args.every:
        raise SystemExit("stac-bench masks: --late-frames must be a multiple of --every")
    torch.set_num_threads(args.threads)
    model = load_model()
    result: dict = {}
    if args.video is not None:
        late = LateMasks(args.late_frames, model.num_classes) if args.late_frames else None
        frames = read_frames(str(args.video), max_frames=args.max_frames)
        masks = _segmented(model, ((f.index, f.image) for f in frames), args.every, late)
        result = {"source": {"video": str(args.video), "every": args.every}}
        result.update(measure(masks, model.num_classes, late))
    if args.images is not None:
        images = measure(_segmented(model, _image_frames(args.images)), model.num_classes)
        images["source"] = {"images": str(args.images)}
        if result:
            result["images"] = images
        else:
            result = images
    print_table(result)
    return result


def measure(masks: Iterator[Masked], num_classes: int, late: LateMasks | None = None) -> dict:
    """Every coder over the masks: the JSON `coders` section and what was measured on (and
    the `late_masks` section when `late` is given)."""
    coders = all_coders()
    tallies = {coder.name: Tally() for coder in coders}
    confusions = {coder.name: ConfusionMatrix(num_classes) for coder in coders}
    states: dict[str, dict] = {coder.name: {} for coder in coders}
    count, size = 0, None
    for masked in masks:
        count += 1
        size = masked.class_ids.shape[::-1]
        decoded_by_coder = {}
        for coder in coders:
            tally, state = tallies[coder.name], states[coder.name]
            started = time.perf_counter()
            data = coder.encode(masked, state)
            tally.encode_ms.append(1e3 * (time.perf_counter() - started))
            started = time.perf_counter()
            decoded = coder.decode(data, masked, state)
            tally.decode_ms.append(1e3 * (time.perf_counter() - started))
            tally.sizes.append(len(data))
            tally.exact &= bool(np.array_equal(decoded, masked.class_ids))
            confusions[coder.name].update(masked.class_ids, decoded)
            tally.kept += bool(state.get("kept"))
            decoded_by_coder[coder.name] = None if state.get("kept") else decoded
        if late is not None:
            late.segmented(masked.index, masked.class_ids, decoded_by_coder)
    if count == 0:
        raise SystemExit("stac-bench masks: no frames read")
    baseline = statistics.fmean(tallies[BASELINE].sizes)
    table = {}
    for coder in coders:
        tally = tallies[coder.name]
        mean_bytes = statistics.fmean(tally.sizes)
        table[coder.name] = {
            "bytes_per_mask": round(mean_bytes, 1),
            "ratio_vs_rle_deflate": round(baseline / mean_bytes, 3),
            "agreement_miou": round(confusions[coder.name].mean_iou(), 4),
            "encode_ms": round(statistics.median(tally.encode_ms), 3),
            "decode_ms": round(statistics.median(tally.decode_ms), 3),
            "lossless": tally.exact,
        }
        if coder.name == GATED:
            table[coder.name]["kept_share"] = round(tally.kept / count, 4)
    section = {
        "coders": table,
        "masks": count,
        "mask_size": list(size),
        "coder_notes": {coder.name: coder.note for coder in coders},
    }
    if late is not None:
        section["late_masks"] = late.summary()
    return section


class LateMasks:
    """Each wire coding's decoded mask of frame s, carried to frame s + delay by the robot's
    flow code (a direct DIS flow from the frame it arrives at, as RobotLoop anchors a late
    mask), scored against the edge's mask of that frame; and the same where the edge sends
    only every n-th near_lossless mask (the robot carries the newest it got)."""

    def __init__(self, delay_frames: int, num_classes: int) -> None:
        self.delay_frames = delay_frames
        self.flow: FrameFlow | None = None
        self.propagators: dict[str, MaskPropagator] = {}
        self.held: dict[int, tuple[int, dict[str, np.ndarray]]] = {}  # index: (ordinal, masks)
        self.segmented_count = 0
        self.sent_every = {name: (name, 1) for name in LATE_CODERS}
        self.sent_every.update({f"every_{n}": ("near_lossless", n) for n in SEND_EVERY_NTH})
        self.confusions = {name: ConfusionMatrix(num_classes) for name in self.sent_every}

    def frame(self, index: int, image: np.ndarray) -> None:
        """Every frame of the clip, in order (the robot's flow sees them all)."""
        if self.flow is None:
            height, width = image.shape[:2]
            self.flow = FrameFlow(width, height)
            self.propagators = {name: MaskPropagator(self.flow) for name in self.sent_every}
        self.flow.add_frame(index, image)

    def segmented(self, index: int, class_ids: np.ndarray, decoded: dict) -> None:
        """A segmented frame (after `frame` with the same index)."""
        source = index - self.delay_frames
        late = self.held.pop(source, None)
        if late is not None:
            ordinal, masks = late
            for name, (coding, every) in self.sent_every.items():
                if ordinal % every == 0 and masks[coding] is not None:  # None: a keep
                    self.propagators[name].set_mask(masks[coding], source)
                self.confusions[name].update(class_ids, self.propagators[name].current().class_ids)
        self.held[index] = (self.segmented_count, {name: decoded[name] for name in LATE_CODERS})
        self.segmented_count += 1
        for old in [held for held in self.held if held < source]:
            del self.held[old]

    def summary(self) -> dict:
        miou = {name: round(matrix.mean_iou(), 4) for name, matrix in self.confusions.items()}
        return {
            "delay_frames": self.delay_frames,
            "miou_vs_edge_mask_then": {name: miou[name] for name in LATE_CODERS},
            "near_lossless_every_nth_mask": {str(n): miou[f"every_{n}"] for n in SEND_EVERY_NTH},
        }


def all_coders() -> list[Coder]:
    near_2 = MaskCoding("near_lossless_2", tolerance_px=2)
    return [
        Coder(BASELINE, "earlier wire form (v1): runs + deflate", *_wire(MASK_CODINGS[BASELINE])),
        Coder("png", "8-bit PNG of the ids, level 9 (OpenCV)", _png_encode, _image_decode),
        Coder("webp_lossless", "WebP lossless (OpenCV)", _webp_encode, _image_decode),
        *(
            Coder(name, f"mask_coding {name} (wire v2)", *_wire(MASK_CODINGS[name]))
            for name in ("lossless", "near_lossless", "reduced")
        ),
        Coder(
            GATED,
            "mask_coding near_lossless_gated (wire v2): a keep (15 B) instead of a mask that "
            "agrees with the last one sent; bytes per segmented frame, agreement of the mask "
            "the robot then holds (not moved: late_masks has it carried by the robot's flow)",
            _gated_encode,
            _gated_decode,
        ),
        Coder("near_lossless_2", "not a wire mode: tolerance 2 px", *_wire(near_2)),
        Coder(
            "reduced_guided",
            "not a wire mode: reduced, upsampled with the robot's frame as guide",
            _wire(MASK_CODINGS["reduced"])[0],
            _guided_decode,
        ),
        Coder(
            "conditional",
            "not a wire mode: lossless against the previous mask (both ends hold it)",
            _conditional_encode(0),
            _conditional_decode,
        ),
        Coder(
            "conditional_flow",
            "not a wire mode: lossless against the previous mask moved to this frame by dense "
            "flow (a bound on motion-compensated prediction; no robot holds it exactly)",
            _flow_conditional_encode,
            _conditional_decode,
        ),
        Coder(
            "near_lossless_conditional",
            "not a wire mode: near_lossless against the previous decoded mask",
            _conditional_encode(MASK_CODINGS["near_lossless"].tolerance_px),
            _conditional_decode,
        ),
    ]


def _wire(coding: MaskCoding):
    def encode(masked: Masked, state: dict) -> bytes:
        return encode_mask(masked.class_ids, coding)  # what the segmenter does

    def decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
        return decode_mask(data, max_pixels=masked.class_ids.size)

    return encode, decode


def _gated_encode(masked: Masked, state: dict) -> bytes:
    if "sender" not in state:
        state["sender"] = MaskSender(MASK_CODINGS[GATED])
    return state["sender"].encode(masked.class_ids)


def _gated_decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
    decoded = decode_mask_or_keep(data, max_pixels=masked.class_ids.size)
    state["kept"] = decoded is None
    if decoded is not None:
        state["held"] = decoded
    if "held" not in state:
        raise RuntimeError("a keep before any mask")
    return state["held"]


def _png_encode(masked: Masked, state: dict) -> bytes:
    return _imencode(".png", masked.class_ids, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _webp_encode(masked: Masked, state: dict) -> bytes:
    return _imencode(".webp", masked.class_ids, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless


def _imencode(extension: str, class_ids: np.ndarray, options: list[int]) -> bytes:
    ok, data = cv2.imencode(extension, class_ids, options)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a mask as {extension}")
    return data.tobytes()


def _image_decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
    ids = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return ids if ids.ndim == 2 else ids[..., 0]


def _guided_decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
    """The reduced mask upsampled with the frame (as the robot holds it) as guide."""
    return decode_mask(data, max_pixels=masked.class_ids.size, guide=masked.image)


def _conditional_encode(tolerance_px: int):
    share = MASK_CODINGS["near_lossless"].protected_share

    def encode(masked: Masked, state: dict) -> bytes:
        mask = np.ascontiguousarray(masked.class_ids)
        height, width = mask.shape
        movable = movable_classes(mask, share) if tolerance_px else 0
        state["prediction"] = state.get("held")
        stream, state["sent"] = _mask_coder.encode(
            mask, width, height, state["prediction"], tolerance_px, movable, 0.8
        )
        return stream

    return encode


def _flow_conditional_encode(masked: Masked, state: dict) -> bytes:
    """Lossless against the previous mask carried to this frame by the robot's flow code at
    full size (a direct DIS flow, the finer preset, between the two frames as they are)."""
    mask = np.ascontiguousarray(masked.class_ids)
    height, width = mask.shape
    if "propagator" not in state:
        flow = FrameFlow(width, height, FlowConfig(flow_width_px=0))
        state["propagator"], state["seq"] = MaskPropagator(flow), 0
    propagator = state["propagator"]
    state["seq"] += 1  # the segmented frames as one chain: a flow between each two
    propagator.flow.add_frame(state["seq"], masked.image)
    prediction = None
    if "held" in state:
        propagator.set_mask(state["held"], state["seq"] - 1)
        prediction = np.ascontiguousarray(propagator.current().class_ids)
    state["prediction"] = prediction
    stream, state["sent"] = _mask_coder.encode(mask, width, height, prediction, 0, 0, 0.0)
    return stream


def _conditional_decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
    height, width = masked.class_ids.shape
    decoded = _mask_coder.decode(data, width, height, state["prediction"])
    if decoded != state["sent"]:
        raise RuntimeError("the conditional decoder disagrees with its encoder")
    state["held"] = np.frombuffer(decoded, np.uint8).reshape(height, width)
    return state["held"]


def _image_frames(folder: Path) -> Iterator[tuple[int, np.ndarray]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"stac-bench masks: no images in {folder}")
    for index, path in enumerate(paths):
        yield index, read_image_rgb(path)


def _segmented(
    model, frames: Iterator[tuple[int, np.ndarray]], every: int = 1, late: LateMasks | None = None
) -> Iterator[Masked]:
    """Every `every`-th frame segmented; every frame shown to `late` (the robot's flow)."""
    with progress_bar(desc="masks", unit="frame") as bar:
        for index, image in frames:
            if late is not None:
                late.frame(index, image)
            if index % every:
                continue
            class_ids = model.predict(image, with_probabilities=False).class_ids[0]
            bar.update(1)
            yield Masked(index, image, class_ids)


def print_table(result: dict) -> None:
    sections = [("", result)] + ([("images: ", result["images"])] if "images" in result else [])
    for prefix, section in sections:
        width, height = section["mask_size"]
        print(f"{prefix}{section['masks']} masks of {width}x{height}")
        print(
            f"{'coder':28s} {'bytes':>8s} {'vs rle':>7s} {'agree':>7s} {'enc ms':>7s} "
            f"{'dec ms':>7s} lossless"
        )
        for name, row in section["coders"].items():
            print(
                f"{name:28s} {row['bytes_per_mask']:8.0f} {row['ratio_vs_rle_deflate']:7.2f} "
                f"{row['agreement_miou']:7.4f} {row['encode_ms']:7.2f} {row['decode_ms']:7.2f} "
                f"{row['lossless']}"
            )
        if "late_masks" in section:
            late = section["late_masks"]
            scores = ", ".join(f"{k} {v}" for k, v in late["miou_vs_edge_mask_then"].items())
            print(f"masks carried {late['delay_frames']} frames by the robot's flow: {scores}")
            fewer = ", ".join(
                f"every {n}: {v}" for n, v in late["near_lossless_every_nth_mask"].items()
            )
            print(f"  near_lossless, only every n-th mask sent: {fewer}")
