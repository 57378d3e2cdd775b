"""`stac-bench model` end to end: timings for every case and val accuracy in the JSON."""

import json

import pytest

from stac_eval import bench


@pytest.mark.slow
def test_bench_model_writes_timings_and_val_miou(tmp_path, data_dir):
    out = tmp_path / "model.json"
    argv = ["model", "--out", str(out), "--repeats", "1", "--val-limit", "2",
            "--data-dir", str(data_dir / "camvid")]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert (
        set(result["forward_ms"])
        == set(result["backward_ms"])
        == {
            "480x360",
            "960x540",
            "960x540_native",
        }
    )
    assert all(ms > 0 for ms in [*result["forward_ms"].values(), *result["backward_ms"].values()])
    assert 0.0 < result["val_miou"] <= 1.0 and result["val_frames"] == 2
    assert result["meta"]["command"].startswith("stac-bench model")
