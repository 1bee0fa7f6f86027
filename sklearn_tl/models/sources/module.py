"""A ``torch.nn.Module`` the user passes as the backbone: used as it is, as the trunk."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from ..weights import ResolvedWeights, check_hash, load_state_dict_file
from .base import ModelSource, load_strict

__all__ = ["ModuleSource"]


class ModuleSource(ModelSource):
    """The module maps ``(N, 3, H, W)`` to a feature map or to embeddings; its own or ImageNet preprocessing."""

    name = "module"

    def load(self, backbone, weights):
        module = copy.deepcopy(backbone)  # never train or move the caller's module
        if weights is None:
            # Random initialisation, as for named backbones (seeded by build_embedder).
            for submodule in module.modules():
                if hasattr(submodule, "reset_parameters"):
                    submodule.reset_parameters()
            return module, ResolvedWeights(None, None, None)
        if isinstance(weights, str) and weights == "DEFAULT":
            # The module's own parameters are its weights.
            return module, ResolvedWeights(None, f"{type(backbone).__name__} (as given)", None)
        if not isinstance(weights, (str, os.PathLike)) or not Path(weights).is_file():
            raise ValueError(
                f"For a torch.nn.Module backbone, weights must be 'DEFAULT' (keep its parameters), "
                f"None, or a state-dict file; got {weights!r}."
            )
        path = Path(weights)
        resolved = ResolvedWeights(load_state_dict_file(path), str(path), check_hash(path))
        load_strict(module, resolved, type(backbone).__name__)
        return module, resolved


    def data_config(self, backbone, weights, network):
        # A timm model instance carries the preprocessing it was trained with; other modules get ImageNet's.
        if network is not None and isinstance(getattr(network, "pretrained_cfg", None), dict):
            from .timm import data_config_of

            return data_config_of(network)
        return super().data_config(backbone, weights, network)
