"""torchvision's classification models: ``torchvision.models.get_model`` and its weights enums."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ...data.config import DataConfig
from ..weights import resolve_enum_weights, resolve_none_or_file, weights_enum_for
from .base import ModelSource

__all__ = ["TorchvisionSource", "children_before_global_pool", "InceptionInputTransform"]


class TorchvisionSource(ModelSource):
    name = "torchvision"
    static_data_config = True  # the weights enum's metadata describes the preprocessing

    def spec_for(self, name):
        from torchvision import models as tvm
        from torchvision.models import list_models

        from ..spec import BackboneSpec

        if name in list_models(module=tvm):
            # Unregistered torchvision classifier: width is found by a forward pass.
            return BackboneSpec(name=name, family="torchvision", n_features=0)
        return None

    def build_network(self, spec, pretrained):
        from torchvision.models import get_model

        kwargs = {**spec.build_kwargs, **(spec.pretrained_kwargs if pretrained else {})}
        return get_model(spec.name, weights=None, **kwargs)

    def resolve_weights(self, spec, weights):
        enum_cls = weights_enum_for(spec.name)
        resolved = resolve_none_or_file(spec.name, weights, enum_cls)
        return resolved if resolved is not None else resolve_enum_weights(spec.name, weights, enum_cls)

    def data_config(self, spec, weights, network):
        member = weights.enum
        if member is None:
            # Random init or a bare file: the architecture's default weights still
            # describe its native input size and preprocessing.
            enum_cls = weights_enum_for(spec.name)
            member = enum_cls.DEFAULT if enum_cls is not None else None
        return data_config_of(member) if member is not None else DataConfig()

    def trunk(self, spec, network):
        return children_before_global_pool(network, spec.name)


def data_config_of(enum_member) -> DataConfig:
    """The preprocessing of torchvision weights, from their ``ImageClassification`` preset."""
    preset = enum_member.transforms()
    min_size = enum_member.meta.get("min_size", (1, 1))
    return DataConfig(
        crop_size=int(preset.crop_size[0]),
        resize_size=int(preset.resize_size[0]),
        interpolation=preset.interpolation.value,
        mean=tuple(float(m) for m in preset.mean),
        std=tuple(float(s) for s in preset.std),
        min_size=int(max(min_size)),
    )


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


def densenet_trunk(network: nn.Module) -> nn.Module:
    # torchvision applies the final ReLU functionally in DenseNet.forward.
    return nn.Sequential(OrderedDict(features=network.features, relu=nn.ReLU(inplace=False)))


class InceptionInputTransform(nn.Module):
    """Inception v3's re-normalisation for Google's weights (``transform_input``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5


def inception_trunk(network: nn.Module) -> nn.Module:
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

