"""`stac-bench masks` on a few frames: every coder is there with its keys, the values are sane
(not the benchmark's numbers: those are in stac_eval/results/masks_*.json)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from stac_codec.mask_wire import MaskSender
from stac_eval.bench import main as bench_main
from stac_eval.bench_masks import LATE_CODERS, REFERENCED_CODINGS, LateMasks

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
