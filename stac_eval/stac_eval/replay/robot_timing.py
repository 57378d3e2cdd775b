"""How long the robot's x264 takes per frame: the delay between a frame's capture and its
access unit entering the uplink.

The replay sends a frame when the robot has encoded it, and the robot encodes one frame at a
time, so a frame waits for the one before. Two figures: a frame of the stream preset
(`near_ms`), and a keyframe far from the one before it, encoded with keyframe mode's far
preset (`far_ms`, `KeyframeConfig.far_preset`). Measured here, once per frame size and
presets, and cached (the replay is deterministic: a rerun reuses the figure), or given as
`--robot-encode-ms NEAR/FAR`. JPEG frames are taken as encoded at capture.

The measurement: x264 as the robot runs it (one thread, CRF 25, the map-only AQ strength) on
the clip's first frames, every frame for the near preset and every `far_gap`-th frame for the
far one (the content moved as much as between keyframes that far apart); the median over the
P-frames, the first (IDR) picture left out.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_eval.replay.truth import write_atomically

TIMING_FORMAT = "stac-replay-robot-timing-v1"
MEASURE_CRF = 25.0
MEASURE_FRAMES = 32  # P-frames timed per preset


@dataclass(frozen=True)
class RobotTiming:
    """near_ms: one frame of the stream preset; far_ms: one far keyframe (ms)."""

    near_ms: float
    far_ms: float
    source: str = "given (--robot-encode-ms)"
    measurement: dict | None = None

    def __post_init__(self) -> None:
        for name in ("near_ms", "far_ms"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 <= value <= 10_000.0):
                raise ValueError(f"robot {name} must be in [0, 10000], got {value}")

    @classmethod
    def parse(cls, spec: str) -> RobotTiming:
        """'NEAR_MS/FAR_MS' or 'MS' (both)."""
        message = f"--robot-encode-ms {spec!r}: expected MS or NEAR_MS/FAR_MS"
        try:
            parts = [float(part) for part in spec.split("/")]
        except ValueError as error:
            raise ValueError(message) from error
        if len(parts) not in (1, 2):
            raise ValueError(message)
        return cls(parts[0], parts[-1])

    def encode_s(self, far: bool) -> float:
        return 1e-3 * (self.far_ms if far else self.near_ms)

    def as_json(self) -> dict:
        return {
            "near_ms": round(self.near_ms, 2),
            "far_ms": round(self.far_ms, 2),
            "source": self.source,
            "measurement": self.measurement,
        }


def _median_encode_ms(images: list[np.ndarray], preset: str) -> float:
    height, width = images[0].shape[:2]
    config = EncoderConfig(crf=MEASURE_CRF, preset=preset, threads=1, gop_frames=100_000)
    times = []
    with QPMapEncoder(config, width, height) as encoder:
        for position, image in enumerate(images):
            started = time.perf_counter()
            encoder.encode(image)
            if position:
                times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def measure_robot(images: list[np.ndarray], preset: str, far_preset: str, far_gap: int) -> dict:
    """Time x264 on the frames (RGB, in order): every frame at `preset`, every far_gap-th at
    `far_preset` (`far_preset` '' or far_gap 0: far frames take the near time)."""
    near_ms = _median_encode_ms(images[: MEASURE_FRAMES + 1], preset)
    far_ms = near_ms
    if far_preset and far_gap:
        far_ms = _median_encode_ms(images[::far_gap][: MEASURE_FRAMES + 1], far_preset)
    return {
        "format": TIMING_FORMAT,
        "near_ms": round(near_ms, 2),
        "far_ms": round(far_ms, 2),
        "preset": preset,
        "far_preset": far_preset,
        "far_gap_frames": far_gap,
        "frame_size": list(images[0].shape[1::-1]),
        "crf": MEASURE_CRF,
        "threads": 1,
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measured_robot_timing(
    cache_dir: Path,
    frame_size: tuple[int, int],
    load_frames: Callable[[int], list[np.ndarray]],
    preset: str,
    far_preset: str,
    far_gap: int,
) -> RobotTiming:
    """The cached measurement for this frame size (width, height) and presets, else one made
    now on `load_frames(count)`: the clip's first `count` RGB frames, called only then."""
    width, height = frame_size
    key = f"{width}x{height}_{preset}_{far_preset or 'none'}_{far_gap}"
    path = cache_dir / "robot_timing" / f"{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("format") == TIMING_FORMAT:
            return RobotTiming(data["near_ms"], data["far_ms"], f"measured, cached in {path}", data)
    images = load_frames(max(1, far_gap) * (MEASURE_FRAMES + 1))
    if images[0].shape[1::-1] != (width, height):
        raise ValueError(f"frames of {images[0].shape[1::-1]}, expected {width}x{height}")
    data = measure_robot(images, preset, far_preset, far_gap)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode())
    return RobotTiming(data["near_ms"], data["far_ms"], f"measured now, cached in {path}", data)
