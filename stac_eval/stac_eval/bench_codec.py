"""`stac-bench codec`: H.264 encode/decode speed, the QP map's overhead, and bytes per frame.

Frames of a clip (default solidWhiteRight.mp4) are decoded and resized into memory first, so
only `QPMapEncoder.encode` (colour conversion, map validation, x264) and `H264Decoder.decode`
(FFmpeg, conversion to rgb24) are timed. The map is a STAC-like one: a smooth random field of
per-macroblock offsets in [-10, 10] (the allocator's clamp), fixed seed.

Speed runs use a target bitrate, so that map and no-map code about the same number of bytes (at
equal CRF the mean-zero map spends ~1.4x the bytes, see the bytes table, and more bytes cost
more time whatever their source). The no-map, all-zero-map and STAC-like-map encoders run in
lockstep, frame by frame in rotating order, because the CPU is shared with other processes;
each frame's time is its best over `--repeats`, so a frame preempted once does not count.
Overhead = (map time - no-map time) / no-map time, in wall time and in process CPU time (with
2 threads CPU time exceeds wall time). The all-zero map isolates the mechanism's own cost.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import av
import cv2
import numpy as np

from stac_codec.h264_decoder import H264Decoder
from stac_codec.h264_encoder import PRESETS, EncoderConfig, QPMapEncoder
from stac_codec.qp_map import macroblock_grid
from stac_training.camvid import shared_data_dir

DEFAULT_SIZES = ("960x540", "1280x720")
DEFAULT_CRFS = (20, 28, 36)
DEFAULT_BITRATES_KBPS = (500, 2000)
MAP_MAX_ABS_QP = 10


def default_video() -> Path:
    return shared_data_dir() / "video" / "solidWhiteRight.mp4"


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 960x540, got {text!r}") from error
    if width < 2 or height < 2:
        raise argparse.ArgumentTypeError(f"size too small: {text}")
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, default=default_video(), help="input clip")
    parser.add_argument("--frames", type=int, default=100, help="frames per run")
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=[parse_size(size) for size in DEFAULT_SIZES],
        help="frame sizes WxH the clip is resized to, one run each",
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="x264 thread counts timed"
    )
    parser.add_argument("--preset", choices=PRESETS, default="veryfast", help="x264 preset")
    parser.add_argument(
        "--speed-kbps", type=int, default=1000, help="target bitrate of the encode-speed runs"
    )
    parser.add_argument("--crf", type=float, default=28.0, help="CRF of the decode-speed stream")
    parser.add_argument(
        "--size-crfs",
        type=float,
        nargs="+",
        default=list(DEFAULT_CRFS),
        help="CRFs of the bytes-per-frame table",
    )
    parser.add_argument(
        "--bitrates-kbps",
        type=int,
        nargs="+",
        default=list(DEFAULT_BITRATES_KBPS),
        help="target bitrates of the bytes-per-frame table",
    )
    parser.add_argument("--gop", type=int, default=25, help="keyframe interval in frames")
    parser.add_argument("--repeats", type=int, default=5, help="best-of repeats per timing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic QP map")


def load_frames(video: Path, count: int) -> list[np.ndarray]:
    if not video.is_file():
        raise FileNotFoundError(f"{video} not found (set --video or STAC_DATA_DIR)")
    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if not frames:
        raise ValueError(f"{video} holds no video frames")
    return frames


def frames_at(source: list[np.ndarray], width: int, height: int) -> list[np.ndarray]:
    """The frames resized (bilinear) to width x height; unchanged when already that size."""
    if source[0].shape[:2] == (height, width):
        return source
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in source]


def stac_like_map(grid: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth random offsets in [-10, 10] with mean about 0, as the allocator produces."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((max(1, grid[0] // 4), max(1, grid[1] // 4))).astype(np.float32)
    field = cv2.resize(coarse, (grid[1], grid[0]), interpolation=cv2.INTER_CUBIC)
    field = (field - field.mean()) / (field.std() + 1e-6) * (MAP_MAX_ABS_QP / 2)
    return np.clip(np.rint(field), -MAP_MAX_ABS_QP, MAP_MAX_ABS_QP).astype(np.int8)


def encode_run(frames, config: EncoderConfig, qp_map) -> tuple[float, float, list]:
    """(wall s, CPU s, packets) of encoding all frames with one fresh encoder."""
    height, width = frames[0].shape[:2]
    with QPMapEncoder(config, width, height) as encoder:
        wall, cpu = time.perf_counter(), time.process_time()
        packets = [encoder.encode(frame, qp_map=qp_map) for frame in frames]
        return time.perf_counter() - wall, time.process_time() - cpu, packets


def decode_run(packets, width: int, height: int) -> float:
    decoder = H264Decoder(width, height)
    start = time.perf_counter()
    results = [decoder.decode(packet.data, seq) for seq, packet in enumerate(packets, 1)]
    elapsed = time.perf_counter() - start
    if not all(result.ok for result in results):
        raise RuntimeError("the benchmark stream did not decode cleanly")
    return elapsed


def lockstep_encode(frames, config: EncoderConfig, variants: dict) -> dict[str, np.ndarray]:
    """Encode the frames once per map variant, frame by frame in rotating order, so that load
    from other processes hits every variant alike.

    Returns name -> array (frames, 3) of wall s, CPU s and bytes per frame.
    """
    height, width = frames[0].shape[:2]
    names = list(variants)
    encoders = {name: QPMapEncoder(config, width, height) for name in names}
    per_frame = {name: np.zeros((len(frames), 3)) for name in names}
    try:
        for index, frame in enumerate(frames):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = time.perf_counter(), time.process_time()
                packet = encoders[name].encode(frame, qp_map=variants[name])
                per_frame[name][index] = (
                    time.perf_counter() - wall,
                    time.process_time() - cpu,
                    packet.size_bytes,
                )
    finally:
        for encoder in encoders.values():
            encoder.close()
    return per_frame


def speed_for_size(frames, args) -> dict:
    """Encode timings of the three map variants per thread count (each frame's best over the
    repeats, summed: a preempted frame in one repeat does not count), and decode fps."""
    height, width = frames[0].shape[:2]
    grid = macroblock_grid(width, height)
    variants = {
        "no_map": None,
        "zero_map": np.zeros(grid, np.int8),
        "map": stac_like_map(grid, args.seed),
    }
    result = {"encode": {}, "decode_fps": None}
    count = len(frames)
    for threads in args.threads:
        config = EncoderConfig(
            rate_control="bitrate",
            bitrate_kbps=args.speed_kbps,
            preset=args.preset,
            gop_frames=args.gop,
            threads=threads,
        )
        runs = [lockstep_encode(frames, config, variants) for _ in range(args.repeats)]
        rows = {}
        for name in variants:
            best = np.min(np.stack([run[name] for run in runs]), axis=0)  # deterministic bytes
            wall_s, cpu_s, size_bytes = best.sum(axis=0)
            rows[name] = {
                "fps": count / wall_s,
                "wall_ms_per_frame": 1e3 * wall_s / count,
                "cpu_ms_per_frame": 1e3 * cpu_s / count,
                "bytes_per_frame": size_bytes / count,
            }
        result["encode"][f"threads_{threads}"] = rows
    _, _, packets = encode_run(frames, EncoderConfig(crf=args.crf, gop_frames=args.gop), None)
    decode_times = [decode_run(packets, width, height) for _ in range(args.repeats)]
    result["decode_fps"] = count / min(decode_times)
    return result


def bytes_per_frame(frames, args) -> dict:
    height, width = frames[0].shape[:2]
    qp_map = stac_like_map(macroblock_grid(width, height), args.seed)
    rows = {}
    configs = [
        (f"crf_{crf:g}", EncoderConfig(crf=crf, preset=args.preset, gop_frames=args.gop))
        for crf in args.size_crfs
    ]
    configs += [
        (
            f"bitrate_{kbps}kbps",
            EncoderConfig(
                rate_control="bitrate", bitrate_kbps=kbps, preset=args.preset, gop_frames=args.gop
            ),
        )
        for kbps in args.bitrates_kbps
    ]
    for key, config in configs:
        rows[key] = {}
        for name, run_map in (("no_map", None), ("map", qp_map)):
            _, _, packets = encode_run(frames, config, run_map)
            total = sum(packet.size_bytes for packet in packets)
            rows[key][name] = {
                "bytes_per_frame": total / len(packets),
                "kbit_per_s": total * 8 * config.fps / len(packets) / 1e3,
            }
    return rows


def print_tables(result: dict) -> None:
    kbps = result["settings"]["speed_kbps"]
    print(
        f"\nencode at {kbps} kbit/s, best of repeats: wall fps (CPU ms/frame); overhead vs no map"
    )
    header = (
        f"{'size':>9} {'thr':>3} {'no map':>14} {'zero map':>14} {'STAC-like map':>14} "
        f"{'zero %':>7} {'map %':>6} {'map cpu %':>9} {'map bytes':>9}"
    )
    print(header)
    for size_key, per_size in result["encode_detail"].items():
        for threads_key, rows in per_size.items():
            cells = [
                f"{rows[name]['fps']:6.1f} ({rows[name]['cpu_ms_per_frame']:5.2f})"
                for name in ("no_map", "zero_map", "map")
            ]
            bytes_ratio = rows["map"]["bytes_per_frame"] / rows["no_map"]["bytes_per_frame"]
            overheads = [
                result[key][size_key][threads_key]
                for key in ("zero_map_overhead_pct", "map_overhead_pct", "map_overhead_cpu_pct")
            ]
            print(
                f"{size_key:>9} {threads_key.split('_')[1]:>3} {cells[0]:>14} {cells[1]:>14} "
                f"{cells[2]:>14} {overheads[0]:>7.1f} {overheads[1]:>6.1f} {overheads[2]:>9.1f} "
                f"{bytes_ratio:>8.2f}x"
            )
    print("\ndecode (H264Decoder incl. conversion to rgb24, 1 FFmpeg thread)")
    for size_key, fps in result["decode_fps"].items():
        print(f"{size_key:>9} {fps:>8.1f} fps")
    print(f"\nbytes per frame at {result['bytes_size']} (GOP {result['settings']['gop']})")
    print(
        f"{'base quality':>18} {'no map':>10} {'map':>10} {'no map kbit/s':>14} {'map kbit/s':>11}"
    )
    for key, row in result["bytes_per_frame"].items():
        print(
            f"{key:>18} {row['no_map']['bytes_per_frame']:>10.0f} "
            f"{row['map']['bytes_per_frame']:>10.0f} {row['no_map']['kbit_per_s']:>14.0f} "
            f"{row['map']['kbit_per_s']:>11.0f}"
        )


def overhead_pct(per_threads: dict, name: str, measure: str = "wall_ms_per_frame") -> float:
    return 100.0 * (per_threads[name][measure] / per_threads["no_map"][measure] - 1.0)


def run(args: argparse.Namespace) -> dict:
    if args.frames < 1 or args.repeats < 1 or min(args.threads) < 1:
        raise ValueError("--frames, --repeats and --threads must be >= 1")
    source = load_frames(args.video, args.frames)
    result = {
        "settings": {
            "video": str(args.video),
            "frames": len(source),
            "preset": args.preset,
            "speed_kbps": args.speed_kbps,
            "decode_crf": args.crf,
            "gop": args.gop,
            "repeats": args.repeats,
            "map": f"smooth random, offsets in [-{MAP_MAX_ABS_QP}, {MAP_MAX_ABS_QP}]",
            "cpu_count": os.cpu_count(),
        },
        "encode_fps": {},
        "encode_detail": {},
        "map_overhead_pct": {},
        "map_overhead_cpu_pct": {},
        "zero_map_overhead_pct": {},
        "decode_fps": {},
    }
    for width, height in args.sizes:
        size_key = f"{width}x{height}"
        frames = frames_at(source, width, height)
        speed = speed_for_size(frames, args)
        result["encode_detail"][size_key] = speed["encode"]
        result["encode_fps"][size_key] = {
            threads_key: {name: row["fps"] for name, row in per_threads.items()}
            for threads_key, per_threads in speed["encode"].items()
        }
        overheads = (
            ("map_overhead_pct", "map", "wall_ms_per_frame"),
            ("map_overhead_cpu_pct", "map", "cpu_ms_per_frame"),
            ("zero_map_overhead_pct", "zero_map", "wall_ms_per_frame"),
        )
        for key, variant, measure in overheads:
            result[key][size_key] = {
                threads_key: overhead_pct(per_threads, variant, measure)
                for threads_key, per_threads in speed["encode"].items()
            }
        print(f"  {size_key}: timed", flush=True)
        result["decode_fps"][size_key] = speed["decode_fps"]
    first_width, first_height = args.sizes[0]
    result["bytes_size"] = f"{first_width}x{first_height}"
    result["bytes_per_frame"] = bytes_per_frame(frames_at(source, first_width, first_height), args)
    print_tables(result)
    return result
