"""The parts of `stac-bench temporal` that drive the robot's encoder directly: map delays,
the bitrate target, and the robot's time per frame (see stac_eval.bench_temporal)."""

from __future__ import annotations

import ast
import hashlib
import json
import time
from dataclasses import replace
from types import SimpleNamespace

import cv2
import numpy as np

from stac_codec.h264_encoder import EncoderConfig
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder
from stac_edge_segmenter.metrics import mask_confusion as confusion
from stac_edge_segmenter.metrics import mean_iou as miou
from stac_encoder.frame_flow import FlowConfig
from stac_encoder.rate_control import resolve_refresh
from stac_encoder.robot_encoder import QPMapUpdate, RobotEncoder, RobotEncoderConfig
from stac_encoder.robot_loop import STAGES, RobotLoop, RobotLoopConfig
from stac_eval.bd_rate import NoOverlapError, bd_rate_pct
from stac_eval.progress import progress_bar
from stac_eval.replay.wire import encoded_frame_bytes
from stac_sensitivity.calibration import MAP_ONLY_AQ_STRENGTH

TIMING_SIZE = (960, 540)
# robot_ms_per_frame's top-level stages, as stac-bench temporal reports them
TOP_LEVEL_STAGES = ("flow", "map_warp", "mask_warp", "keyframe_decision", "encode")
WINDOW_S = 2.0
SETTLE_S = 2.0
TOLERANCE = 0.10


# --- map delays ---------------------------------------------------------------------------


def map_delay_bd_rates(context) -> dict:
    """BD-rate against uniform (decoded mIoU, uplink + map bits) when the map computed on frame
    k reaches the encoder at frame k + d, warped by flow or held; maps every `map_period`
    frames, computed on the uniform stream's decoded frames at the same CRF (open loop, so
    that every delay and variant uses the same maps)."""
    args = context.args
    crfs = list(args.crf)
    uniform, maps = {}, {}
    for crf in crfs:
        uniform[crf], maps[crf] = _uniform_and_maps(context, crf)
    curves: dict[tuple[int, str], list] = {}
    for delay in args.delays:
        for variant in ("warped", "held") if delay else ("warped",):
            curves[(delay, variant)] = [
                _delayed_point(context, crf, maps[crf], delay, variant == "warped") for crf in crfs
            ]
    anchor_rates = [uniform[crf]["kbps"] for crf in crfs]
    anchor_miou = [uniform[crf]["miou"] for crf in crfs]
    results: dict[int, dict] = {}
    for (delay, variant), points in curves.items():
        try:
            value = round(
                bd_rate_pct(
                    anchor_rates,
                    anchor_miou,
                    [p["kbps"] for p in points],
                    [p["miou"] for p in points],
                ),
                2,
            )
        except (NoOverlapError, ValueError):
            value = None
        entry = results.setdefault(delay, {"map_none_bd_rate_pct": 0.0})
        entry[f"map_{variant}_bd_rate_pct"] = value
        if not delay:
            entry["map_held_bd_rate_pct"] = value  # no delay: nothing to warp
    for delay, entry in results.items():
        entry["map_curves"] = {
            variant: [
                {"crf": crf, "kbps": round(p["kbps"], 2), "decoded_miou": round(p["miou"], 4)}
                for crf, p in zip(crfs, curves[(delay, variant)], strict=True)
            ]
            for variant in ("warped", "held")
            if (delay, variant) in curves
        }
    return results


def _cache_path(context, name: str, key: dict):
    digest = hashlib.sha256(
        json.dumps({**context.key, **key}, sort_keys=True, default=str).encode()
    ).hexdigest()
    return context.work_dir / f"{name}_{digest[:12]}"


def _encoder(context, crf: float, warp: bool, aq_strength: float = MAP_ONLY_AQ_STRENGTH):
    settings = settings_for(context)
    return RobotEncoder(
        RobotEncoderConfig(
            encoder=EncoderConfig(
                crf=crf,
                fps=context.fps,
                preset=settings.preset,
                gop_frames=settings.gop_frames,
                refresh=resolve_refresh(settings.refresh, False),
                mbtree=settings.mbtree,
                threads=1,
                aq_strength=aq_strength,
                **dict(settings.encoder_options),
            ),
            warp_qp_map=warp,
            warp=settings.flow,
            idr_offset_scale=settings.idr_offset_scale,
            p_offset_scale=settings.p_offset_scale,
            map_fade_px=settings.map_fade_px,
        )
    )


def _score(context, position: int, image: np.ndarray) -> np.ndarray:
    frame = context.frames[position]
    mask = context.model.predict(image, batch_size=1, with_probabilities=False).class_ids[0]
    classes = context.model.num_classes
    return confusion(context.truth.mask(frame.index), mask, classes)


def _scored(position: int, stride: int) -> bool:
    return stride > 0 and position % stride == 0


def _uniform_and_maps(context, crf: float) -> tuple[dict, dict]:
    """The uniform stream at `crf` (its rate and decoded mIoU) and the maps computed on its
    decoded frames every map_period frames, with their key-map wire size (cached)."""
    from stac_codec.qp_map_wire import encode_qp_map

    period, stride = context.args.map_period, context.args.decoded_stride * 2
    npz = _cache_path(context, f"uniform_maps_crf{crf:g}", {"p": period, "s": stride})
    npz = npz.with_suffix(".npz")
    if npz.is_file():
        with np.load(npz) as data:
            maps = {
                int(k[4:]): (data[k], int(data[f"bytes_{k[4:]}"]))
                for k in data.files
                if k.startswith("map_")
            }
            return {"kbps": float(data["kbps"]), "miou": float(data["miou"])}, maps
    encoder, decoder = _encoder(context, crf, warp=False), EncodedStreamDecoder()
    classes = context.model.num_classes
    total = np.zeros((classes, classes + 1), np.int64)
    sizes, maps = 0, {}
    with progress_bar(total=len(context.frames), desc=f"uniform + maps crf {crf:g}") as bar:
        for position, frame in enumerate(context.frames):
            result = encoder.encode(frame.image, frame.offset_s)
            sizes += encoded_frame_bytes(result.packet.size_bytes)
            decoded = decoder.decode(result.packet.data, result.frame_seq, result.width,
                                     result.height)  # fmt: skip
            if decoded.ok and _scored(position, stride):
                total += _score(context, position, decoded.image)
            if decoded.ok and position % period == 0:
                reference = decoder.reference_image
                allocation = context.computer.compute(decoded.image, reference).allocation
                maps[position] = (allocation.offsets_qp, len(encode_qp_map(allocation)))
            bar.update(1)
    encoder.close()
    kbps = 8.0 * sizes * context.fps / len(context.frames) / 1e3
    stats = {"kbps": kbps, "miou": miou(total)}
    arrays = {f"map_{k}": v[0] for k, v in maps.items()}
    arrays.update({f"bytes_{k}": v[1] for k, v in maps.items()})
    np.savez_compressed(npz, kbps=kbps, miou=stats["miou"], **arrays)
    return stats, maps


def _delayed_point(context, crf: float, maps: dict, delay: int, warp: bool) -> dict:
    """The stream at `crf` with the map of frame k applied from frame k + delay on (delay 0:
    the map of each map frame applied to that very frame, nothing to warp)."""
    from stac_eval.replay.wire import qp_map_bytes

    stride = context.args.decoded_stride * 2
    key = {"crf": crf, "d": delay, "warp": warp, "p": context.args.map_period, "s": stride}
    name = f"map_delay_d{delay}_{'warp' if warp else 'held'}_crf{crf:g}"
    json_path = _cache_path(context, name, key).with_suffix(".json")
    if json_path.is_file():
        return json.loads(json_path.read_text())
    encoder = _encoder(context, crf, warp=warp and delay > 0)
    decoder = EncodedStreamDecoder()
    classes = context.model.num_classes
    total = np.zeros((classes, classes + 1), np.int64)
    sizes, map_seq = 0, 0
    label = f"maps d={delay} {'warped' if warp else 'held'} crf {crf:g}"
    with progress_bar(total=len(context.frames), desc=label) as bar:
        for position, frame in enumerate(context.frames):
            source = position - delay
            if source in maps and position > 0:
                offsets, wire_bytes = maps[source]
                map_seq += 1
                # frame_seq = position + 1; a map of this very frame names the previous one
                # (the encoder only takes maps of frames it has encoded; no warp at delay 0)
                source_seq = source + 1 if delay else position
                encoder.submit_qp_map(
                    QPMapUpdate(map_seq, source_seq, context.frames[source].offset_s, offsets)
                )
                sizes += qp_map_bytes(wire_bytes)
            result = encoder.encode(frame.image, frame.offset_s)
            sizes += encoded_frame_bytes(result.packet.size_bytes)
            decoded = decoder.decode(result.packet.data, result.frame_seq, result.width,
                                     result.height)  # fmt: skip
            if decoded.ok and _scored(position, stride):
                total += _score(context, position, decoded.image)
            bar.update(1)
    encoder.close()
    point = {"kbps": 8.0 * sizes * context.fps / len(context.frames) / 1e3, "miou": miou(total)}
    json_path.write_text(json.dumps(point))
    return point


# --- bitrate target -----------------------------------------------------------------------


def rate_control_runs(context, stream_points) -> dict:
    """STAC stream mode with a bitrate target (the map from the edge applied), the clip played
    forth and back for rc_seconds, the target stepped at half time; for the robot's outer loop
    on the CRF and for x264's ABR + VBV."""

    args = context.args
    fps = context.fps
    count = max(2, round(args.rc_seconds * fps))
    forth_back = context.frames + context.frames[::-1]
    frames = [
        SimpleNamespace(
            index=forth_back[i % len(forth_back)].index,
            offset_s=i / fps,
            image=forth_back[i % len(forth_back)].image,
        )
        for i in range(count)
    ]
    first = args.rc_target_kbps
    if not first:
        middle = stream_points[len(stream_points) // 2]
        first = 8.0 * middle.uplink_bytes.sum() * fps / len(middle.capture_s) / 1e3
    first = float(round(first))
    second = float(round(first * args.rc_step))
    step_s = round(count / 2) / fps
    result: dict = {"target_kbps": [first, second], "step_at_s": step_s, "seconds": count / fps}
    for rate_control, label in (("crf", "outer_loop_on_crf"), ("bitrate", "x264_abr_vbv")):
        settings = settings_for(
            context,
            decoded_stride=0,
            target_steps=((0.0, first), (step_s, second)),
            rate_control=rate_control,
        )
        start_crf = float(context.args.crf[len(context.args.crf) // 2])
        point = simulated_point(
            context, "stac", start_crf, settings, frames, tag=f"_rc_{rate_control}"
        )
        result[label] = window_errors(point.uplink_bytes, fps, (first, second), step_s)
        result[label]["base_quality_range"] = [float(point.crf.min()), float(point.crf.max())]
        result.setdefault("series", {})[label] = _series(point.uplink_bytes, fps)
    result["series_target"] = {
        "t_s": [0.0, step_s, step_s, count / fps],
        "kbps": [first, first, second, second],
    }
    outer, x264 = result["outer_loop_on_crf"], result["x264_abr_vbv"]

    def worst(entry: dict) -> float:
        value = entry["worst_window_error_pct"]
        return float("inf") if value is None else value

    better = "outer_loop_on_crf" if worst(outer) <= worst(x264) else "x264_abr_vbv"
    result["kept"] = better
    result["worst_window_error_pct"] = result[better]["worst_window_error_pct"]
    result["step_settle_s"] = result[better]["step_settle_s"]
    return result


def _series(sizes: np.ndarray, fps: float) -> dict:
    """kbit/s over the 2 s before each frame (from 2 s on), for the plot."""
    bits = 8.0 * np.asarray(sizes, dtype=float)
    window = max(1, round(WINDOW_S * fps))
    sums = np.convolve(bits, np.ones(window), mode="valid")
    times = (np.arange(len(sums)) + window) / fps
    return {
        "t_s": [round(float(t), 3) for t in times],
        "kbps_2s": [round(float(v) / WINDOW_S / 1e3, 1) for v in sums],
    }


def window_errors(sizes: np.ndarray, fps: float, targets: tuple[float, float], step_s: float):
    """Errors of the 2-s sliding windows (frame-aligned) against the target in force: the
    worst after 2 s of settling (from the start, and from the step), and the time after the
    step from which every window is within +-10%."""
    bits = 8.0 * np.asarray(sizes, dtype=float)
    window = max(1, round(WINDOW_S * fps))
    step = round(step_s * fps)
    settle = round(SETTLE_S * fps)

    def errors(segment: np.ndarray, target: float) -> np.ndarray:
        sums = np.convolve(segment, np.ones(window), mode="valid")
        return sums / (1e3 * target * window / fps) - 1.0

    before = errors(bits[:step], targets[0])
    after = errors(bits[step:], targets[1])
    checked = np.concatenate([before[settle:], after[settle:]])
    within = np.abs(after) <= TOLERANCE
    settle_frames = next((k for k in range(len(after)) if within[k:].all()), len(after))
    return {
        "worst_window_error_pct": round(100.0 * float(np.abs(checked).max()), 2)
        if checked.size
        else None,
        "step_settle_s": round(settle_frames / fps, 2),
        "mean_kbps": [
            round(float(bits[settle:step].sum() * fps / max(1, step - settle) / 1e3), 1),
            round(
                float(bits[step + settle :].sum() * fps / max(1, len(bits) - step - settle) / 1e3),
                1,
            ),
        ],
    }


# --- the robot's time per frame -------------------------------------------------------------


def robot_stage_timing(context) -> dict:
    """Each stage of the robot loop at 960x540, one thread, in stream and keyframe mode, with
    a map every 25 frames (10 frames late) and a mask every 5 frames (5 frames late) fed back,
    as the edge sends them.

    The top level holds, per stage and for the total, the larger of the two modes' means: what
    a robot's per-frame budget must cover whichever mode it runs (stream mode encodes every
    frame, keyframe mode decides on every frame). Each mode's own figures are under its name."""

    count = context.args.timing_frames
    forth_back = context.frames + context.frames[::-1]
    width, height = TIMING_SIZE
    images, masks = [], []
    for i in range(count):
        frame = forth_back[i % len(forth_back)]
        images.append(cv2.resize(frame.image, TIMING_SIZE, interpolation=cv2.INTER_AREA))
        mask = context.truth.mask(frame.index)
        masks.append(cv2.resize(mask, TIMING_SIZE, interpolation=cv2.INTER_NEAREST))
    offsets = context.computer.compute(images[0]).offsets_qp
    result = {"frame_size": [width, height], "frames": count, "threads": 1}
    flow = settings_for(context).flow
    for mode in ("stream", "keyframe"):
        loop = RobotLoop(
            RobotLoopConfig(
                mode=mode,
                encoder=RobotEncoderConfig(
                    encoder=EncoderConfig(crf=28.0, fps=context.fps, threads=1, gop_frames=50),
                    warp=flow,
                ),
                flow=flow,
            )
        )
        stages = {name: [] for name in STAGES}
        anchors, totals = [], []
        sent = {}
        map_seq = 0
        for i, image in enumerate(images):
            started = time.perf_counter()
            if i >= 10 and i % 25 == 10 and (i - 10) + 1 in sent.values():
                map_seq += 1
                loop.submit_qp_map(
                    QPMapUpdate(
                        map_seq, _frame_seq_of(sent, i - 10), (i - 10) / context.fps, offsets
                    )  # fmt: skip
                )
            if i >= 5 and i % 5 == 0 and (i - 5) in sent:
                anchor_started = time.perf_counter()
                loop.submit_mask(masks[i - 5], sent[i - 5])
                anchors.append(1e3 * (time.perf_counter() - anchor_started))
            outcome = loop.process(image, i / context.fps)
            totals.append(1e3 * (time.perf_counter() - started))
            if outcome.encoded is not None:
                sent[i] = outcome.encoded.frame_seq
            for name in STAGES:
                stages[name].append(outcome.stage_ms[name])
        loop.close()
        entry = {name: round(float(np.mean(values)), 2) for name, values in stages.items()}
        entry["keyframe_decision"] = entry.pop("keyframe")
        entry["mask_anchor_per_arrival"] = round(float(np.mean(anchors)), 2) if anchors else None
        entry["total"] = round(float(np.mean(totals)), 2)
        entry["total_p95"] = round(float(np.percentile(totals, 95)), 2)
        entry["fps"] = round(1e3 / entry["total"], 1)
        entry["frames_encoded"] = len(sent)
        result[mode] = entry
    for name in (*TOP_LEVEL_STAGES, "total"):
        result[name] = max(result[mode][name] for mode in ("stream", "keyframe"))
    result["fps"] = round(1e3 / result["total"], 1)
    return result


def _frame_seq_of(sent: dict, position: int) -> int:
    """The frame_seq of the last frame encoded at or before `position`."""
    return max((seq for pos, seq in sent.items() if pos <= position), default=1)


def settings_for(context, **changes):
    """The simulation settings of a stac-bench temporal run (its fps, decoded stride, flow
    width and --encoder options), with `changes`; a key 'encoder.X' / 'robot.X' sets field X
    of EncoderConfig / RobotEncoderConfig."""
    from stac_eval.replay.simulation import ReplaySettings

    flow = FlowConfig(flow_width_px=context.args.flow_width_px)
    options = {"encoder": dict(assignments(context.args.encoder)), "robot": {}}
    for key in [key for key in changes if "." in key]:
        kind, _, name = key.partition(".")
        if kind not in options:
            raise ValueError(f"unknown setting {key!r}: encoder.X or robot.X")
        options[kind][name] = changes.pop(key)
    map_aq = getattr(context.args, "map_aq_strength", None)
    if map_aq is not None and "map_aq_strength" not in changes:
        changes["map_aq_strength"] = map_aq
    settings = ReplaySettings(
        fps=context.fps,
        decoded_stride=context.args.decoded_stride,
        flow=flow,
        encoder_options=tuple(sorted(options["encoder"].items())),
        robot_options=tuple(sorted(options["robot"].items())),
        robot_encode_ms=context.robot_encode_ms,
    )
    return replace(settings, **changes)


def assignments(text: str) -> list[tuple[str, object]]:
    """'a=1,b=none' -> [('a', 1), ('b', 'none')]: Python literals, other values as strings."""
    pairs = []
    for assignment in filter(None, text.split(",")):
        key, _, value = assignment.partition("=")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        pairs.append((key.strip(), parsed))
    return pairs


def simulated_point(
    context,
    variant: str,
    budget: float,
    settings,
    frames=None,
    tag: str = "",
    computer=None,
):
    """One simulated run, from the cache when the same run was done before (computer: another
    map computer than the context's, e.g. another calibration)."""
    from stac_eval.progress import progress_bar
    from stac_eval.replay.accounting import PointResult
    from stac_eval.replay.simulation import METHODS, PointReplay

    computer = computer or context.computer
    key = {**context.key, "variant": variant, "budget": budget, "settings": settings.as_json()}
    if computer is not context.computer:
        key["calibration"] = str(computer.calibration)
        if (computer.block_mb, computer.pool_energy) != (1, True):
            key["computer"] = {"block_mb": computer.block_mb, "pool_energy": computer.pool_energy}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = context.work_dir / f"{variant}{tag}_{budget:g}_{digest[:12]}.npz"
    if path.is_file() and path.with_suffix(".json").is_file():
        return PointResult.load(path)
    frames = context.frames if frames is None else frames
    simulation = PointReplay(
        METHODS[variant], budget, settings, context.link, context.timing, context.model,
        computer, context.truth, decoded_cache=context.decoded_cache,
    )  # fmt: skip
    with progress_bar(total=len(frames), desc=f"{variant}{tag} crf {budget:g}") as bar:
        result = simulation.run(frames, bar)
    result.save(path)
    return result
