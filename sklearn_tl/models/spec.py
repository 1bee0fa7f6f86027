"""This module contains :class:`BackboneSpec`, what the package knows about one architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .source_registry import get_source

__all__ = ["BackboneSpec"]


@dataclass(frozen=True)
class BackboneSpec:
    """What the package knows about one architecture.

    Parameters
    ----------
    name : str
        Registry name, lower case (``"resnet50"``).
    family : str
        Architecture family (``"resnet"``), used for filtering and freeze specs.
    n_features : int
        Width of the pooled embedding (channels of the last feature map).
    source : {"torchvision", "timm"} or the name of another registered model source
        Library that builds the network (see :mod:`sklearn_tl.models.sources`).
    trunk : callable
        ``trunk(network) -> nn.Module`` cutting the network before its global pool.
    pretrained_kwargs : dict
        Builder arguments needed for the architecture to accept pretrained
        weights (for example Inception's input transform).
    build_kwargs : dict
        Builder arguments always passed.
    """

    name: str
    family: str
    n_features: int
    source: str = "torchvision"
    trunk: Callable[[nn.Module], nn.Module] | None = None
    pretrained_kwargs: dict = field(default_factory=dict)
    build_kwargs: dict = field(default_factory=dict)

    def build_network(self, pretrained: bool) -> nn.Module:
        """Build the full network with random weights (weights are loaded later)."""
        return get_source(self.source).build_network(self, pretrained)

    def build_trunk(self, network: nn.Module) -> nn.Module:
        return get_source(self.source).make_trunk(self, network)
