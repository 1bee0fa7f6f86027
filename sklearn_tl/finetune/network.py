"""The fine-tuner's network: the featurizer's embedder plus a new classifier head."""

from __future__ import annotations

import copy
from numbers import Integral

import torch
from torch import nn

__all__ = ["FineTuneNetwork", "build_head"]


class FineTuneNetwork(nn.Module):
    """``embedder`` (images in [0, 1] → embeddings) followed by ``head`` (→ logits)."""

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder(x))


def build_head(n_features: int, n_classes: int, head=None, dropout: float = 0.0) -> nn.Module:
    """The new classifier on top of an ``n_features`` embedding.

    ``head`` is None (one linear layer), an int or a sequence of ints (hidden
    widths, each followed by ReLU), a callable ``head(n_features, n_classes)``
    returning a module, or a module (copied). ``dropout`` is applied before
    every linear layer of a built head.
    """
    if isinstance(head, nn.Module):
        module = copy.deepcopy(head)
    elif callable(head):
        module = head(n_features, n_classes)
        if not isinstance(module, nn.Module):
            raise TypeError(f"head(n_features, n_classes) must return a torch.nn.Module; got {type(module).__name__}.")
    else:
        hidden = () if head is None else (head,) if isinstance(head, Integral) else tuple(head)
        if any(not isinstance(h, Integral) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"head must list positive hidden widths, e.g. (256,); got {head!r}.")
        layers, width = [], n_features
        for h in hidden:
            layers += [nn.Dropout(dropout)] if dropout else []
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        layers += [nn.Dropout(dropout)] if dropout else []
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    with torch.no_grad():
        out = module.eval()(torch.zeros(2, n_features))
    if out.shape != (2, n_classes):
        raise ValueError(
            f"The head maps a ({2}, {n_features}) embedding to shape {tuple(out.shape)}; "
            f"it must give ({2}, {n_classes}) logits for the {n_classes} classes."
        )
    return module
