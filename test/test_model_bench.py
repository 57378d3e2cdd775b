"""`stac-bench model` end to end: timings for every case and val accuracy in the JSON, and
every inference engine side by side."""

import json

import pytest
from test_replay_sources import small_model  # noqa: F401

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


def test_gpu_cpu_mask_agreement_counts_equal_class_ids_frame_by_frame(tmp_path, small_model):  # noqa: F811
    """`stac-bench gpu --video`'s check (the replay's fast profile times a GPU but takes the
    CPU's masks), here between two CPU engines of one model: torch against itself agrees
    everywhere, ONNX Runtime's graph of the same model on nearly every pixel."""
    from test_replay_sources import write_clip

    from stac_edge_segmenter.engines import TorchEngine, create_engine
    from stac_edge_segmenter.loading import load_model
    from stac_eval.bench_gpu import agreement_on_frames
    from stac_eval.replay.source import open_source

    clip = write_clip(tmp_path / "clip.avi", 3)
    frames = [frame.image for frame in open_source(str(clip)).frames(3)]
    model = load_model(small_model, device="cpu")
    torch_engine = TorchEngine(model)
    references = {
        "torch": TorchEngine(model),
        "onnxruntime": create_engine(model, "onnxruntime").engine,
    }
    shares = agreement_on_frames(torch_engine, references, frames)
    assert shares["torch"] == 1.0
    assert 0.99 <= shares["onnxruntime"] <= 1.0
