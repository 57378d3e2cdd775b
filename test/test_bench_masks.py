"""`stac-bench masks` on a few frames: every coder is there with its keys, the values are sane
(not the benchmark's numbers: those are in stac_eval/results/masks_*.json)."""

from __future__ import annotations

import json

import cv2
import pytest

from stac_eval.bench import main as bench_main

KEYS = {"bytes_per_mask", "ratio_vs_rle_deflate", "agreement_miou", "encode_ms", "decode_ms"}
SHIPPED = ("rle_deflate", "lossless", "near_lossless", "reduced")
pytestmark = pytest.mark.slow  # the model segments the frames


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


def test_every_coder_reports_its_keys_with_sane_values(result):
    assert result["masks"] == 2 and result["mask_size"] == [240, 136]
    assert result["meta"]["command"].startswith("stac-bench masks --video")
    for section in (result, result["images"]):
        coders = section["coders"]
        assert set(SHIPPED) <= set(coders)
        assert {"png", "webp_lossless", "conditional", "reduced_guided"} <= set(coders)
        for name, row in coders.items():
            assert set(row) == KEYS | {"lossless"}, name
            assert row["bytes_per_mask"] > 0 and row["encode_ms"] >= 0 and row["decode_ms"] >= 0
            assert 0.0 < row["agreement_miou"] <= 1.0, name
            if row["lossless"]:
                assert row["agreement_miou"] == 1.0, name
        assert coders["rle_deflate"]["ratio_vs_rle_deflate"] == 1.0
        for name in ("rle_deflate", "png", "webp_lossless", "lossless", "conditional"):
            assert coders[name]["lossless"], name
        assert not coders["reduced"]["lossless"]
    assert result["images"]["mask_size"] == [160, 120]


def test_the_robot_view_of_late_masks_is_scored_for_every_wire_coding(result):
    late = result["late_masks"]
    assert late["delay_frames"] == 2
    assert set(late["miou_vs_edge_mask_then"]) == {"lossless", "near_lossless", "reduced"}
    assert all(0.0 < value <= 1.0 for value in late["miou_vs_edge_mask_then"].values())
    assert "late_masks" not in result["images"]  # images are not a clip
