"""The backbone registry: one declarative spec per architecture.

A backbone is turned into a *trunk*, a module that maps a normalised image batch
``(N, 3, H, W)`` to the network's last feature map ``(N, C, h, w)``. Pooling and
normalisation are added by :class:`sklearn_tl._model.ImageEmbedder`, so every
family gives an embedding the same way, whatever its own classifier looks like.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["BackboneSpec", "list_backbones", "get_backbone_spec", "register_backbone"]

TIMM_EXTRA_HINT = "pip install 'sklearn_tl[timm]'"


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
    source : {"torchvision", "timm"}
        Library that builds the network.
    feature_layer : str
        Name, in the original network, of the module whose output is the last
        feature map; documented and checked by the tests.
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
    feature_layer: str = "features"
    trunk: Callable[[nn.Module], nn.Module] | None = None
    pretrained_kwargs: dict = field(default_factory=dict)
    build_kwargs: dict = field(default_factory=dict)

    def build_network(self, pretrained: bool) -> nn.Module:
        """Build the full network with random weights (weights are loaded later)."""
        if self.source == "timm":
            timm = import_timm(self.name)
            return timm.create_model(self.name, pretrained=False)
        from torchvision.models import get_model

        kwargs = {**self.build_kwargs, **(self.pretrained_kwargs if pretrained else {})}
        return get_model(self.name, weights=None, **kwargs)

    def build_trunk(self, network: nn.Module) -> nn.Module:
        if self.trunk is not None:
            return self.trunk(network)
        if self.source == "timm":
            return TimmTrunk(network)
        return children_before_global_pool(network, self.name)


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
    from torchvision import models as tvm
    from torchvision.models import list_models

    if key in list_models(module=tvm):
        # Unregistered torchvision classifier: width is found by a forward pass.
        return BackboneSpec(name=key, family="torchvision", n_features=0)
    try:
        import timm
    except ImportError:
        timm = None
    if timm is not None and timm.is_model(key):
        return BackboneSpec(name=key, family="timm", n_features=0, source="timm")
    hint = "" if timm is not None else f" (timm models need the timm extra: {TIMM_EXTRA_HINT})"
    raise ValueError(
        f"Unknown backbone {name!r}{hint}. Registered backbones: "
        f"{', '.join(list_backbones())}; any torchvision classification model name, "
        "any timm model name, or a torch.nn.Module also work."
    )


def import_timm(for_name: str):
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f"Backbone {for_name!r} is built by timm, which is not installed. "
            f"Install it with: {TIMM_EXTRA_HINT}"
        ) from exc
    return timm


# ---------------------------------------------------------------------------
# Trunks: cut a network before its global pooling.


def _is_head(module: nn.Module) -> bool:
    """A global pool, a container of one (not nested deeper, as in SE blocks), or a Linear."""
    pools = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    if isinstance(module, pools) or any(isinstance(m, pools) for m in module.children()):
        return True
    return any(isinstance(m, nn.Linear) for m in module.modules())


def children_before_global_pool(network: nn.Module, name: str = "model") -> nn.Sequential:
    """The top-level children of ``network`` before its head.

    The head is the first child that is, or holds, a global pool or a linear
    layer. Children keep their names, so state-dict keys stay torchvision's.
    """
    kept = OrderedDict()
    for child_name, child in network.named_children():
        if _is_head(child):
            if not kept:
                break
            return nn.Sequential(kept)
        kept[child_name] = child
    raise ValueError(
        f"Cannot find where the feature map of {name!r} ends. Pass `layer=` with a "
        "module name, or pass your own torch.nn.Module."
    )


def _densenet_trunk(network: nn.Module) -> nn.Module:
    # torchvision applies the final ReLU functionally in DenseNet.forward.
    return nn.Sequential(OrderedDict(features=network.features, relu=nn.ReLU(inplace=False)))


class InceptionInputTransform(nn.Module):
    """Inception v3's re-normalisation for Google's weights (``transform_input``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5


def _inception_trunk(network: nn.Module) -> nn.Module:
    kept = OrderedDict()
    if getattr(network, "transform_input", False):
        kept["transform_input"] = InceptionInputTransform()
    for child_name, child in network.named_children():
        if child_name == "AuxLogits":  # a training-only side branch
            continue
        if child_name == "avgpool":
            break
        kept[child_name] = child
    return nn.Sequential(kept)


class TimmTrunk(nn.Module):
    """A timm model's ``forward_features``: its unpooled feature map."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)


# ---------------------------------------------------------------------------
# The registry. Widths are checked against a real forward pass in the tests.


def _register_family(family, widths, feature_layer, **kwargs):
    for name, width in widths.items():
        register_backbone(
            BackboneSpec(name=name, family=family, n_features=width, feature_layer=feature_layer, **kwargs)
        )


_register_family("vgg", {"vgg16": 512, "vgg16_bn": 512}, "features")
_register_family(
    "mobilenet",
    {"mobilenet_v2": 1280, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960},
    "features",
)
_register_family(
    "densenet",
    {"densenet121": 1024, "densenet169": 1664, "densenet201": 1920},
    "features",
    trunk=_densenet_trunk,
)
_register_family(
    "inception",
    {"inception_v3": 2048},
    "Mixed_7c",
    trunk=_inception_trunk,
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
    "layer4",
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
    "features",
)
_register_family(
    "nasnet",
    {"nasnetalarge": 4032, "pnasnet5large": 4320},
    "forward_features",
    source="timm",
)
