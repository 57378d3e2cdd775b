"""`stac-bench masks`: what a mask sent back to the robot costs in each coding, and how close
the robot's decoded mask stays to the edge's.

The shipped model segments the frames of a clip (every `--every`-th, as the edge segments the
newest frame it can: about every second frame of vtest.avi in the demo) or of a folder of
images (CamVid val); each full-resolution mask goes through every coder:

- baselines: rle_deflate (the earlier wire form: runs + deflate), png (the ids as an 8-bit
  PNG, level 9: a palette PNG's pixels without its palette), webp_lossless (OpenCV's libwebp);
- the codings the edge can choose (`mask_coding`: lossless, near_lossless, reduced,
  near_lossless_gated, near_lossless_ref), exactly as the segmenter sends them and the robot
  decodes them (stac_codec.mask_wire: MaskSender, MaskReceiver; near_lossless_ref's key
  masks every `--key-interval` masks; a folder of images is no sequence: each mask alone);
- measured alternatives that are not wire modes, kept to show why: near_lossless_2 (boundaries
  may move 2 px), reduced_guided (reduced, upsampled with the robot's own frame as guide:
  joint-bilateral weights), conditional (lossless, coded against the previous mask, which both
  ends would hold), conditional_flow (the same against the previous mask moved to this frame
  by dense flow between the two frames: what any motion-compensated prediction, e.g. one from
  the H.264 motion vectors both ends can read, could at best be) and near_lossless_conditional
  (near-lossless against the previous decoded mask: the edge keeps the previous boundaries
  where it may, a temporal stabiliser); lossless_ref and near_lossless_2_ref
  (near_lossless_ref's reference context without moved boundaries, and with 2 px);
  logit_field_q* (the network's stride-4 logits instead of the mask: the edge's mask is the
  argmax of those logits resized to the frame, so the robot could rebuild it from the low-res
  argmax map plus, where an output pixel's bilinear support mixes classes, the margins of the
  classes present there, quantized with step q: see `LogitField`; the robot's side through
  stac_codec.logit_labels).

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
masks. And for a robot that misses every n-th mask (`robot_misses_every_nth_mask`: its
keep-last queue dropped it; the edge cannot know): near_lossless loses only that mask,
near_lossless_ref also has the robot refuse the masks coded against it until the next key
mask (the refusals counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from stac_codec import _mask_coder
from stac_codec.logit_labels import LogitChain, class_ids_from_logits
from stac_codec.mask_wire import (
    FLAG_REFERENCED,
    FLAGS_OFFSET,
    MASK_CODINGS,
    MaskCoding,
    MaskReceiver,
    MaskReferenceError,
    MaskSender,
    decode_mask,
    decode_mask_or_keep,
    encode_mask,
    is_numbered,
    mask_coding,
    movable_classes,
)
from stac_edge_segmenter.loading import load_model
from stac_edge_segmenter.metrics import ConfusionMatrix
from stac_edge_segmenter.model import OUTPUT_STRIDE
from stac_encoder.frame_flow import FlowConfig, FrameFlow
from stac_encoder.frame_sources import read_frames
from stac_encoder.mask_warp import MaskPropagator
from stac_eval.progress import progress_bar
from stac_training.camvid import read_image_rgb

BASELINE = "rle_deflate"


GATED = "near_lossless_gated"  # a keep instead of a mask that agrees with the last one sent
REFERENCED = "near_lossless_ref"  # numbered, coded with the last mask sent as context
KEY_REFERENCED = "near_lossless_keyref"  # ... with the last key mask as context
REFERENCED_CODINGS = (REFERENCED, KEY_REFERENCED)
LATE_CODERS = ("lossless", "near_lossless", "reduced", GATED, *REFERENCED_CODINGS)
SEND_EVERY_NTH = (2, 3)  # late_masks: near_lossless masks, only every n-th one sent
DROP_EVERY = (10, 5)  # late_masks: the robot misses every n-th mask (its keep-last queue)


@dataclass
class Masked:
    """One segmented frame: its index in the clip, the RGB frame and the edge's class ids;
    logits: the network's low-res logits (KxHlxWl) and the chain that resizes them to the
    mask, for the logit_field coders (None where the network has no LiteFPN head)."""

    index: int
    image: np.ndarray
    class_ids: np.ndarray
    logits: np.ndarray | None = None
    chain: LogitChain | None = None


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
    referenced: int = 0  # masks coded against the previous one (the *_ref codings)


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
    parser.add_argument(
        "--key-interval",
        type=int,
        default=MASK_CODINGS[REFERENCED].key_interval,
        help="near_lossless_ref: every this many masks one is coded alone",
    )


def run(args: argparse.Namespace) -> dict:
    if args.video is None and args.images is None:
        raise SystemExit("stac-bench masks: give --video FILE and/or --images DIR")
    if args.every < 1:
        raise SystemExit("stac-bench masks: --every must be >= 1")
    if args.late_frames < 0 or args.late_frames % args.every:
        raise SystemExit("stac-bench masks: --late-frames must be a multiple of --every")
    if args.key_interval < 1:
        raise SystemExit("stac-bench masks: --key-interval must be >= 1")
    torch.set_num_threads(args.threads)
    model = load_model()
    result: dict = {}
    key_interval = args.key_interval
    if args.video is not None:
        late = (
            LateMasks(args.late_frames, model.num_classes, key_interval)
            if args.late_frames
            else None
        )
        frames = read_frames(str(args.video), max_frames=args.max_frames)
        masks = _segmented(model, ((f.index, f.image) for f in frames), args.every, late)
        result = {"source": {"video": str(args.video), "every": args.every}}
        result.update(measure(masks, model.num_classes, late, key_interval))
        result["source"]["key_interval"] = key_interval
    if args.images is not None:
        # separate images: no temporal reference, every mask coded alone
        images = measure(_segmented(model, _image_frames(args.images)), model.num_classes, None, 1)
        images["source"] = {"images": str(args.images)}
        if result:
            result["images"] = images
        else:
            result = images
    print_table(result)
    return result


def measure(
    masks: Iterator[Masked],
    num_classes: int,
    late: LateMasks | None = None,
    key_interval: int = MASK_CODINGS[REFERENCED].key_interval,
) -> dict:
    """Every coder over the masks: the JSON `coders` section and what was measured on (and
    the `late_masks` section when `late` is given). key_interval: the referenced codings'
    (1: every mask coded alone, for images that are no sequence)."""
    coders = all_coders(key_interval)
    tallies = {coder.name: Tally() for coder in coders}
    confusions = {coder.name: ConfusionMatrix(num_classes) for coder in coders}
    states: dict[str, dict] = {coder.name: {} for coder in coders}
    count, size = 0, None
    for masked in masks:
        count += 1
        size = masked.class_ids.shape[::-1]
        decoded_by_coder, wire = {}, {}
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
            tally.referenced += bool(state.get("referenced"))
            decoded_by_coder[coder.name] = None if state.get("kept") else decoded
            wire[coder.name] = data
        if late is not None:
            late.segmented(
                masked.index,
                masked.class_ids,
                decoded_by_coder,
                {name: wire[name] for name in REFERENCED_CODINGS},
            )
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
        if "referenced" in states[coder.name]:  # a referenced coding
            table[coder.name]["referenced_share"] = round(tally.referenced / count, 4)
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
    mask), scored against the edge's mask of that frame; the same where the edge sends
    only every n-th near_lossless mask (the robot carries the newest it got); and where the
    robot misses every n-th mask (its keep-last queue dropped it): with near_lossless it
    loses that mask, with near_lossless_ref / keyref it also refuses the masks coded against
    it until the next key mask (its own MaskReceiver decodes the wire bytes)."""

    def __init__(self, delay_frames: int, num_classes: int, key_interval: int) -> None:
        self.delay_frames = delay_frames
        self.key_interval = key_interval
        self.flow: FrameFlow | None = None
        self.propagators: dict[str, MaskPropagator] = {}
        # index: (ordinal, masks, the referenced codings' wire bytes)
        self.held: dict[int, tuple[int, dict[str, np.ndarray], dict[str, bytes]]] = {}
        self.segmented_count = 0
        self.sent_every = {name: (name, 1) for name in LATE_CODERS}
        self.sent_every.update({f"every_{n}": ("near_lossless", n) for n in SEND_EVERY_NTH})
        self.drops = [(n, name) for n in DROP_EVERY for name in REFERENCED_CODINGS]
        for n in DROP_EVERY:
            self.sent_every[f"drop_{n}"] = ("near_lossless", 1)
            for name in REFERENCED_CODINGS:
                self.sent_every[f"drop_{n}_{name}"] = (name, 1)
        self.receivers = {drop: MaskReceiver() for drop in self.drops}
        self.refused = dict.fromkeys(self.drops, 0)
        self.dropped = dict.fromkeys(DROP_EVERY, 0)
        self.confusions = {name: ConfusionMatrix(num_classes) for name in self.sent_every}

    def frame(self, index: int, image: np.ndarray) -> None:
        """Every frame of the clip, in order (the robot's flow sees them all)."""
        if self.flow is None:
            height, width = image.shape[:2]
            self.flow = FrameFlow(width, height)
            self.propagators = {name: MaskPropagator(self.flow) for name in self.sent_every}
        self.flow.add_frame(index, image)

    def segmented(
        self, index: int, class_ids: np.ndarray, decoded: dict, referenced: dict[str, bytes]
    ) -> None:
        """A segmented frame (after `frame` with the same index); `referenced`: its wire
        bytes in each referenced coding."""
        source = index - self.delay_frames
        late = self.held.pop(source, None)
        if late is not None:
            ordinal, masks, data = late
            arrived = self._arrivals(ordinal, masks, data)
            for name, (coding, every) in self.sent_every.items():
                mask = arrived.get(name, masks[coding])
                if ordinal % every == 0 and mask is not None:  # None: a keep, or missed
                    self.propagators[name].set_mask(mask, source)
                self.confusions[name].update(class_ids, self.propagators[name].current().class_ids)
        self.held[index] = (
            self.segmented_count,
            {name: decoded[name] for name in LATE_CODERS},
            referenced,
        )
        self.segmented_count += 1
        for old in [held for held in self.held if held < source]:
            del self.held[old]

    def _arrivals(self, ordinal: int, masks: dict, data: dict[str, bytes]) -> dict:
        """What the robots that miss every n-th mask adopt of this one (None: nothing)."""
        arrived = {}
        for n in DROP_EVERY:
            missed = ordinal % n == n - 1
            self.dropped[n] += missed
            if missed:
                arrived[f"drop_{n}"] = None
            for name in REFERENCED_CODINGS:
                if missed:
                    arrived[f"drop_{n}_{name}"] = None
                    continue
                try:
                    arrived[f"drop_{n}_{name}"] = self.receivers[n, name].decode(
                        data[name], max_pixels=masks[name].size
                    )
                except MaskReferenceError:
                    self.refused[n, name] += 1
                    arrived[f"drop_{n}_{name}"] = None
        return arrived

    def summary(self) -> dict:
        miou = {name: round(matrix.mean_iou(), 4) for name, matrix in self.confusions.items()}
        return {
            "delay_frames": self.delay_frames,
            "miou_vs_edge_mask_then": {name: miou[name] for name in LATE_CODERS},
            "near_lossless_every_nth_mask": {str(n): miou[f"every_{n}"] for n in SEND_EVERY_NTH},
            "robot_misses_every_nth_mask": {
                str(n): {
                    "key_interval": self.key_interval,
                    "missed": self.dropped[n],
                    "near_lossless": miou[f"drop_{n}"],
                    **{name: miou[f"drop_{n}_{name}"] for name in REFERENCED_CODINGS},
                    **{f"{name}_refused": self.refused[n, name] for name in REFERENCED_CODINGS},
                }
                for n in DROP_EVERY
            },
        }


def all_coders(key_interval: int = MASK_CODINGS[REFERENCED].key_interval) -> list[Coder]:
    near_2 = MaskCoding("near_lossless_2", tolerance_px=2)
    referenced = mask_coding(REFERENCED, key_interval=key_interval)
    key_referenced = mask_coding(KEY_REFERENCED, key_interval=key_interval)
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
        Coder(
            REFERENCED,
            f"mask_coding {REFERENCED} (wire v2, mode 4): near_lossless, each mask coded alone "
            "or with the last one sent as context, whichever is smaller; every "
            f"{key_interval}-th alone (a key mask)",
            *_referenced(referenced),
        ),
        Coder(
            KEY_REFERENCED,
            f"mask_coding {KEY_REFERENCED} (wire v2, mode 4): as {REFERENCED}, but with the "
            "last key mask as context (a missed mask costs the robot no other, unless a key)",
            *_referenced(key_referenced),
        ),
        Coder("near_lossless_2", "not a wire mode: tolerance 2 px", *_wire(near_2)),
        Coder(
            "lossless_ref",
            "not a wire mode: near_lossless_ref without moved boundaries",
            *_referenced(replace(referenced, name="lossless_ref", tolerance_px=0)),
        ),
        Coder(
            "near_lossless_2_ref",
            "not a wire mode: near_lossless_ref with tolerance 2 px",
            *_referenced(replace(referenced, name="near_lossless_2_ref", tolerance_px=2)),
        ),
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
        *(
            Coder(
                f"logit_field_q{step:g}",
                f"not a wire mode: the low-res argmax map (context-coded, against the previous "
                f"one where smaller) and, where an output pixel's support mixes classes, the "
                f"margins below the local max of the classes present, step {step:g}, up to "
                f"{LOGIT_FIELD_CAP:g} (deflated); the robot resizes that field as the edge does",
                *LogitField(step).coder(),
            )
            for step in LOGIT_FIELD_STEPS
        ),
    ]


def _wire(coding: MaskCoding):
    def encode(masked: Masked, state: dict) -> bytes:
        return encode_mask(masked.class_ids, coding)  # what the segmenter does

    def decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
        return decode_mask(data, max_pixels=masked.class_ids.size)

    return encode, decode


def _referenced(coding: MaskCoding):
    """A MaskSender and a MaskReceiver in `coding` (state: whether the mask was coded against
    the previous one)."""

    def encode(masked: Masked, state: dict) -> bytes:
        if "sender" not in state:
            state["sender"], state["receiver"] = MaskSender(coding), MaskReceiver()
        data = state["sender"].encode(masked.class_ids)
        state["referenced"] = is_numbered(data) and bool(data[FLAGS_OFFSET] & FLAG_REFERENCED)
        return data

    def decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
        return state["receiver"].decode(data, max_pixels=masked.class_ids.size)

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


LOGIT_FIELD_STEPS = (0.25, 1.0)  # quantization steps measured (logits)
LOGIT_FIELD_CAP = 8.0  # margins at or beyond this travel as "far" and are rebuilt as this


@dataclass(frozen=True)
class LogitField:
    """Masks as the network's low-res logits, with what the robot cannot tell apart dropped.

    The edge's mask is argmax over classes of a resize chain (`LogitChain`: bilinear to the
    padded working size, crop, bilinear to the frame) of KxHlxWl logits: each output pixel a
    convex combination of a few low-res pixels (its support). Where the support's argmaxes
    agree, so does the output pixel, whatever the values; subtracting a low-res pixel's own
    max from all its classes changes no output argmax. So the edge sends the low-res argmax
    map and, for each class present in the support of a mixed output pixel, that class's
    margin below the max at each support pixel (none at the pixel whose argmax it is),
    quantized to floor(margin / step), capped at `LOGIT_FIELD_CAP`; both ends derive which
    margins travel from the argmax map alone (`_needed`). The robot rebuilds the field (0 at
    the argmax, the margin's bin centre where sent, minus the cap elsewhere) and takes its
    class ids through the chain (`class_ids_from_logits`)."""

    step: float

    def __post_init__(self) -> None:
        if not 0 < self._far < 256:
            raise ValueError(f"step {self.step}: a margin's bin must fit a byte")

    def coder(self):
        def encode(masked: Masked, state: dict) -> bytes:
            if masked.logits is None:
                raise RuntimeError("logit_field needs a network with a LiteFPN head")
            argmax = masked.logits.argmax(0).astype(np.uint8)
            height, width = argmax.shape
            stream, _ = _mask_coder.encode(argmax, width, height, None, 0, 0, 0.0)
            previous = state.get("argmax")
            referenced = previous is not None and previous.shape == argmax.shape
            if referenced:
                against, _ = _mask_coder.encode(argmax, width, height, None, 0, 0, 0.0, previous)
                referenced = len(against) < len(stream)
                stream = against if referenced else stream
            state["argmax"] = argmax
            needed = _needed(argmax, len(masked.logits), masked.chain)
            margins = masked.logits.max(0, keepdims=True) - masked.logits
            bins = np.minimum(np.floor(margins[needed] / self.step), self._far)
            values = zlib.compress(bins.astype(np.uint8).tobytes(), 9)
            return bytes([referenced]) + len(stream).to_bytes(4, "big") + stream + values

        def decode(data: bytes, masked: Masked, state: dict) -> np.ndarray:
            classes, (height, width) = len(masked.logits), masked.chain.low_shape  # sizes only
            size = int.from_bytes(data[1:5], "big")
            reference = (state["held"],) if data[0] else ()  # the robot's previous map
            argmax = np.frombuffer(
                _mask_coder.decode(data[5 : 5 + size], width, height, None, *reference), np.uint8
            ).reshape(height, width)
            state["held"] = argmax
            needed = _needed(argmax, classes, masked.chain)
            bins = np.frombuffer(zlib.decompress(data[5 + size :]), np.uint8).astype(np.float32)
            field = np.full((classes, height, width), -LOGIT_FIELD_CAP, np.float32)
            field[_one_hot(argmax, classes)] = 0.0
            field[needed] = np.where(bins >= self._far, -LOGIT_FIELD_CAP, -(bins + 0.5) * self.step)
            return class_ids_from_logits(field, masked.chain)

        return encode, decode

    @property
    def _far(self) -> int:
        return int(LOGIT_FIELD_CAP // self.step)


def _needed(argmax: np.ndarray, classes: int, chain: LogitChain) -> np.ndarray:
    """KxHlxWl: the margins that travel. An output pixel's support is a rectangle of low-res
    pixels (one window of rows, one of columns: the chain's taps); with each low-res pixel's
    class as a bit, a rectangle with more than one bit is mixed, and each of its pixels needs
    the margins of the classes in it but its own."""
    if classes > 64:
        raise ValueError(f"{classes} classes: the logit field holds at most 64")
    rows, row_index = _windows(chain.rows.taps())
    cols, col_index = _windows(chain.cols.taps())
    bits = np.left_shift(np.uint64(1), argmax.astype(np.uint64))
    present = _or_over(_or_over(bits, rows).T, cols).T  # per (row window, column window)
    mixed = np.where(present & (present - np.uint64(1)) != 0, present, np.uint64(0))
    wanted = _or_back(_or_back(mixed.T, cols, argmax.shape[1]).T, rows, argmax.shape[0])
    shifts = np.arange(classes, dtype=np.uint64)[:, None, None]
    return ((wanted[None] >> shifts) & np.uint64(1)).astype(bool) & ~_one_hot(argmax, classes)


def _windows(taps) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (start, count) supports of one axis, and each output index's."""
    pairs = np.stack([taps.start, taps.count], 1)
    windows, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return windows, inverse.reshape(-1)


def _or_over(bits: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Per window (rows of the result), the OR of `bits`' rows it covers."""
    out = np.zeros((len(windows), *bits.shape[1:]), bits.dtype)
    for offset in range(int(windows[:, 1].max())):
        covers = windows[:, 1] > offset
        out[covers] |= bits[windows[covers, 0] + offset]
    return out


def _or_back(values: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """The transpose of `_or_over`: per row of `size`, the OR of the windows covering it."""
    out = np.zeros((size, *values.shape[1:]), values.dtype)
    for offset in range(int(windows[:, 1].max())):
        covers = windows[:, 1] > offset
        np.bitwise_or.at(out, windows[covers, 0] + offset, values[covers])
    return out


def _one_hot(argmax: np.ndarray, classes: int) -> np.ndarray:
    return np.arange(classes)[:, None, None] == argmax[None]


def logit_chain(low: tuple[int, int], working: tuple[int, int], frame: tuple[int, int]):
    """The shipped model's resize chain from (height, width) logits: to the working size
    (width, height) padded to the network's stride, crop, to the frame (height, width)
    (`SegmentationModel.logits`, `LiteFPN.forward`)."""
    work_width, work_height = working
    padded = (-(-work_height // OUTPUT_STRIDE) * OUTPUT_STRIDE,
              -(-work_width // OUTPUT_STRIDE) * OUTPUT_STRIDE)  # fmt: skip
    return LogitChain.of(low, padded, (work_height, work_width), frame)


def _image_frames(folder: Path) -> Iterator[tuple[int, np.ndarray]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"stac-bench masks: no images in {folder}")
    for index, path in enumerate(paths):
        yield index, read_image_rgb(path)


def _segmented(
    model, frames: Iterator[tuple[int, np.ndarray]], every: int = 1, late: LateMasks | None = None
) -> Iterator[Masked]:
    """Every `every`-th frame segmented; every frame shown to `late` (the robot's flow).
    A LiteFPN network's head output (its stride-4 logits) is kept for the logit_field coders."""
    head = getattr(model.network, "head", None)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, i, out: captured.append(out)) if head else None
    try:
        with progress_bar(desc="masks", unit="frame") as bar:
            for index, image in frames:
                if late is not None:
                    late.frame(index, image)
                if index % every:
                    continue
                captured.clear()
                class_ids = model.predict(image, with_probabilities=False).class_ids[0]
                bar.update(1)
                logits = chain = None
                if captured:
                    logits = captured[0][0].float().cpu().numpy()
                    working = model.spec.input_size or image.shape[1::-1]
                    chain = logit_chain(logits.shape[1:], working, class_ids.shape)
                yield Masked(index, image, class_ids, logits, chain)
    finally:
        if hook is not None:
            hook.remove()


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
            for n, row in late["robot_misses_every_nth_mask"].items():
                refs = ", ".join(
                    f"{name} {row[name]} ({row[name + '_refused']} more refused)"
                    for name in REFERENCED_CODINGS
                )
                print(
                    f"  the robot misses every {n}th mask ({row['missed']}): near_lossless "
                    f"{row['near_lossless']}, {refs}; key masks every {row['key_interval']}"
                )
