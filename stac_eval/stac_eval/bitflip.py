"""Single-bit-flip sweep of the edge decoder: does damage ever come out as a good picture?

The robot's H.264 reaches the edge over a network; a flipped bit that the transport did not
catch (or a hostile sender) must give CORRUPT or WAITING_FOR_KEYFRAME, never a DECODED picture
that differs from what the robot encoded. `bitflip_sweep` measures exactly that:

* the clip: `encode_clip` encodes frames with `QPMapEncoder` (GOP like the robot's, 50) into
  access units; `clip_frames` takes them from a video file or synthesises moving texture;
* the reference: every access unit decoded from the undamaged stream;
* flip i damages access unit i mod N (round robin over the clip, so every frame kind, the IDR
  with its SPS/PPS/SEI and each P-frame, gets its share) at a bit drawn uniformly from that
  access unit (seeded, reproducible); a fresh decoder gets the clean stream up to that unit,
  the damaged unit, then the clean units that follow up to and including the next IDR;
* a flip is **passed** (counted in `corrupt_passed_as_decoded`) when any picture from the
  damaged unit up to (not including) the next IDR comes out DECODED with a PSNR against the
  reference decode of that frame below `psnr_threshold_db` (default 40 dB; a picture that is
  bit-exact or above the threshold is harmless, e.g. a flip in the x264 version SEI);
* a flip is **not recovered** when the next IDR (if the clip has one) is not DECODED;
* decode() raising anything counts in `exceptions` (the contract says it never raises for
  stream content).

It drives the edge's `EncodedStreamDecoder` with the sizes and sequence numbers an
EncodedFrame carries, i.e. what the segmenter node does. `targets="headers"` draws the bits
from everything but CABAC slice data (start codes, NAL headers, SPS, PPS, SEI, the first bytes
of each slice) to exercise the syntax checks. `sweep_video` is the one-call form:
`sweep_video(video=None or a path, flips=1000) -> dict`. Plain Python; `stac-bench faults`
reports its numbers.

Measured (40 frames of solidWhiteRight at 480x270, GOP 50, 1000 flips, seed 0): before the
decoder's checks, 67 of 1000 flips passed as DECODED (1097 bad pictures, down to 23.5 dB); with
the in-band CRC32 (the robot's default), 0; without the CRC (checksum_sei=False), 71: flips in
CABAC P-slice data that FFmpeg decodes without noticing, which only a checksum can catch.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stac_codec import annexb
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_edge_segmenter.edge_decoding import EncodedStreamDecoder

ROBOT_GOP_FRAMES = 50
DEFAULT_PSNR_THRESHOLD_DB = 40.0


@dataclass(frozen=True)
class EncodedClip:
    """Access units of one encoded clip and the picture size the EncodedFrames declare."""

    access_units: list[bytes]
    width: int
    height: int
    keyframes: list[bool]


def clip_frames(
    count: int = 40,
    width: int = 320,
    height: int = 192,
    video: str | Path | None = None,
    seed: int = 7,
) -> list[np.ndarray]:
    """`count` RGB frames of width x height: the video's first frames (resized) when given,
    else a synthetic textured scene panning two pixels per frame."""
    if video is not None:
        capture = cv2.VideoCapture(str(video))
        frames = []
        try:
            while len(frames) < count:
                ok, bgr = capture.read()
                if not ok:
                    break
                small = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
                frames.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
        if not frames:
            raise ValueError(f"no frames could be read from {video}")
        return frames
    rng = np.random.default_rng(seed)
    span = width + 2 * count
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, span // 8), 3), dtype=np.uint8)
    texture = cv2.resize(coarse, (span, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(-12, 13, texture.shape, dtype=np.int16)
    texture = np.clip(texture.astype(np.int16) + fine, 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(texture[:, 2 * i : 2 * i + width]) for i in range(count)]


def encode_clip(
    frames: Sequence[np.ndarray],
    gop_frames: int = ROBOT_GOP_FRAMES,
    crf: float = 23.0,
    checksum_sei: bool = True,
) -> EncodedClip:
    """Encode RGB frames as the robot does (zero delay, one access unit per frame);
    checksum_sei=False leaves out the in-band CRC32 (to measure the decoder without it)."""
    height, width = frames[0].shape[:2]
    config = EncoderConfig(crf=crf, gop_frames=gop_frames, threads=1, checksum_sei=checksum_sei)
    with QPMapEncoder(config, width, height) as encoder:
        packets = [encoder.encode(frame) for frame in frames]
    return EncodedClip(
        [p.data for p in packets], width, height, [annexb.contains_idr(p.data) for p in packets]
    )


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0**2 / mse)


_SLICE_HEADER_BYTES = 6  # x264's slice headers at these sizes fit in the first bytes
TARGETS = ("all", "headers")


def _regions(access_unit: bytes) -> list[tuple[int, int, str]]:
    """(begin, end, name) byte ranges of an access unit: start codes, NAL headers, sps, pps,
    sei, and for slices idr/p_slice_header (the first bytes) and idr/p_slice_data."""
    units = annexb.split_nal_units(access_unit)
    regions, position = [], 0
    for unit in units:
        begin = access_unit.index(unit.data, position)
        position = end = begin + len(unit.data)
        header_at = begin + unit.data.index(1) + 1
        regions += [(begin, header_at, "start_code"), (header_at, header_at + 1, "nal_header")]
        body = header_at + 1
        name = {
            annexb.NAL_TYPE_SPS: "sps",
            annexb.NAL_TYPE_PPS: "pps",
            annexb.NAL_TYPE_SEI: "sei",
        }.get(unit.nal_type)
        if unit.is_slice:
            kind = "idr" if unit.nal_type == annexb.NAL_TYPE_SLICE_IDR else "p"
            split = min(end, body + _SLICE_HEADER_BYTES)
            regions += [(body, split, f"{kind}_slice_header"), (split, end, f"{kind}_slice_data")]
        else:
            regions.append((body, end, name or f"nal_{unit.nal_type}"))
    return [region for region in regions if region[1] > region[0]]


def _candidate_bytes(access_unit: bytes, targets: str) -> tuple[np.ndarray, list[str]]:
    """Byte indices a flip may hit under `targets`, and the region name of each."""
    indices, names = [], []
    for begin, end, name in _regions(access_unit):
        if targets == "headers" and name.endswith("slice_data"):
            continue
        indices.extend(range(begin, end))
        names.extend([name] * (end - begin))
    return np.asarray(indices, dtype=np.int64), names


def _detail_kind(detail: str) -> str:
    """The detection that produced a result's detail, without its numbers."""
    if not detail:
        return ""
    kind = ":".join(detail.split(":")[:2]).split(" (")[0]
    return re.sub(r"\d+", "N", kind).strip()[:80]


def bitflip_sweep(
    clip: EncodedClip,
    flips: int = 1000,
    seed: int = 0,
    psnr_threshold_db: float = DEFAULT_PSNR_THRESHOLD_DB,
    decoder_factory: Callable[[], object] = EncodedStreamDecoder,
    targets: str = "all",
) -> dict:
    """Flip one bit per trial over `clip` and count damage that came out as DECODED.

    Returns a dict (JSON-ready): flips, frames, width, height, keyframe_indices,
    psnr_threshold_db, corrupt_passed_as_decoded (flips with at least one passed picture),
    bad_pictures_passed (such pictures in all), min_passed_psnr_db, flipped_unit_outcome
    (status of the damaged unit itself: corrupt / waiting_for_keyframe / decoded_exact /
    decoded_close / decoded_bad), caught_by (detail kind of the first non-DECODED result in each
    damage window, i.e. which detection caught the flip), passed_by_region and flips_by_region
    (where the flipped bit lay: sps, pps, sei, nal_header, idr/p slice header/data), not_recovered,
    exceptions (decode() raised: {type: count}) and seconds.
    """
    units = clip.access_units
    count = len(units)
    keyframe_indices = [i for i, key in enumerate(clip.keyframes) if key]
    if not keyframe_indices or keyframe_indices[0] != 0:
        raise ValueError("the clip must start with an IDR access unit")
    started = time.perf_counter()
    reference = _decode_all(decoder_factory(), units, clip.width, clip.height)
    if any(image is None for image in reference):
        raise ValueError("the undamaged clip does not decode cleanly")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}")
    candidates = [_candidate_bytes(unit, targets) for unit in units]
    rng = np.random.default_rng(seed)
    outcome: Counter[str] = Counter()
    caught_by: Counter[str] = Counter()
    flips_by_region: Counter[str] = Counter()
    passed_by_region: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    passed = bad_pictures = not_recovered = 0
    min_passed_psnr = float("inf")
    for trial in range(flips):
        target = trial % count
        indices, names = candidates[target]
        pick = int(rng.integers(0, 8 * len(indices)))
        byte_index, region = int(indices[pick // 8]), names[pick // 8]
        damaged = bytearray(units[target])
        damaged[byte_index] ^= 0x80 >> (pick % 8)
        flips_by_region[region] += 1
        next_idr = next((i for i in keyframe_indices if i > target), None)
        last = next_idr if next_idr is not None else count - 1
        decoder = decoder_factory()
        trial_passed = False
        caught = ""
        for index in range(last + 1):
            data = bytes(damaged) if index == target else units[index]
            try:
                result = decoder.decode(data, index + 1, clip.width, clip.height)
            except Exception as error:  # noqa: BLE001 - counting contract violations
                exceptions[type(error).__name__] += 1
                caught = caught or "exception"
                decoder = decoder_factory()
                continue
            if index < target:
                continue
            in_window = next_idr is None or index < next_idr
            if not in_window:
                if not result.ok:
                    not_recovered += 1
                continue
            if result.ok:
                quality = psnr_db(result.image, reference[index])
                if index == target:
                    outcome[_decoded_kind(quality, psnr_threshold_db)] += 1
                if quality < psnr_threshold_db:
                    trial_passed = True
                    bad_pictures += 1
                    min_passed_psnr = min(min_passed_psnr, quality)
            else:
                if index == target:
                    outcome[result.status.value] += 1
                if not caught:
                    caught = _detail_kind(result.detail) or result.status.value
        if caught:
            caught_by[caught] += 1
        if trial_passed:
            passed += 1
            passed_by_region[region] += 1
    return {
        "flips": flips,
        "seed": seed,
        "frames": count,
        "width": clip.width,
        "height": clip.height,
        "keyframe_indices": keyframe_indices,
        "targets": targets,
        "psnr_threshold_db": psnr_threshold_db,
        "corrupt_passed_as_decoded": passed,
        "bad_pictures_passed": bad_pictures,
        "min_passed_psnr_db": None if min_passed_psnr == float("inf") else min_passed_psnr,
        "flipped_unit_outcome": dict(sorted(outcome.items())),
        "caught_by": dict(caught_by.most_common()),
        "flips_by_region": dict(sorted(flips_by_region.items())),
        "passed_by_region": dict(sorted(passed_by_region.items())),
        "not_recovered": not_recovered,
        "exceptions": dict(exceptions),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _decoded_kind(quality: float, threshold: float) -> str:
    if quality == float("inf"):
        return "decoded_exact"
    return "decoded_close" if quality >= threshold else "decoded_bad"


def _decode_all(decoder, units: Iterable[bytes], width: int, height: int) -> list:
    images = []
    for index, data in enumerate(units):
        result = decoder.decode(data, index + 1, width, height)
        images.append(result.image if result.ok else None)
    return images


def sweep_video(
    video: str | Path | None = None,
    frames: int = 40,
    width: int = 480,
    height: int = 270,
    gop_frames: int = ROBOT_GOP_FRAMES,
    flips: int = 1000,
    seed: int = 0,
    checksum_sei: bool = True,
    targets: str = "all",
) -> dict:
    """Encode `frames` frames of `video` (synthetic texture when None) at width x height as the
    robot does and run `bitflip_sweep` over them; the dict also names the clip settings."""
    clip = encode_clip(
        clip_frames(frames, width, height, video=video), gop_frames, checksum_sei=checksum_sei
    )
    report = bitflip_sweep(clip, flips=flips, seed=seed, targets=targets)
    report.update(
        video=str(video) if video is not None else "synthetic",
        gop_frames=gop_frames,
        checksum_sei=checksum_sei,
    )
    return report
