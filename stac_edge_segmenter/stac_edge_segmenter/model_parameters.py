"""The model parameters every edge node declares, and loading the model they describe.

Shared by the segmenter and the sensitivity node (and the edge container that runs both on
one model), so it lives here, beside the loader, not in either node. `ENGINE_PARAMETERS` are
declared by the node that segments frames (the segmenter, alone or in the edge container):
the sensitivity pass needs gradients and always runs on torch.
"""

from __future__ import annotations

import torch

from stac_edge_segmenter.engine_cache import DEFAULT_ENGINE_CACHE_DIR, EngineCache
from stac_edge_segmenter.engines import (
    DEFAULT_ENGINE,
    ENGINE_NAMES,
    FallbackEngine,
    LogFn,
    create_engine,
)
from stac_edge_segmenter.loading import SegmentationModel, load_model
from stac_ros_common.parameter_spec import ParameterSpec

MODEL_PARAMETERS = (
    ParameterSpec(
        "model_config", "", "Model configuration YAML; empty = the shipped CamVid model."
    ),
    ParameterSpec("device", "", "torch device ('cpu', 'cuda', 'cuda:1'); empty = automatic."),
    ParameterSpec(
        "torch_threads",
        0,
        "CPU threads for the model (torch, and ONNX Runtime's engines); 0 = the library's default.",
        0,
        256,
    ),
)
ENGINE_PARAMETERS = (
    ParameterSpec(
        "engine",
        DEFAULT_ENGINE,
        "Inference engine of the segmentation forward: torch (eager), onnxruntime (the model "
        "exported to ONNX at start; CUDA/TensorRT providers on a GPU) or onnxruntime_int8 (int8 "
        "with the activation ranges stored beside the weights). Falls back to torch, saying why "
        "once, where ONNX Runtime cannot run the model.",
        choices=ENGINE_NAMES,
    ),
    ParameterSpec(
        "engine_cache_dir",
        DEFAULT_ENGINE_CACHE_DIR,
        "Directory of checked ONNX graphs kept between starts (keyed by weights, model "
        "configuration, int8 ranges, library versions and engine code), so a restarted edge "
        "skips the export and checks; empty = build at every start.",
    ),
)


def load_model_from(params: dict) -> SegmentationModel:
    """The model the MODEL_PARAMETERS of a node describe."""
    if params["torch_threads"]:
        torch.set_num_threads(params["torch_threads"])
    return load_model(params["model_config"] or None, params["device"] or None)


def engine_from(params: dict, model: SegmentationModel, log: LogFn) -> FallbackEngine:
    """The engine ENGINE_PARAMETERS ask for, on `model`; `log` hears once if it is not."""
    cache_dir = params["engine_cache_dir"]
    cache = EngineCache(cache_dir) if cache_dir else None
    choice = create_engine(model, params["engine"], params["torch_threads"], cache)
    return FallbackEngine(choice, model, log)
