"""Model sources: one adapter per library, and a new library is one new class."""

import numpy as np
import pytest
import torch
from torch import nn

import sklearn_tl.models.registry as backbones
import sklearn_tl.models.source_registry as sources_module
from sklearn_tl import BackboneSpec, PretrainedCNNFeaturizer, get_backbone_spec
from sklearn_tl.finetune.freeze import backbone_blocks
from sklearn_tl.models.build import build_embedder
from sklearn_tl.models.embedder import network_root
from sklearn_tl.data.config import DataConfig
from sklearn_tl.models.sources import ModelSource, get_source, sources
from sklearn_tl.models.registry import source_for
from sklearn_tl.models.weights import resolve_none_or_file


def test_names_are_looked_up_in_torchvision_first_then_timm():
    assert [s.name for s in sources()] == ["torchvision", "timm", "module"]
    assert get_backbone_spec("regnet_y_400mf").source == "torchvision"  # in both libraries
    assert get_backbone_spec("efficientnet_lite0").source == "timm"
    assert source_for(nn.Conv2d(3, 4, 1))[0] is get_source("module")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "densenet121", "efficientnet_lite0"])
def test_blocks_are_the_freeze_codes_blocks(name):
    embedder = build_embedder(name, None, image_size=32).module
    source, _ = source_for(name)
    assert source.blocks(network_root(embedder.trunk)) == backbone_blocks(embedder)


class ToySource(ModelSource):
    """A made-up library: all a new source needs."""

    name = "toy"

    def build_network(self, spec, pretrained):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.AdaptiveAvgPool2d(1))

    def resolve_weights(self, spec, weights):
        return resolve_none_or_file(spec.name, weights)

    def data_config(self, spec, weights, network):
        return DataConfig(crop_size=20, resize_size=20, mean=(0.5,) * 3, std=(0.5,) * 3)

    def trunk(self, spec, network):
        return network[:3]


def test_a_new_source_is_one_class(monkeypatch):
    monkeypatch.setitem(sources_module._SOURCES, "toy", ToySource())
    monkeypatch.setitem(backbones._REGISTRY, "toynet", BackboneSpec("toynet", "toy", 5, source="toy"))
    X = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    model = PretrainedCNNFeaturizer("toynet", weights=None, random_state=0, precision="float32").fit(X)
    assert model.transform(X).shape == (3, 5) and model.data_config_.crop_size == 20
    assert model.backbone_.mean.flatten().tolist() == [0.5] * 3
    cut = PretrainedCNNFeaturizer("toynet", weights=None, layer=["0", "2"], random_state=0).fit(X)
    assert cut.n_features_out_ == 11 and list(cut.get_feature_names_out()[5:7]) == ["0_avg_5", "2_avg_0"]


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="Unknown model source 'nope'.*torchvision"):
        get_source("nope")
    with pytest.raises(ValueError, match="needs a new, non-empty name"):
        sources_module.register_source(ModelSource())


def test_a_module_keeps_imagenet_preprocessing():
    built = build_embedder(nn.Conv2d(3, 4, 1), "DEFAULT")
    assert built.data_config == DataConfig() and isinstance(built.module.trunk, nn.Conv2d)
    assert torch.equal(built.module.mean.flatten(), torch.tensor(DataConfig().mean))
