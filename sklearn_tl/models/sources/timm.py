"""timm's models: ``timm.create_model``, ``pretrained_cfg`` and ``forward_features``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...data.config import DataConfig
from ...exceptions import WeightsNotFoundError
from ..weights import resolve_none_or_file, resolve_url_weights
from .base import ModelSource
from .cut import cut_trunk

__all__ = ["TimmSource", "TimmTrunk", "import_timm", "TIMM_EXTRA_HINT"]

TIMM_EXTRA_HINT = "pip install 'sklearn_tl[timm]'"


def import_timm(for_name: str):
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f"Backbone {for_name!r} is built by timm, which is not installed. "
            f"Install it with: {TIMM_EXTRA_HINT}"
        ) from exc
    return timm


class TimmTrunk(nn.Module):
    """A timm model's ``forward_features``: its unpooled feature map."""

    root_path = "network"

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)


class TimmSource(ModelSource):
    name = "timm"
    root_path = TimmTrunk.root_path

    def spec_for(self, name):
        try:
            import timm
        except ImportError:
            return None
        from ..spec import BackboneSpec

        if timm.is_model(name):
            return BackboneSpec(name=name, family="timm", n_features=0, source="timm")
        return None

    def unavailable_hint(self):
        try:
            import timm  # noqa: F401
        except ImportError:
            return f"timm models need the timm extra: {TIMM_EXTRA_HINT}"
        return None

    def build_network(self, spec, pretrained):
        return import_timm(spec.name).create_model(spec.name, pretrained=False)

    def resolve_weights(self, spec, weights):
        resolved = resolve_none_or_file(spec.name, weights)
        if resolved is not None:
            return resolved
        if weights != "DEFAULT":
            raise ValueError(
                f"timm backbone {spec.name!r} accepts weights=None, 'DEFAULT' or a file path; got {weights!r}."
            )
        return resolve_url_weights(_weights_url(spec.name), f"timm's {spec.name}")

    def data_config(self, spec, weights, network):
        return data_config_of(network)

    def trunk(self, spec, network):
        return TimmTrunk(network)

    def cut(self, trunk, layers, probe):
        # timm's FX extractor knows timm's leaf modules and functions that FX cannot trace.
        from timm.models import create_feature_extractor

        return cut_trunk(trunk, layers, probe, root_path=self.root_path, extractor=create_feature_extractor)


def data_config_of(network: nn.Module) -> DataConfig:
    """The preprocessing of a timm model, from its ``pretrained_cfg``."""
    from timm.data import resolve_data_config as timm_resolve

    cfg = timm_resolve({}, model=network)
    crop = int(cfg["input_size"][-1])
    return DataConfig(
        crop_size=crop,
        resize_size=int(math.floor(crop / cfg["crop_pct"])),
        interpolation=cfg["interpolation"],
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
    )


def _weights_url(name):
    timm = import_timm(name)
    cfg = timm.models.get_pretrained_cfg(name)
    url = getattr(cfg, "url", None) if cfg is not None else None
    if not url:
        hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        where = f" (its weights are on the Hugging Face hub as {hub!r})" if hub else ""
        raise WeightsNotFoundError(
            f"timm's {name!r} has no direct weights URL{where}; download the state dict "
            "(.pth or .safetensors) and pass weights='/path/to/file'."
        )
    return url

