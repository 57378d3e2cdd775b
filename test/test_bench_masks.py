"""`stac-bench masks` on a few frames: every coder is there with its keys, the values are sane
(not the benchmark's numbers: those are in stac_eval/results/masks_*.json)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from stac_codec.mask_wire import MaskSender
from stac_eval.bench import main as bench_main
from stac_eval.bench_masks import (
    LATE_CODERS,
    LOGIT_FIELD_STEPS,
    REFERENCED_CODINGS,
    LateMasks,
    LogitField,
    Masked,
    _needed,
    logit_chain,
)

KEYS = {"bytes_per_mask", "ratio_vs_rle_deflate", "agreement_miou", "encode_ms", "decode_ms"}
SHIPPED = ("rle_deflate", "lossless", "near_lossless", "reduced", "near_lossless_gated")
SHIPPED += REFERENCED_CODINGS


@pytest.fixture(scope="module")
def result(data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("masks")
    capture = cv2.VideoCapture(str(data_dir / "video" / "solidWhiteRight.mp4"))
    clip = work / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (240, 136))
    for _ in range(4):
        ok, frame = capture.read()
        assert ok
        writer.write(cv2.resize(frame, (240, 136), interpolation=cv2.INTER_AREA))
    writer.release()
    images = work / "images"
    images.mkdir()
    for name in sorted((data_dir / "camvid" / "val").glob("*.png"))[:2]:
        image = cv2.imread(str(name))
        cv2.imwrite(str(images / name.name), cv2.resize(image, (160, 120)))
    out = work / "masks.json"
    argv = ["masks", "--video", str(clip), "--images", str(images), "--every", "2"]
    argv += ["--late-frames", "2"]
    assert bench_main([*argv, "--out", str(out), "--threads", "1"]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow  # the model segments the frames
def test_every_coder_reports_its_keys_with_sane_values(result):
    assert result["masks"] == 2 and result["mask_size"] == [240, 136]
    assert result["meta"]["command"].startswith("stac-bench masks --video")
    for section in (result, result["images"]):
        coders = section["coders"]
        assert set(SHIPPED) <= set(coders)
        assert {"png", "webp_lossless", "conditional", "conditional_flow"} <= set(coders)
        assert "reduced_guided" in coders
        assert {f"logit_field_q{step:g}" for step in LOGIT_FIELD_STEPS} <= set(coders)
        for name, row in coders.items():
            extra = {"kept_share"} if name == "near_lossless_gated" else set()
            referenced = {*REFERENCED_CODINGS, "lossless_ref", "near_lossless_2_ref"}
            extra |= {"referenced_share"} if name in referenced else set()
            assert set(row) == KEYS | {"lossless"} | extra, name
            assert row["bytes_per_mask"] > 0 and row["encode_ms"] >= 0 and row["decode_ms"] >= 0
            assert 0.0 < row["agreement_miou"] <= 1.0, name
            if row["lossless"]:
                assert row["agreement_miou"] == 1.0, name
        assert coders["rle_deflate"]["ratio_vs_rle_deflate"] == 1.0
        lossless = ("rle_deflate", "png", "webp_lossless", "lossless", "conditional")
        for name in (*lossless, "conditional_flow", "lossless_ref"):
            assert coders[name]["lossless"], name
        assert not coders["reduced"]["lossless"]
        assert 0.0 <= coders["near_lossless_gated"]["kept_share"] < 1.0
    assert result["images"]["mask_size"] == [160, 120]
    assert result["images"]["coders"]["near_lossless_ref"]["referenced_share"] == 0.0  # images
    assert result["source"]["key_interval"] == 8


@pytest.mark.slow
def test_the_robot_view_of_late_masks_is_scored_for_every_wire_coding(result):
    late = result["late_masks"]
    assert late["delay_frames"] == 2
    assert set(late["miou_vs_edge_mask_then"]) == set(LATE_CODERS)
    assert all(0.0 < value <= 1.0 for value in late["miou_vs_edge_mask_then"].values())
    fewer = late["near_lossless_every_nth_mask"]
    assert set(fewer) == {"2", "3"} and all(0.0 < value <= 1.0 for value in fewer.values())
    assert set(late["robot_misses_every_nth_mask"]) == {"10", "5"}
    assert "late_masks" not in result["images"]  # images are not a clip


def test_an_edge_that_sends_fewer_masks_leaves_the_robot_staler_ones():
    """A region that grows by 8 columns per segmented frame on a still scene: masks that
    arrive every time score better than every second or third one (the robot carries the
    newest it got)."""
    late = LateMasks(delay_frames=2, num_classes=2, key_interval=8)
    senders = {name: MaskSender(name) for name in REFERENCED_CODINGS}
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    blocks = np.random.default_rng(1).integers(0, 2, (12, 4)).astype(np.uint8)
    for index in range(14):
        late.frame(index, frame)
        if index % 2 == 0:
            mask = np.zeros((48, 64), np.uint8)
            mask[:, : 4 * index] = 1
            mask[:, 48:] = blocks.repeat(4, 0).repeat(4, 1)  # costly alone, cheap as before
            wire = {name: sender.encode(mask) for name, sender in senders.items()}
            late.segmented(index, mask, dict.fromkeys(LATE_CODERS, mask), wire)
    summary = late.summary()
    every_time = summary["miou_vs_edge_mask_then"]["near_lossless"]
    fewer = summary["near_lossless_every_nth_mask"]
    assert every_time > fewer["2"] > fewer["3"]
    # a robot that misses the 5th mask: near_lossless_ref refuses the 6th (coded against the
    # 5th), near_lossless_keyref does not (coded against the first, a key mask)
    missing = summary["robot_misses_every_nth_mask"]["5"]
    assert missing["missed"] == 1
    assert missing["near_lossless_ref_refused"] == 1
    assert missing["near_lossless_keyref_refused"] == 0
    assert missing["near_lossless"] == missing["near_lossless_keyref"]
    assert missing["near_lossless_ref"] < missing["near_lossless"] < every_time


def _logit_frames(seed: int, count: int) -> list[Masked]:
    """Smooth random 5-class logits at 1/4 of a 120x90 working size (padded to 128x96), and
    the mask a model with them would give at 200x150."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        coarse = torch.from_numpy(rng.normal(0, 1.5, (1, 5, 6, 8)).astype(np.float32))
        logits = F.interpolate(coarse, size=(24, 32), mode="bicubic", align_corners=False)[0]
        masked = Masked(index, np.zeros((150, 200, 3), np.uint8), np.zeros((150, 200), np.uint8))
        masked.logits = logits.numpy()
        masked.chain = logit_chain((24, 32), (120, 90), (150, 200))
        resized = F.interpolate(logits[None], size=(96, 128), mode="bilinear")[..., :90, :120]
        resized = F.interpolate(resized, size=(150, 200), mode="bilinear", align_corners=False)
        masked.class_ids[:] = resized[0].argmax(0).numpy()
        frames.append(masked)
    return frames


def test_a_logit_field_rebuilds_the_mask_from_what_travels_only():
    """Fine steps give the edge's mask back (but where the resized margins are near a tie);
    coarse ones cost fewer bytes and agree less. The robot's decoder sees only the wire bytes
    and the sizes: it gets zeros where the edge had logits."""
    frames = _logit_frames(0, 3)
    agreement, sizes = {}, {}
    for step in (0.05, 2.0):
        encode, decode = LogitField(step).coder()
        edge, robot = {}, {}
        agreement[step], sizes[step] = [], []
        for masked in frames:
            data = encode(masked, edge)
            blind = Masked(masked.index, masked.image, np.zeros_like(masked.class_ids))
            blind.logits, blind.chain = np.zeros_like(masked.logits), masked.chain
            decoded = decode(data, blind, robot)
            agreement[step].append(float((decoded == masked.class_ids).mean()))
            sizes[step].append(len(data))
        assert robot["held"].tobytes() == masked.logits.argmax(0).astype(np.uint8).tobytes()
    assert min(agreement[0.05]) > 0.995
    assert min(agreement[2.0]) < min(agreement[0.05])
    assert sum(sizes[2.0]) < sum(sizes[0.05])
    with pytest.raises(ValueError, match="byte"):
        LogitField(0.01)


def test_only_mixed_supports_need_margins():
    """A map of one class needs none; a vertical boundary needs margins only near it, of the
    other class, on both sides, and none in the last low-res row (the working size's 90
    rows are cropped from 96: no output pixel reads row 23)."""
    chain = logit_chain((24, 32), (120, 90), (150, 200))
    argmax = np.zeros((24, 32), np.uint8)
    assert not _needed(argmax, 3, chain).any()
    argmax[:, 16:] = 2
    needed = _needed(argmax, 3, chain)
    columns = np.flatnonzero(needed.any((0, 1)))
    assert columns.min() >= 13 and columns.max() <= 18 and {15, 16} <= set(columns)
    assert not needed[1].any()  # class 1 is nowhere
    assert needed[2, :23, 15].all() and needed[0, :23, 16].all() and not needed[0, :, 15].any()
    assert not needed[:, 23].any()
