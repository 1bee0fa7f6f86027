"""This module contains :class:`ImageEmbedder` (normalise → trunk → global pool) and :class:`GlobalPool`."""

from __future__ import annotations

import torch
from torch import nn

from .sources.cut import CutTrunk
from .sources.timm import TimmTrunk

__all__ = ["GlobalPool", "ImageEmbedder", "POOLINGS"]

POOLINGS = ("avg", "max", "gem")


class GlobalPool(nn.Module):
    """Pool a feature map ``(N, C, h, w)`` (or tokens ``(N, L, C)``) to ``(N, C)``.

    ``"gem"`` is generalised-mean pooling (p=3), which sits between average and
    max pooling and is the usual choice for image retrieval.
    """

    def __init__(self, mode: str = "avg", p: float = 3.0):
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {mode!r}.")
        self.mode = mode
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return x
        dims = tuple(range(2, x.ndim)) if x.ndim == 4 else (1,)
        if self.mode == "avg":
            return x.mean(dim=dims)
        if self.mode == "max":
            return x.amax(dim=dims)
        return x.float().clamp(min=1e-6).pow(self.p).mean(dim=dims).pow(1.0 / self.p)


class ImageEmbedder(nn.Module):
    """Images in [0, 1] ``(N, 3, H, W)`` → embeddings ``(N, D)``.

    Parameters
    ----------
    trunk : nn.Module
        Maps normalised images to a feature map (or to embeddings), or to a
        tuple of them (a trunk cut after several layers): each is pooled, and
        the pooled vectors are concatenated in order.
    mean, std : sequence of float
        Per-channel normalisation, applied on the device.
    pooling : {"avg", "max", "gem"}
    layer : str, tuple of str or None
        The layers ``trunk`` was cut after (see :func:`build_embedder`); a record only.
    """

    def __init__(self, trunk: nn.Module, mean, std, pooling: str = "avg", layer=None):
        super().__init__()
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.pool = GlobalPool(pooling)
        self.layer = layer

    def feature_map(self, x: torch.Tensor):
        """The trunk's output on images ``x``: a feature map, or a tuple of them."""
        return self.trunk((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.feature_map(x)
        if isinstance(maps, (tuple, list)):
            return torch.cat([self.pool(m) for m in maps], dim=1)
        return self.pool(maps)


def network_root(trunk: nn.Module) -> nn.Module:
    """The module under ``trunk`` whose submodule names are the original network's."""
    return trunk.get_submodule(trunk.root_path) if isinstance(trunk, (TimmTrunk, CutTrunk)) else trunk


def find_layer(trunk: nn.Module, name: str) -> nn.Module:
    """The module called ``name`` (as named in the original network)."""
    root = network_root(trunk)
    try:
        return root.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in root.named_modules() if n and n.count(".") <= 1]
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise ValueError(f"Unknown layer {name!r}; layers of this backbone include: {shown}.") from None
