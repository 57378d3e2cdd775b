"""`stac-bench keyframe`: keyframe mode's accuracy ceiling, lever by lever, on one clip.

Keyframe mode's best timely mIoU (the robot's mask of every camera frame against the model on
that raw frame) is set by how old the masks are when they arrive and how well the robot
carries them to later frames. Two parts measure the levers (docs/keyframe_mode.md has the
results and the reasons):

1. `propagation` (no codec, no link, no edge): the model's own mask of raw frame s (the pseudo
   ground truth, so that only carrying is measured) reaches the robot at frame s + L, one
   every P frames (--schedules P:L,...; the robot's flow, history and anchor settings as the
   node's). Each way of carrying masks is scored at every frame after the first arrivals:
   - `ids`: the robot's own `MaskPropagator` (class ids, nearest neighbour, one direct flow
     per arrival, then per-frame composition);
   - `ids_flow480`: the same with the flow at 480 px;
   - `ids_flow_full`: the same with the flow at the frame's full size, DIS `medium` for the
     per-frame flow as for the direct one (the most the robot's flow could do here);
   - `soft`: the model's class probabilities at a quarter of the frame size (what a soft
     mask would carry), warped bilinearly on the flow grid, upsampled, argmax;
   - `soft_fused`, `ids_fused`: the state carried so far and the newest mask (probabilities,
     or ids one-hot at the same resolution) averaged at its arrival, the newest with weight
     --fuse-weight (temporal fusion of a late mask with the carried state);
   - `vote3`: the majority of the three newest masks, each warped by the robot (the newest
     where all three differ);
   - `fb_check`: a forward-backward check of the direct flow at each arrival (failing where
     |b(p) + f(p + b(p))| exceeds --fb-threshold-px flow pixels + 5 % of |b|); those points
     read the mask where the nearest passing point does (occlusion handling).
2. `system`: the replay's event simulation (`PointReplay`, as `stac-replay run`) at --crf and
   stale 99 dB (a keyframe whenever the edge can take one): `stac_keyframe`,
   `uniform_keyframe` and `uniform` streaming with the shipped defaults, then with each kept
   lever off (keyframe_send_ahead, keyframe_pipeline, the edge's map_worker_nice at 0,
   drop_masks_at_cuts) and with the flow at 480 px; timely
   mIoU, kbit/s both ways, frames sent and the mean mask age. --splice VIDEO2 builds a clip
   with scene cuts first (50-frame segments of --video and VIDEO2 in turn, at --video's size
   and rate) and measures on it.
3. `lateness`: where the time from a frame's capture to the robot holding its mask goes
   (`replay.analysis.lateness_breakdown`: uplink serialisation at the link rate, queueing,
   the link's delays, the edge's wait and forward, the wait for the next camera frame) and
   the timely mIoU by the held mask's age, for `uniform` streaming and `stac_keyframe` at
   99 dB at --crf, with decoded mIoU beside (timely / decoded is issue 16's last target), on
   each of --links (the replay's link, and links whose round trip fits in fewer frames).

4. `presets`: what x264's analysis is worth to the model, apart from timing: every P-th frame
   of the clip (--preset-periods: 1 is streaming, 4 about keyframe mode's spacing at 30 dB)
   encoded as one P chain (one thread, uniform QP) at each of --preset-crfs with each of
   --presets; the model on the decoded frames against the model on the raw ones (decoded
   mIoU), BD-rate of each preset against the first at equal decoded mIoU, and the median
   encode time per frame (why keyframe mode's far keyframes get slow: `far_preset`).

Points of `system` and `lateness` are cached under --work-dir like stac-bench temporal's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

PROPAGATION_METHODS = (
    "ids",
    "ids_flow480",
    "ids_flow_full",
    "soft",
    "soft_fused",
    "ids_fused",
    "vote3",
    "fb_check",
)
SYSTEM_METHODS = ("stac_keyframe", "uniform_keyframe", "uniform")
LATENESS_METHODS = ("uniform", "stac_keyframe")
LATENESS_LINKS = (
    "rate=10mbit,delay=20ms,loss=0%,queue=30",  # stac-replay run's default
    "rate=10mbit,delay=5ms,loss=0%,queue=30",  # a round trip inside one frame at 25 fps
)
KEYFRAME_ONLY = ("send_ahead_off", "pipeline_off")  # variants of keyframe pacing alone
SOFT_FACTOR = 4  # soft masks at a quarter of the frame size (the model's own output stride)
SPLICE_SEGMENT_FRAMES = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stac_eval.bench_temporal import default_video

    parser.add_argument("--video", type=Path, default=default_video(), help="clip or rosbag2")
    parser.add_argument("--max-frames", type=int, default=0, help="first N frames (0: all)")
    parser.add_argument(
        "--parts",
        default="propagation,system",
        help="propagation, system, lateness and/or presets, comma-separated",
    )
    parser.add_argument(
        "--schedules",
        default="1:1,1:2,6:6",
        help="propagation: P:L pairs, a mask every P frames arriving L frames late",
    )
    parser.add_argument(
        "--methods",
        default=",".join(PROPAGATION_METHODS),
        help=f"propagation methods, a subset of {','.join(PROPAGATION_METHODS)}",
    )
    parser.add_argument("--fuse-weight", type=float, default=0.5, help="the newest mask's weight")
    parser.add_argument(
        "--fb-threshold-px", type=float, default=4.0, help="forward-backward check, flow px"
    )
    parser.add_argument("--crf", type=float, default=18.0, help="system: the CRF of every point")
    parser.add_argument(
        "--edge-ms", default="", help="system: MS or FORWARD_MS/SENSITIVITY_MS (else the profile)"
    )
    parser.add_argument(
        "--edge-profile", default="measured", help="system: measured, fast or a timing JSON"
    )
    parser.add_argument(
        "--robot-encode-ms",
        default="",
        help="system, lateness: the robot's x264 time per frame, MS or NEAR_MS/FAR_MS (else "
        "timed on the clip, cached), as stac-replay run's",
    )
    parser.add_argument(
        "--splice", type=Path, default=None, help="system: a second clip to cut into --video"
    )
    parser.add_argument(
        "--links",
        default=";".join(LATENESS_LINKS),
        help="lateness: links to run on, ';'-separated (stac-replay run's --link form)",
    )
    parser.add_argument(
        "--presets",
        default="veryfast,faster,medium",
        help="presets: x264 presets, the first the base",
    )
    parser.add_argument(
        "--preset-periods", default="1,4", help="presets: encode every P-th frame, P,..."
    )
    parser.add_argument("--preset-crfs", default="21,25,29,33", help="presets: CRFs")
    parser.add_argument("--work-dir", type=Path, default=None, help="cached points and clips")


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - {"propagation", "system", "lateness", "presets"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}")
    video = _spliced(args) if args.splice else args.video
    context = _context(args, video)
    result: dict = {
        "video": str(video),
        "frames": len(context.frames),
        "fps": context.fps,
        "frame_size": list(context.frames[0].image.shape[1::-1]),
    }
    if "propagation" in parts:
        result["propagation"] = _propagation(context, args)
    if "system" in parts:
        result["system"] = _system(context, args)
    if "lateness" in parts:
        result["lateness"] = _lateness(context, args)
    if "presets" in parts:
        result["presets"] = _presets(context, args)
    _print_table(result)
    return result


def _context(args: argparse.Namespace, video: Path):
    """stac-bench temporal's context (clip, pseudo ground truth, model, edge timing, link)."""
    from stac_eval.bench_temporal import _context as temporal_context
    from stac_eval.bench_temporal import add_arguments as temporal_arguments

    parser = argparse.ArgumentParser()
    temporal_arguments(parser)
    argv = ["--video", str(video), "--max-frames", str(args.max_frames)]
    argv += ["--edge-profile", args.edge_profile]
    if args.edge_ms:
        argv += ["--edge-ms", args.edge_ms]
    if args.robot_encode_ms:
        argv += ["--robot-encode-ms", args.robot_encode_ms]
    if args.work_dir:
        argv += ["--work-dir", str(args.work_dir / "points")]
    return temporal_context(parser.parse_args(argv))


def _spliced(args: argparse.Namespace) -> Path:
    """--video and --splice in 50-frame turns, at --video's size and rate (a clip with cuts)."""
    from stac_eval.replay.source import open_source

    work = args.work_dir or Path("/tmp/stac-bench-keyframe")
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"spliced_{args.video.stem}_{args.splice.stem}.mp4"
    if path.is_file():
        return path
    first = list(open_source(str(args.video)).frames(args.max_frames or 0))
    second = list(open_source(str(args.splice)).frames(len(first)))
    height, width = first[0].image.shape[:2]
    fps = (len(first) - 1) / max(first[-1].offset_s - first[0].offset_s, 1e-6)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for index in range(min(len(first), len(second))):
        source = first if index // SPLICE_SEGMENT_FRAMES % 2 == 0 else second
        image = cv2.resize(source[index].image, (width, height), interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# --- 1. propagation -------------------------------------------------------------------------


def _propagation(context, args: argparse.Namespace) -> dict:
    from stac_eval.progress import progress_bar

    methods = [method for method in args.methods.split(",") if method]
    unknown = set(methods) - set(PROPAGATION_METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}")
    truth = [context.truth.mask(frame.index) for frame in context.frames]
    soft = _soft_masks(context, args) if any(m.startswith("soft") for m in methods) else None
    schedules = [tuple(int(v) for v in item.split(":")) for item in args.schedules.split(",")]
    results = {}
    with progress_bar(total=len(schedules) * len(methods), desc="propagation") as bar:
        for period, latency in schedules:
            row = {}
            for method in methods:
                carrier = _carrier(method, context, args, soft)
                row[method] = round(_score(carrier, context, truth, period, latency), 4)
                bar.update(1)
            results[f"{period}:{latency}"] = row
    return {
        "how": "the model's mask of raw frame s reaches the robot at frame s + L, one every P "
        "frames (key P:L); timely mIoU of each way of carrying masks against the model on "
        "every raw frame from frame 2L + P on",
        "fuse_weight": args.fuse_weight,
        "fb_threshold_px": args.fb_threshold_px,
        "miou": results,
    }


def _score(carrier, context, truth: list, period: int, latency: int) -> float:
    from stac_edge_segmenter.metrics import mask_confusion, mean_iou

    classes = context.model.num_classes
    matrix = np.zeros((classes, classes + 1), np.int64)
    pending: list[tuple[int, int]] = []
    for position, frame in enumerate(context.frames):
        carrier.frame(position + 1, frame.image)
        if position % period == 0:
            pending.append((position + latency, position))
        while pending and pending[0][0] <= position:
            _, source = pending.pop(0)
            carrier.arrive(source)
        if position >= 2 * latency + period:
            matrix += mask_confusion(truth[position], carrier.current(), classes)
    return mean_iou(matrix)


def _soft_masks(context, args: argparse.Namespace) -> np.ndarray:
    """The model's class probabilities of every raw frame at 1/SOFT_FACTOR size (float16),
    cached beside the points."""
    from stac_eval.progress import progress_bar

    height, width = context.frames[0].image.shape[:2]
    size = (width // SOFT_FACTOR, height // SOFT_FACTOR)
    path = context.work_dir / f"soft_{context.key['source'][:16]}_{len(context.frames)}.npy"
    if path.is_file():
        return np.load(path)
    classes = context.model.num_classes
    soft = np.zeros((len(context.frames), classes, size[1], size[0]), np.float16)
    with progress_bar(total=len(context.frames), desc="soft masks") as bar:
        for position, frame in enumerate(context.frames):
            probabilities = context.model.predict(frame.image, batch_size=1).probabilities[0]
            for k in range(classes):
                soft[position, k] = cv2.resize(probabilities[k], size, interpolation=cv2.INTER_AREA)
            bar.update(1)
    np.save(path, soft)
    return soft


def _carrier(method: str, context, args: argparse.Namespace, soft):
    from stac_eval.temporal_maps import settings_for

    flow = settings_for(context).flow
    if method == "ids_flow480":
        flow = replace(flow, flow_width_px=480)
    if method == "ids_flow_full":
        flow = replace(flow, flow_width_px=0, preset="medium", anchor_preset="medium")
    truth = context.truth
    if method in ("ids", "ids_flow480", "ids_flow_full"):
        return _IdsCarrier(flow, truth, context.frames)
    if method == "vote3":
        return _VoteCarrier(flow, truth, context.frames)
    if method == "fb_check":
        return _CheckedCarrier(flow, truth, context.frames, args.fb_threshold_px)
    weight = args.fuse_weight if method.endswith("_fused") else 1.0
    return _SoftCarrier(flow, truth, context.frames, soft if method.startswith("soft") else None,
                        weight, context.model.num_classes)  # fmt: skip


class _IdsCarrier:
    """The robot's MaskPropagator over its own FrameFlow."""

    def __init__(self, flow_config, truth, frames) -> None:
        from stac_encoder.frame_flow import FrameFlow
        from stac_encoder.mask_warp import MaskPropagator

        height, width = frames[0].image.shape[:2]
        self.truth, self.frames = truth, frames
        self.flow = FrameFlow(width, height, flow_config)
        self.masks = MaskPropagator(self.flow)

    def frame(self, seq: int, image: np.ndarray) -> None:
        self.flow.add_frame(seq, image)

    def arrive(self, source: int) -> None:
        self.masks.set_mask(self.truth.mask(self.frames[source].index), source + 1)

    def current(self) -> np.ndarray | None:
        mask = self.masks.current()
        return None if mask is None else mask.class_ids


class _VoteCarrier(_IdsCarrier):
    """The three newest masks, each warped; their majority (the newest where all differ)."""

    def __init__(self, flow_config, truth, frames) -> None:
        super().__init__(flow_config, truth, frames)
        self.recent: list = []

    def arrive(self, source: int) -> None:
        from stac_encoder.mask_warp import MaskPropagator

        masks = MaskPropagator(self.flow)
        masks.set_mask(self.truth.mask(self.frames[source].index), source + 1)
        self.recent = (self.recent + [masks])[-3:]

    def current(self) -> np.ndarray | None:
        warped = [masks.current().class_ids for masks in self.recent]
        if len(warped) < 3:
            return warped[-1] if warped else None
        oldest, middle, newest = warped
        return np.where(oldest == middle, oldest, newest)


class _CheckedCarrier(_IdsCarrier):
    """MaskPropagator whose anchor points that fail a forward-backward check of the direct
    flow read the mask where the nearest passing point does."""

    def __init__(self, flow_config, truth, frames, threshold_px: float) -> None:
        super().__init__(flow_config, truth, frames)
        self.threshold_px = threshold_px
        self._forward = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def arrive(self, source: int) -> None:
        super().arrive(source)
        flow, field = self.flow, self.masks.field
        backward = flow.direct_flow(source + 1)
        if backward is None or not field.warped:
            return
        forward = self._forward.calc(flow.grey(source + 1), flow.grey(flow.current_seq), None)
        rows, cols = backward.shape[:2]
        grid_y, grid_x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        at_x, at_y = grid_x + backward[..., 0], grid_y + backward[..., 1]
        border = cv2.BORDER_REPLICATE
        forward_x = cv2.remap(forward[..., 0], at_x, at_y, cv2.INTER_LINEAR, borderMode=border)
        forward_y = cv2.remap(forward[..., 1], at_x, at_y, cv2.INTER_LINEAR, borderMode=border)
        error = np.hypot(backward[..., 0] + forward_x, backward[..., 1] + forward_y)
        failing = error > self.threshold_px + 0.05 * np.hypot(backward[..., 0], backward[..., 1])
        if not failing.any() or failing.all():
            return
        _, nearest = cv2.distanceTransformWithLabels(
            failing.astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )
        passing = np.flatnonzero(~failing.ravel())
        lookup = np.zeros(nearest.max() + 1, np.int64)
        lookup[nearest.ravel()[passing]] = passing
        source_of = lookup[nearest.ravel()]
        field.x = field.x.ravel()[source_of].reshape(field.x.shape)
        field.y = field.y.ravel()[source_of].reshape(field.y.shape)


class _SoftCarrier:
    """A K-channel state on the flow grid (probabilities, or ids one-hot when `soft` is None),
    warped bilinearly; at an arrival the newest mask, warped to the current frame, replaces it
    (weight 1) or is averaged with it; the output is upsampled bilinearly and argmax."""

    def __init__(self, flow_config, truth, frames, soft, weight: float, classes: int) -> None:
        from stac_encoder.frame_flow import FrameFlow, PositionField

        height, width = frames[0].image.shape[:2]
        self.truth, self.frames, self.soft = truth, frames, soft
        self.weight, self.classes = weight, classes
        self.size = (width, height)
        self.flow = FrameFlow(width, height, flow_config)
        self.field = PositionField.flow_grid(self.flow)
        self.state: np.ndarray | None = None

    def frame(self, seq: int, image: np.ndarray) -> None:
        self.flow.add_frame(seq, image)

    def _sample(self, state: np.ndarray, field) -> np.ndarray:
        """`state` (K x h x w over the whole frame) read at the field's positions."""
        scale_x = state.shape[2] / self.size[0]
        scale_y = state.shape[1] / self.size[1]
        map_x = (field.x + 0.5) * scale_x - 0.5
        map_y = (field.y + 0.5) * scale_y - 0.5
        border = cv2.BORDER_REPLICATE
        return np.stack(
            [cv2.remap(c, map_x, map_y, cv2.INTER_LINEAR, borderMode=border) for c in state]
        )

    def arrive(self, source: int) -> None:
        from stac_encoder.frame_flow import PositionField

        if self.soft is not None:
            mask = self.soft[source].astype(np.float32)
        else:
            ids = self.truth.mask(self.frames[source].index)
            one_hot = (np.arange(self.classes)[:, None, None] == ids[None]).astype(np.float32)
            size = (self.size[0] // SOFT_FACTOR, self.size[1] // SOFT_FACTOR)
            mask = np.stack([cv2.resize(c, size, interpolation=cv2.INTER_AREA) for c in one_hot])
        anchored = PositionField.flow_grid(self.flow)
        anchored.anchor(source + 1)
        newest = self._sample(mask, anchored)
        if self.state is not None and self.weight < 1.0:
            self.field.advance()
            carried = self._on_grid(self.state)
            newest = (1.0 - self.weight) * carried + self.weight * newest
        self.state = newest
        self.field.anchor(self.flow.current_seq)

    def _on_grid(self, state: np.ndarray) -> np.ndarray:
        """The state (on the flow grid of its anchor frame) warped to the current frame."""
        scale_x, scale_y = self.flow.scale_x, self.flow.scale_y
        map_x = (self.field.x + 0.5) * scale_x - 0.5
        map_y = (self.field.y + 0.5) * scale_y - 0.5
        border = cv2.BORDER_REPLICATE
        return np.stack(
            [cv2.remap(c, map_x, map_y, cv2.INTER_LINEAR, borderMode=border) for c in state]
        )

    def current(self) -> np.ndarray | None:
        if self.state is None:
            return None
        self.field.advance()
        state = self._on_grid(self.state)
        channels_last = np.ascontiguousarray(state.transpose(1, 2, 0))
        full = cv2.resize(channels_last, self.size, interpolation=cv2.INTER_LINEAR)
        return full.reshape(self.size[1], self.size[0], -1).argmax(-1).astype(np.uint8)


# --- 2. system -------------------------------------------------------------------------------


def _system(context, args: argparse.Namespace) -> dict:
    from stac_edge_segmenter.metrics import mean_iou
    from stac_eval.temporal_maps import settings_for, simulated_point

    base = settings_for(context, decoded_stride=0)
    base = replace(base, keyframes=replace(base.keyframes, stale_psnr_db=99.0))
    variants = {
        "defaults": base,
        "send_ahead_off": replace(base, keyframes=replace(base.keyframes, send_ahead=False)),
        "pipeline_off": replace(base, keyframes=replace(base.keyframes, pipeline=False)),
        "map_worker_nice_0": replace(base, map_worker_nice=0),
        "masks_across_cuts": replace(base, drop_masks_at_cuts=False),
        "flow_480": replace(base, flow=replace(base.flow, flow_width_px=480)),
    }
    results = {}
    for name, settings in variants.items():
        row = {}
        for method in SYSTEM_METHODS:
            if name in KEYFRAME_ONLY and method == "uniform":
                continue  # streaming has no keyframe pacing
            if name == "map_worker_nice_0" and method != "stac_keyframe":
                continue  # no maps: the same run as the defaults
            point = simulated_point(context, method, args.crf, settings, tag=f"_{name}")
            age = point.mask_age[point.mask_age >= 0]
            frames = point.frames
            row[method] = {
                "timely_miou": round(mean_iou(point.confusion["timely_pseudo"].sum(0)), 4),
                "uplink_kbps": round(_kbps(point.uplink_bytes, frames, context.fps), 1),
                "downlink_kbps": round(_kbps(point.downlink_bytes, frames, context.fps), 1),
                "frames_sent": int(point.sent.sum()),
                "mean_mask_age_frames": round(float(age.mean()), 2) if age.size else None,
            }
        results[name] = row
    return {
        "how": f"PointReplay at CRF {args.crf:g}, stale 99 dB (a keyframe whenever the edge can "
        "take one), robot warp; 'defaults' = the node's defaults, each other entry changes one",
        "edge_timing": context.timing.as_json(),
        "robot_encode_ms": _robot_encode_json(context),
        "link": context.link.as_json(),
        "points": results,
    }


def _robot_encode_json(context) -> dict[str, float]:
    """The robot's x264 times charged, ms per near / far frame (--robot-encode-ms or timed)."""
    return dict(zip(("near", "far"), context.robot_encode_ms, strict=True))


# --- 3. lateness ------------------------------------------------------------------------------


def _lateness(context, args: argparse.Namespace) -> dict:
    from stac_edge_segmenter.metrics import mean_iou
    from stac_eval.replay.analysis import lateness_breakdown
    from stac_eval.replay.link import LinkConfig
    from stac_eval.temporal_maps import settings_for, simulated_point

    settings = settings_for(context, decoded_stride=1)
    settings = replace(settings, keyframes=replace(settings.keyframes, stale_psnr_db=99.0))
    results = {}
    for spec in [spec for spec in args.links.split(";") if spec.strip()]:
        link = LinkConfig.parse(spec)
        linked = replace(context, link=link, key={**context.key, "link": link.describe()})
        row = {}
        for method in LATENESS_METHODS:
            point = simulated_point(linked, method, args.crf, settings, tag="_lateness")
            decoded = mean_iou(point.confusion["decoded_pseudo"].sum(0))
            timely = mean_iou(point.confusion["timely_pseudo"].sum(0))
            row[method] = {
                "timely_miou": round(timely, 4),
                "decoded_miou": round(decoded, 4),
                "timely_over_decoded": round(timely / decoded, 4),
                **lateness_breakdown(point, link, context.timing.segment_ms),
            }
        results[link.describe()] = row
    return {
        "how": f"PointReplay at CRF {args.crf:g} (stac_keyframe at stale 99 dB), robot warp, "
        "decoded mIoU on every decoded frame; per link: the time from capture to the mask "
        "held, by stage, and timely mIoU by the held mask's age (replay.analysis."
        "lateness_breakdown)",
        "edge_timing": context.timing.as_json(),
        "robot_encode_ms": _robot_encode_json(context),
        "links": results,
    }


# --- 4. presets ------------------------------------------------------------------------------


def _presets(context, args: argparse.Namespace) -> dict:
    from stac_eval.bd_rate import bd_rate_pct
    from stac_eval.progress import progress_bar

    presets = [preset for preset in args.presets.split(",") if preset]
    periods = [int(period) for period in args.preset_periods.split(",") if period]
    crfs = [float(crf) for crf in args.preset_crfs.split(",") if crf]
    results: dict = {}
    with progress_bar(total=len(periods) * len(presets) * len(crfs), desc="presets") as bar:
        for period in periods:
            frames = context.frames[::period]
            rows = {}
            for preset in presets:
                points = []
                for crf in crfs:
                    points.append(_preset_point(context, frames, preset, crf))
                    bar.update(1)
                rows[preset] = {"points": points}
            base = rows[presets[0]]["points"]
            for row in rows.values():
                row["bd_rate_pct_vs_first"] = round(
                    bd_rate_pct(
                        [p["kbytes"] for p in base],
                        [p["decoded_miou"] for p in base],
                        [p["kbytes"] for p in row["points"]],
                        [p["decoded_miou"] for p in row["points"]],
                    ),
                    2,
                )
            results[str(period)] = rows
    return {
        "how": "every P-th frame as one P chain (one thread, uniform QP, IDR only first); "
        "decoded mIoU against the model on the raw frames; BD-rate against the first preset; "
        "encode_ms: median per frame",
        "periods": results,
    }


def _preset_point(context, frames: list, preset: str, crf: float) -> dict:
    import time

    from stac_codec.h264_decoder import H264Decoder
    from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
    from stac_edge_segmenter.metrics import mask_confusion, mean_iou

    height, width = frames[0].image.shape[:2]
    config = EncoderConfig(crf=crf, preset=preset, threads=1, gop_frames=100_000)
    classes = context.model.num_classes
    matrix = np.zeros((classes, classes + 1), np.int64)
    decoder = H264Decoder(width, height)
    total, times = 0, []
    with QPMapEncoder(config, width, height) as encoder:
        for frame in frames:
            started = time.perf_counter()
            packet = encoder.encode(frame.image)
            times.append(1e3 * (time.perf_counter() - started))
            total += packet.size_bytes
            decoded = decoder.decode(packet.data)
            if not decoded.ok:
                raise RuntimeError(f"{preset} CRF {crf}: {decoded.detail}")
            mask = context.model.predict(decoded.image, 1, with_probabilities=False).class_ids[0]
            matrix += mask_confusion(context.truth.mask(frame.index), mask, classes)
    return {
        "crf": crf,
        "kbytes": round(total / 1e3, 3),
        "decoded_miou": round(mean_iou(matrix), 4),
        "encode_ms": round(float(np.median(times)), 2),
    }


def _kbps(values, frames: int, fps: float) -> float:
    return float(8.0 * np.sum(values) * fps / frames / 1e3)


def _print_table(result: dict) -> None:
    propagation = result.get("propagation")
    if propagation:
        print("\npropagation: timely mIoU (P:L = a mask every P frames, L frames late)")
        for schedule, row in propagation["miou"].items():
            print(f"  {schedule:>6}  " + "  ".join(f"{m} {v:.4f}" for m, v in row.items()))
    system = result.get("system")
    if system:
        print(f"\nsystem: {system['how']}")
        for name, row in system["points"].items():
            cells = [
                f"{method} {value['timely_miou']:.4f} ({value['frames_sent']} sent)"
                for method, value in row.items()
            ]
            print(f"  {name:>18}  " + "  ".join(cells))
    lateness = result.get("lateness")
    if lateness:
        print(f"\nlateness: {lateness['how']}")
        for link, row in lateness["links"].items():
            for method, value in row.items():
                stages = "  ".join(
                    f"{name} {stage['mean']}" for name, stage in value["stages_ms"].items()
                )
                ages = "  ".join(
                    f"{age}: {entry['timely_miou']} ({entry['frames']})"
                    for age, entry in value["timely_by_age"].items()
                )
                print(
                    f"  {link} {method}: timely {value['timely_miou']:.4f} / decoded "
                    f"{value['decoded_miou']:.4f} = {value['timely_over_decoded']:.3f}; "
                    f"mean ms: {stages}; held ages {value['held_age_frames']}; by age {ages}"
                )
    presets = result.get("presets")
    if presets:
        print(f"\npresets: {presets['how']}")
        for period, rows in presets["periods"].items():
            for preset, row in rows.items():
                points = "  ".join(
                    f"CRF {p['crf']:g}: {p['kbytes']} kB {p['decoded_miou']:.4f} "
                    f"{p['encode_ms']} ms"
                    for p in row["points"]
                )
                print(f"  every {period}: {preset} BD {row['bd_rate_pct_vs_first']} %  {points}")
    print(json.dumps({"frames": result["frames"], "fps": result["fps"]}))
