"""`stac-bench model` end to end: timings for every case and val accuracy in the JSON, and
every inference engine side by side."""

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
    engines = result["engines"]
    assert set(engines) == {"torch", "onnxruntime", "onnxruntime_int8"}
    for name, entry in engines.items():
        assert entry["runs_as"] == name, entry.get("fallback_reason")
        assert set(entry["forward_ms"]) == {"480x360", "960x540", "480x360_batch4"}
        assert all(ms > 0 for ms in entry["forward_ms"].values())
        assert 0.0 < entry["val_miou"] <= 1.0
    assert engines["torch"]["agreement_with_torch"] == 1.0
    assert engines["onnxruntime"]["agreement_with_torch"] >= 0.995
    full_tail = result["torch_full_tail"]["forward_ms"]
    assert set(full_tail) == set(engines["torch"]["forward_ratio_to_torch_full_tail"])


def test_bench_gpu_skips_cleanly_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: stac-bench gpu measures instead of skipping")
    out = tmp_path / "gpu.json"
    assert bench.main(["gpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["measured"] is False and "no CUDA device" in result["skipped"]
