"""This module contains :class:`ModelSource`, the interface of a model source."""

from __future__ import annotations

import torch
from torch import nn

from ...data.config import DataConfig
from ..weights import ResolvedWeights
from .cut import cut_trunk

__all__ = ["ModelSource", "stage_blocks"]


class ModelSource:
    """The interface of a model source; the defaults suit plain PyTorch modules.

    ``backbone`` below is a :class:`~sklearn_tl.models.spec.BackboneSpec` for
    the named sources, the user's module for ``"module"``.
    """

    name: str = ""
    #: The preprocessing is known from the weights' metadata alone, without building the network.
    static_data_config: bool = False
    #: Where, inside the trunk, the modules carry the original network's names.
    root_path: str = ""
    #: Top-level containers whose children are the network's blocks (``features.3``, ``blocks.2``).
    stage_containers: tuple = ("features", "blocks", "stages", "layers")

    # -- names ------------------------------------------------------------
    def spec_for(self, name: str):
        """A :class:`BackboneSpec` for an unregistered ``name`` this library builds, else None."""
        return None

    def unavailable_hint(self) -> str | None:
        """Why this source cannot build anything here (library not installed), else None."""
        return None

    # -- building ---------------------------------------------------------
    def build_network(self, backbone, pretrained: bool) -> nn.Module:
        """The full network with random (or, under ``torch.device("meta")``, no) weights."""
        raise NotImplementedError

    def resolve_weights(self, backbone, weights) -> ResolvedWeights:
        raise NotImplementedError

    def load(self, backbone, weights) -> tuple[nn.Module, ResolvedWeights]:
        """The network with ``weights`` loaded, and what they resolved to."""
        resolved = self.resolve_weights(backbone, weights)
        if not resolved.pretrained:
            return self.build_network(backbone, pretrained=False), resolved
        with torch.device("meta"):  # no random initialisation: the weights overwrite every tensor
            network = self.build_network(backbone, pretrained=True)
        persistent = set(network.state_dict())
        if any(name not in persistent for name, _ in network.named_buffers()):
            network = self.build_network(backbone, pretrained=True)  # non-persistent buffers need their init
        else:
            network = network.to_empty(device="cpu")
        load_strict(network, resolved, repr(backbone.name))  # every parameter and buffer is set
        return network, resolved

    def data_config(self, backbone, weights: ResolvedWeights, network: nn.Module | None):
        """The preprocessing the weights were trained with (a :class:`DataConfig`)."""
        return DataConfig()

    def trunk(self, backbone, network: nn.Module) -> nn.Module:
        """``network`` cut before its global pool: images to the last feature map."""
        return network

    def make_trunk(self, backbone, network: nn.Module) -> nn.Module:
        """The trunk: from the spec's own ``trunk`` function where it has one, else :meth:`trunk`."""
        own = None if isinstance(backbone, nn.Module) else getattr(backbone, "trunk", None)  # a BackboneSpec's
        return own(network) if own is not None else self.trunk(backbone, network)

    # -- layers -----------------------------------------------------------
    def cut(self, trunk: nn.Module, layers: tuple, probe: torch.Tensor) -> nn.Module:
        """``trunk`` cut after ``layers`` (original names): returns their outputs, in order."""
        return cut_trunk(trunk, layers, probe, root_path=self.root_path)

    def blocks(self, network: nn.Module) -> list[list[str]]:
        """The network's blocks, input to output, as lists of module names (for freezing)."""
        return stage_blocks(network, self.stage_containers)


def load_strict(network: nn.Module, weights: ResolvedWeights, label: str) -> None:
    """Load ``weights`` into ``network``; a mismatch names the first differing keys."""
    try:
        network.load_state_dict(weights.state_dict, strict=True)
    except RuntimeError as exc:
        expected = set(network.state_dict())
        given = set(weights.state_dict)
        missing = sorted(expected - given)[:5]
        unexpected = sorted(given - expected)[:5]
        detail = f"missing keys {missing}, unexpected keys {unexpected}" if missing or unexpected else str(exc)
        raise ValueError(f"Weights {weights.name} do not fit backbone {label}: {detail}.") from None


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def stage_blocks(root: nn.Module, stage_containers=ModelSource.stage_containers) -> list[list[str]]:
    """The blocks of ``root`` in input-to-output order, as lists of module names.

    A single container holding everything (``features`` of MobileNet) is looked
    into; its children are the blocks, as are the children of a container named
    in ``stage_containers``. Consecutive leaf layers (a stem ``conv1``, ``bn1``,
    ``relu``, ``maxpool``) form one block, closed by a pool or by the next
    convolution.
    """
    node, prefix = root, ""
    while True:
        holders = [(n, c) for n, c in node.named_children() if _has_params(c)]
        if len(holders) == 1 and next(holders[0][1].children(), None) is not None:
            node, prefix = holders[0][1], f"{prefix}{holders[0][0]}."
            continue
        break
    blocks, group = [], []

    def close():
        if group and any(_has_params(node.get_submodule(n[len(prefix) :])) for n in group):
            blocks.append(list(group))
        group.clear()

    for name, child in node.named_children():
        if next(child.children(), None) is None:
            if isinstance(child, _CONVS) and any(
                isinstance(node.get_submodule(n[len(prefix) :]), _CONVS) for n in group
            ):
                close()  # a flat stack of layers (VGG): one block per convolution
            group.append(prefix + name)
            if isinstance(child, _POOLS):
                close()
            continue
        close()
        if name in stage_containers and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks.extend([f"{prefix}{name}.{n}"] for n, c in child.named_children() if _has_params(c))
        elif _has_params(child):
            blocks.append([prefix + name])
    close()
    return blocks
