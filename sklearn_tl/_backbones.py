"""The backbone registry: one declarative spec per architecture.

A backbone is turned into a *trunk*, a module that maps a normalised image batch
``(N, 3, H, W)`` to the network's last feature map ``(N, C, h, w)``. Pooling and
normalisation are added by :class:`sklearn_tl._model.ImageEmbedder`, so every
family gives an embedding the same way, whatever its own classifier looks like.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ._sources import get_source, sources
from ._sources.timm import TIMM_EXTRA_HINT, TimmTrunk, import_timm  # noqa: F401  (imported from here)
from ._sources.torchvision import densenet_trunk, inception_trunk

__all__ = ["BackboneSpec", "list_backbones", "get_backbone_spec", "register_backbone"]


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
        Library that builds the network (see :mod:`sklearn_tl._sources`).
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


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry; a name can be registered only once."""
    name = spec.name.lower()
    if name in _REGISTRY:
        raise ValueError(f"Backbone {name!r} is already registered.")
    _REGISTRY[name] = spec
    return spec


def list_backbones(include: str | None = None, exclude: str | None = None) -> list[str]:
    """Names of the registered backbones, sorted, filtered with fnmatch patterns.

    Any other torchvision classification model name, any timm model name (with
    the ``timm`` extra) and any ``torch.nn.Module`` are accepted as well.

    Examples
    --------
    >>> from sklearn_tl import list_backbones
    >>> list_backbones("resnet1*")
    ['resnet101', 'resnet152', 'resnet18']
    """
    names = sorted(_REGISTRY)
    if include is not None:
        names = [n for n in names if fnmatch.fnmatch(n, include.lower())]
    if exclude is not None:
        names = [n for n in names if not fnmatch.fnmatch(n, exclude.lower())]
    return names


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec for ``name``: registered, else any torchvision or timm model.

    Raises a ``ValueError`` listing the known names when ``name`` is unknown.
    """
    key = name.lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    for source in sources():
        spec = source.spec_for(key)
        if spec is not None:
            return spec
    hints = [hint for hint in (source.unavailable_hint() for source in sources()) if hint]
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ValueError(
        f"Unknown backbone {name!r}{hint}. Registered backbones: "
        f"{', '.join(list_backbones())}; any torchvision classification model name, "
        "any timm model name, or a torch.nn.Module also work."
    )


# ---------------------------------------------------------------------------
# The registry. Widths are checked against a real forward pass in the tests.


def _register_family(family, widths, **kwargs):
    for name, width in widths.items():
        register_backbone(BackboneSpec(name=name, family=family, n_features=width, **kwargs))


_register_family("vgg", {"vgg16": 512, "vgg16_bn": 512})
_register_family(
    "mobilenet",
    {"mobilenet_v2": 1280, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960},
)
_register_family(
    "densenet",
    {"densenet121": 1024, "densenet169": 1664, "densenet201": 1920},
    trunk=densenet_trunk,
)
_register_family(
    "inception",
    {"inception_v3": 2048},
    trunk=inception_trunk,
    pretrained_kwargs={"transform_input": True, "aux_logits": True},
    # torchvision's own init is a slow truncated normal; weights are loaded or random anyway.
    build_kwargs={"init_weights": False},
)
_register_family(
    "resnet",
    {
        "resnet18": 512,
        "resnet34": 512,
        "resnet50": 2048,
        "resnet101": 2048,
        "resnet152": 2048,
        "resnext50_32x4d": 2048,
        "resnext101_32x8d": 2048,
        "resnext101_64x4d": 2048,
        "wide_resnet50_2": 2048,
        "wide_resnet101_2": 2048,
    },
)
_register_family(
    "efficientnet",
    {
        "efficientnet_b0": 1280,
        "efficientnet_b1": 1280,
        "efficientnet_b2": 1408,
        "efficientnet_b3": 1536,
        "efficientnet_b4": 1792,
        "efficientnet_b5": 2048,
        "efficientnet_b6": 2304,
        "efficientnet_b7": 2560,
        "efficientnet_v2_s": 1280,
        "efficientnet_v2_m": 1280,
        "efficientnet_v2_l": 1280,
    },
)
_register_family(
    "nasnet",
    {"nasnetalarge": 4032, "pnasnet5large": 4320},
    source="timm",
)
