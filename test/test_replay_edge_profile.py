"""The replay's measured edge profile times the edge as the edge node runs it: with the node's
default threads (not the replay's own `--threads`), recorded with the load in the report's
edge_profile, cached per thread count."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_replay_sources import small_model, write_clip  # noqa: F401

from stac_edge_segmenter.loading import load_model
from stac_edge_segmenter.model_parameters import MODEL_PARAMETERS
from stac_eval.replay.cli import build_parser
from stac_eval.replay.edge_profile import measure_edge, node_default_threads
from stac_eval.replay.runner import edge_timing
from stac_eval.replay.source import open_source
from stac_eval.replay.truth import model_digest
from stac_sensitivity.online import QPMapComputer


def test_node_default_threads_are_the_nodes_parameter_or_a_fresh_processs_torch():
    (spec,) = [p for p in MODEL_PARAMETERS if p.name == "torch_threads"]
    fresh = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = spec.default or int(fresh.stdout)
    torch.set_num_threads(1)  # what the replay does for its own passes: not the edge's count
    assert node_default_threads() == expected >= 1


def test_measured_profile_uses_the_nodes_threads_and_records_them(tmp_path, small_model):  # noqa: F811
    clip = write_clip(tmp_path / "clip.avi", 6)
    args = build_parser().parse_args(["run", str(clip), "--out", str(tmp_path / "out")])
    assert args.edge_threads == 0 and args.threads == 1  # 0: the node's default
    model = load_model(small_model, device="cpu")
    computer = QPMapComputer(model, None)
    source = open_source(str(clip))
    cache = tmp_path / "cache"
    torch.set_num_threads(args.threads)
    timing = edge_timing(args, model, model_digest(model), computer, source, cache, (128, 96))
    recorded = timing.as_json()
    assert recorded["profile"] == "measured" and timing.segment_ms > 0 and timing.map_ms > 0
    assert recorded["threads"] == node_default_threads()
    assert recorded["load_average_1min"] >= 0 and recorded["measured_at"]
    assert torch.get_num_threads() == args.threads  # the replay's own count is left as it was
    (cached,) = (cache / "edge_timing").glob("*.json")
    assert f"-t{node_default_threads()}-" in cached.name
    again = edge_timing(args, model, model_digest(model), computer, source, cache, (128, 96))
    assert again.threads == timing.threads and "cached" in again.source
    # an explicit --edge-threads is its own measurement
    args.edge_threads = 1
    one = edge_timing(args, model, model_digest(model), computer, source, cache, (128, 96))
    assert one.threads == 1 and len(list((cache / "edge_timing").glob("*.json"))) == 2


def test_bad_thread_counts_are_refused(tmp_path, small_model):  # noqa: F811
    from stac_eval.replay.cli import main

    with pytest.raises(SystemExit, match="--edge-threads"):
        main(["run", str(tmp_path / "none.avi"), "--out", str(tmp_path), "--edge-threads", "-1"])
    model = load_model(small_model, device="cpu")
    with pytest.raises(ValueError, match="threads"):
        measure_edge(model, QPMapComputer(model, None), [], 0, "onnxruntime")
    with pytest.raises(ValueError, match="passes"):
        measure_edge(model, QPMapComputer(model, None), [], 1, "torch", passes=0)


def test_a_measurement_names_the_providers_and_the_accelerator_it_ran_on(tmp_path, small_model):  # noqa: F811
    """A CPU-only ONNX Runtime beside a CUDA model would time the CPU: the file must say so."""
    clip = write_clip(tmp_path / "clip.avi", 4)
    images = [frame.image for frame in open_source(str(clip)).frames(2)]
    model = load_model(small_model, device="cpu")
    computer = QPMapComputer(model, None)
    on_torch = measure_edge(model, computer, images, 1, "torch", forwards=5, passes=3)
    assert on_torch["engine"] == "torch" and on_torch["engine_providers"] is None
    assert (on_torch["forwards"], on_torch["passes"]) == (5, 3)
    low, high = on_torch["map_ms_quartiles"]
    assert low <= on_torch["map_ms"] <= high
    assert on_torch["accelerator"] is None and on_torch["device"] == "cpu"
    on_onnx = measure_edge(model, computer, images, 1, "onnxruntime")
    if on_onnx["engine"] == "onnxruntime":
        assert on_onnx["engine_providers"][-1] == "CPUExecutionProvider"
    else:  # fell back to torch, and says why
        assert on_onnx["engine_fallback_reason"] and on_onnx["engine_providers"] is None


def test_a_report_names_the_cpu_its_floats_came_from():
    """The sensitivity pass's floats differ between machines (a stream point of `stac` moved
    between two days' runs of one commit), so a report says which processor it ran on."""
    from stac_eval.replay.runner import versions

    cpu = versions()["cpu"]
    assert torch.backends.cpu.get_cpu_capability() in cpu and "cores" in cpu
