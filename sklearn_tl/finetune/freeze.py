"""Freeze specs: which of a fine-tuned network's parameters stay fixed.

A spec is data (None/"none", "backbone", a number of blocks, a fraction of the
blocks, or module-name patterns); :func:`resolve_freeze` turns it into
parameter names of a :class:`~sklearn_tl.finetune.network.FineTuneNetwork`, with blocks
found by :func:`backbone_blocks` in the original network's names.
"""

from __future__ import annotations

import fnmatch
import math
from numbers import Integral, Real

from torch import nn

from ..models.embedder import network_root
from ..models.sources.base import stage_blocks

__all__ = ["BACKBONE_PREFIX", "FREEZE_HELP", "backbone_blocks", "check_freeze_syntax", "resolve_freeze"]

FREEZE_HELP = (
    "freeze must be None or 'none' (train everything), 'backbone' (train only the new head), "
    "an int N (the first N blocks), a float in [0, 1] (that fraction of the blocks, from the input), "
    "or a list of module-name patterns such as ['features.0*', 'layer1']"
)
BACKBONE_PREFIX = "embedder."


def _trunk_root(embedder: nn.Module) -> tuple[nn.Module, str]:
    """The module whose names are the original network's, and its parameter prefix."""
    root = network_root(embedder.trunk)
    return root, "trunk." if root is embedder.trunk else "trunk.network."


def backbone_blocks(embedder: nn.Module) -> list[list[str]]:
    """The backbone's blocks in input-to-output order, as lists of module names.

    Names are those of the original network (``"features.3"``, ``"layer2"``);
    the grouping is the model sources' (:func:`~sklearn_tl.models.sources.base.stage_blocks`).
    """
    root, _ = _trunk_root(embedder)
    return stage_blocks(root)


def check_freeze_syntax(freeze) -> None:
    if freeze is None or (isinstance(freeze, str) and freeze in ("none", "backbone")):
        return
    if isinstance(freeze, bool):
        raise ValueError(f"Unknown freeze spec {freeze!r}: {FREEZE_HELP}.")
    if isinstance(freeze, Integral):
        if freeze < 0:
            raise ValueError(f"Unknown freeze spec {freeze!r}: a number of blocks is >= 0. {FREEZE_HELP}.")
        return
    if isinstance(freeze, Real):
        if not 0.0 <= float(freeze) <= 1.0:
            raise ValueError(f"Unknown freeze spec {freeze!r}: a fraction is in [0, 1]. {FREEZE_HELP}.")
        return
    if isinstance(freeze, (list, tuple)) and freeze and all(isinstance(p, str) for p in freeze):
        return
    hint = ""
    if isinstance(freeze, str):
        hint = f" (for a module-name pattern pass a list: freeze=[{freeze!r}])"
    raise ValueError(f"Unknown freeze spec {freeze!r}{hint}: {FREEZE_HELP}.")


def resolve_freeze(freeze, network: nn.Module) -> list[str]:
    """Names of ``network``'s parameters that ``freeze`` keeps fixed (a ``FineTuneNetwork``)."""
    check_freeze_syntax(freeze)
    names = [n for n, _ in network.named_parameters()]
    backbone = [n for n in names if n.startswith(BACKBONE_PREFIX)]
    if freeze is None or freeze == "none":
        return []
    if freeze == "backbone":
        return backbone
    root, root_prefix = _trunk_root(network.embedder)
    full_prefix = BACKBONE_PREFIX + root_prefix
    if isinstance(freeze, (list, tuple)):
        frozen = set()
        for pattern in freeze:
            matched = {
                n
                for n in names
                if any(
                    fnmatch.fnmatchcase(candidate, p)
                    for candidate in (n, n[len(full_prefix) :] if n.startswith(full_prefix) else None)
                    if candidate is not None
                    for p in (pattern, pattern + ".*")
                )
            }
            if not matched:
                shown = ", ".join(" + ".join(b) for b in backbone_blocks(network.embedder))
                raise ValueError(
                    f"Unknown freeze spec: pattern {pattern!r} matches no parameter of the network. "
                    f"Its blocks are: {shown}."
                )
            frozen |= matched
        return [n for n in names if n in frozen]
    blocks = backbone_blocks(network.embedder)
    if isinstance(freeze, Integral):
        if freeze > len(blocks):
            raise ValueError(
                f"Unknown freeze spec: freeze={freeze} blocks, but this backbone has {len(blocks)} "
                f"(use freeze='backbone' to freeze all of it)."
            )
        count = int(freeze)
    else:
        count = int(math.floor(float(freeze) * len(blocks) + 1e-9))
    modules = [full_prefix + m for block in blocks[:count] for m in block]
    return [n for n in backbone if any(n.startswith(m + ".") for m in modules)]
