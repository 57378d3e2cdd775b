"""`stac-bench spatial` end to end on 3 CamVid frames, and the baselines it compares against."""

import json

import numpy as np
import pytest

from stac_eval import bench
from stac_eval.baselines import jpeg_round_trip, two_level_allocation


def test_jpeg_round_trip_bytes_grow_with_quality_and_error_shrinks():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(6, 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    results = [jpeg_round_trip(frame, quality) for quality in (10, 50, 95)]
    sizes = [size for _, size in results]
    errors = [np.abs(decoded.astype(int) - frame).mean() for decoded, _ in results]
    assert sizes[0] < sizes[1] < sizes[2]
    assert errors[0] > errors[1] > errors[2]
    assert results[0][0].shape == frame.shape and results[0][0].dtype == np.uint8


@pytest.mark.parametrize("quality", [0, 101])
def test_jpeg_quality_out_of_range(quality):
    with pytest.raises(ValueError, match="quality"):
        jpeg_round_trip(np.zeros((8, 8, 3), np.uint8), quality)


def test_two_level_map_marks_the_top_fraction_fine():
    sensitivity = np.arange(20, dtype=float).reshape(4, 5)
    offsets = two_level_allocation(sensitivity, 0.25).offsets_qp
    assert offsets.dtype == np.int8
    assert (offsets == -6).sum() == 5 and (offsets == 6).sum() == 15
    assert np.all(offsets.reshape(-1)[15:] == -6)  # the five largest sensitivities


def test_two_level_rejects_bad_fraction():
    with pytest.raises(ValueError, match="top_fraction"):
        two_level_allocation(np.ones((2, 2)), 1.5)


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_three_frames(data_dir, tmp_path):
    """The shipped model (its calibration beside it) on 3 val frames, 3 points per method:
    enough for every BD-rate against uniform to be defined."""
    camvid = data_dir / "camvid"
    out = tmp_path / "spatial.json"
    argv = ["spatial", "--images", str(camvid / "val"), "--labels", str(camvid / "valannot")]
    argv += ["--limit", "3", "--crf", "26", "34", "42", "--jpeg-quality", "20", "50", "80"]
    argv += ["--threads", "1", "--bootstrap", "10"]
    assert bench.main([*argv, "--out", str(out)]) == 0

    result = json.loads(out.read_text())
    baselines = {"uniform", "x264_aq", "two_level", "jpeg"}
    for key in ("bd_rate_pct", "bd_rate_pct_pseudo", "bd_rate_pct_oracle"):
        assert set(result[key]) == baselines
        assert all(v is None or isinstance(v, float) for v in result[key].values())
        assert isinstance(result[key]["uniform"], float), (key, result[key])
    curves = result["curves"]
    assert set(curves) == baselines | {"stac_practical", "stac_oracle", "stac_rate_blind"}
    for name, curve in curves.items():
        assert curve["frames"] == 3 and len(curve["points"]) == 3
        sizes = [point["bytes_per_frame"] for point in curve["points"]]
        assert sizes == sorted(sizes, reverse=name != "jpeg"), name
        assert all(
            0 <= p["miou_human"] <= 1 and 0 <= p["miou_pseudo"] <= 1 for p in curve["points"]
        )
    for name in ("stac_practical", "stac_oracle", "two_level"):
        feedback = [p["feedback_bytes_per_frame"] for p in curves[name]["points"]]
        assert all(0 < size < 23 * 30 for size in feedback)
    assert result["setup"]["frames"] == 3
    assert 0 <= result["uncompressed_miou_human"] <= 1
    for plot in result["plots"].values():
        assert (tmp_path / plot.rsplit("/", 1)[-1]).stat().st_size > 1000


def test_intra_coding_takes_the_preset_the_benchmark_is_given():
    """--preset reaches x264: slow's RD analysis (psy-RD, trellis) codes the same picture at
    the same CRF to another size than veryfast's, and either decodes to the frame's shape."""
    from stac_eval.intra import code_intra

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, size=(96, 128, 3)).astype(np.uint8)
    fast, slow = (code_intra(frame, 28.0, preset=preset) for preset in ("veryfast", "slow"))
    assert fast.slice_bytes != slow.slice_bytes
    assert fast.decoded_rgb.shape == slow.decoded_rgb.shape == frame.shape


def test_the_benchmark_refuses_an_unknown_preset(tmp_path, capsys):
    argv = ["spatial", "--images", str(tmp_path), "--preset", "warp9", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert "warp9" in capsys.readouterr().err
