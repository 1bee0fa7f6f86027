"""The backbone registry: one declarative spec per architecture.

A backbone is turned into a *trunk*, a module that maps a normalised image batch
``(N, 3, H, W)`` to the network's last feature map ``(N, C, h, w)``. Pooling and
normalisation are added by :class:`sklearn_tl.models.embedder.ImageEmbedder`, so every
family gives an embedding the same way, whatever its own classifier looks like.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from ..data.config import DataConfig
from .source_registry import get_source, sources
from .sources.torchvision import densenet_trunk, inception_trunk
from .spec import BackboneSpec
from .weights import ResolvedWeights

__all__ = ["list_backbones", "get_backbone_spec", "register_backbone", "source_for", "resolve_weights"]

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


def native_data_config(spec, weights, network) -> DataConfig:
    """The architecture's own preprocessing, from the weights' metadata (its model source reads it)."""
    if spec is None:
        return DataConfig()
    return get_source(spec.source).data_config(spec, weights, network)


def resolve_weights(spec, weights) -> ResolvedWeights:
    """Resolve ``weights`` for the backbone described by ``spec`` (its model source decides)."""
    return get_source(spec.source).resolve_weights(spec, weights)


def source_for(backbone):
    """``(source, backbone)`` for an estimator's ``backbone``: a spec for a name, the module itself."""
    if isinstance(backbone, nn.Module):
        return get_source("module"), backbone
    spec = get_backbone_spec(backbone)
    return get_source(spec.source), spec
