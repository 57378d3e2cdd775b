"""The model parameters every edge node declares, and loading the model they describe.

Shared by the segmenter and the sensitivity node (and the edge container that runs both on
one model), so it lives here, beside the loader, not in either node.
"""

from __future__ import annotations

import torch

from stac_edge_segmenter.loading import SegmentationModel, load_model
from stac_ros_common.parameter_spec import ParameterSpec

MODEL_PARAMETERS = (
    ParameterSpec(
        "model_config", "", "Model configuration YAML; empty = the shipped CamVid model."
    ),
    ParameterSpec("device", "", "torch device ('cpu', 'cuda', 'cuda:1'); empty = automatic."),
    ParameterSpec("torch_threads", 0, "CPU threads for the model; 0 = torch's default.", 0, 256),
)


def load_model_from(params: dict) -> SegmentationModel:
    """The model the MODEL_PARAMETERS of a node describe."""
    if params["torch_threads"]:
        torch.set_num_threads(params["torch_threads"])
    return load_model(params["model_config"] or None, params["device"] or None)
