"""Cutting a trunk after named layers, at build time.

The cut is a plain module, traced with FX: the graph runs up to the last
layer asked for and returns each layer's output, so ``torch.compile`` and
``torch.onnx.export`` see one ordinary graph. Module names stay the original
network's (FX keeps the module hierarchy), so BatchNorm folding still finds
each convolution next to its BatchNorm.

Every cut is checked on a probe batch against forward hooks on the uncut
trunk (what the layer really outputs); a trunk FX cannot trace, or a cut that
disagrees, is replaced by :class:`HookedLayers`, which runs the whole trunk
and copies the outputs with forward hooks: slower, never wrong.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import torch
from torch import fx, nn

__all__ = ["CutTrunk", "HookedLayers", "cut_trunk"]


class CutTrunk(nn.Module):
    """A trunk cut after ``layers``: images → a tuple of their outputs, in that order.

    ``root_path`` is where, under this module, the original network's names start
    (``"body"``, or ``"body.network"`` for a timm model).
    """

    def __init__(self, body: nn.Module, layers: tuple, root_path: str):
        super().__init__()
        self.body = body
        self.layers = tuple(layers)
        self.root_path = root_path

    def forward(self, x: torch.Tensor) -> tuple:
        return self.body(x)


class HookedLayers(nn.Module):
    """The whole trunk, with forward hooks that keep the first output of each layer."""

    def __init__(self, trunk: nn.Module, layers: tuple, root_path: str = ""):
        super().__init__()
        self.trunk = trunk
        self.layers = tuple(layers)
        self._outputs: dict = {}
        root = trunk.get_submodule(root_path)
        self._handles = [root.get_submodule(n).register_forward_hook(partial(self._keep, n)) for n in self.layers]

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep(self, name, _module, _inputs, output) -> None:  # returns None: the output is not replaced
        if name not in self._outputs:  # the first call, as in the network's order
            self._outputs[name] = output.clone()  # a later in-place op must not change it

    def forward(self, x: torch.Tensor) -> tuple:
        self._outputs = {}
        try:
            self.trunk(x)
            missing = [n for n in self.layers if n not in self._outputs]
            if missing:
                raise ValueError(f"Layer {missing[0]!r} is not reached by the backbone's forward pass.")
            return tuple(self._outputs[n] for n in self.layers)
        finally:
            self._outputs = {}


def _fx_graph(trunk: nn.Module, nodes: list[str], extractor: Callable) -> fx.GraphModule:
    """An eval-mode graph of ``trunk`` returning the outputs of ``nodes`` as a tuple."""
    from torchvision.models.feature_extraction import create_feature_extractor

    extractor = extractor or partial(create_feature_extractor, suppress_diff_warning=True)
    training = trunk.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings (train/eval graph differences) are not the user's
        dual = extractor(trunk.eval(), {node: node for node in nodes})
    trunk.train(training)
    graph = fx.Graph()
    out = graph.graph_copy(dual.graph, {})  # the eval graph: the featurizer never trains
    values = [out[node] for node in nodes]
    for i, value in enumerate(values):
        if len(value.users) > 0:  # used later in the graph: an in-place op there must not change it
            with graph.inserting_after(value):
                values[i] = graph.call_method("clone", (value,))
    graph.output(tuple(values))  # the extractor removed every node these do not need
    return fx.GraphModule(dual, graph, type(trunk).__name__ + "Cut")


def _hooked_reference(trunk: nn.Module, layers: tuple, root_path: str, probe: torch.Tensor):
    """The layers' outputs on ``probe``, taken by forward hooks on the uncut trunk."""
    hooked = HookedLayers(trunk, layers, root_path)
    try:
        return hooked(probe)
    finally:
        hooked.remove_hooks()


def _same(actual, expected) -> bool:
    if not isinstance(actual, tuple) or len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        if not isinstance(a, torch.Tensor) or a.shape != e.shape:
            return False
        scale = float(e.abs().max().clamp(min=1e-6)) if e.numel() else 1.0
        if not torch.allclose(a.float(), e.float(), rtol=1e-4, atol=1e-5 * scale):
            return False
    return True


def cut_trunk(trunk: nn.Module, layers: tuple, probe: torch.Tensor, root_path: str = "",
              extractor: Callable | None = None) -> CutTrunk:
    """``trunk`` cut after ``layers`` (names under ``root_path``), checked on ``probe``.

    ``extractor(module, return_nodes)`` is an FX feature extractor with
    torchvision's ``create_feature_extractor`` signature (timm passes its own,
    which knows timm's leaf modules); torchvision's is the default.
    """
    prefix = f"{root_path}." if root_path else ""
    trunk.eval()
    with torch.inference_mode():
        expected = _hooked_reference(trunk, layers, root_path, probe)
    try:
        graph = _fx_graph(trunk, [prefix + name for name in layers], extractor)
        with torch.inference_mode():
            if _same(graph(probe), expected):
                return CutTrunk(graph, layers, _joined("body", root_path))
    except Exception:  # noqa: BLE001  (FX cannot trace every module: the hooks below always work)
        pass
    return CutTrunk(HookedLayers(trunk, layers, root_path), layers, _joined("body.trunk", root_path))


def _joined(*paths: str) -> str:
    return ".".join(p for p in paths if p)
