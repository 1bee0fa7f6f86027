"""The registry: declared widths and trunks match the real modules."""

import pytest
import torch
from torch import nn

from sklearn_tl import PretrainedCNNFeaturizer, get_backbone_spec, list_backbones, register_backbone
from sklearn_tl.models.spec import BackboneSpec
from sklearn_tl.models.build import build_embedder

FAMILIES = {"vgg", "mobilenet", "densenet", "inception", "resnet", "efficientnet", "nasnet"}


def test_registry_covers_every_promised_family():
    families = {get_backbone_spec(name).family for name in list_backbones()}
    assert families == FAMILIES
    for name in ["vgg16", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                 "densenet121", "densenet169", "densenet201", "inception_v3", "resnet18", "resnet152",
                 "resnext50_32x4d", "efficientnet_b0", "efficientnet_b7", "efficientnet_v2_s",
                 "nasnetalarge", "pnasnet5large"]:
        assert name in list_backbones()


def test_list_backbones_filters_with_patterns():
    assert list_backbones("densenet*") == ["densenet121", "densenet169", "densenet201"]
    assert "efficientnet_v2_s" not in list_backbones("efficientnet*", exclude="*v2*")


@pytest.mark.parametrize("name", list_backbones())
def test_declared_width_matches_trunk_output(name):
    # Meta tensors give real output shapes without allocating or computing.
    spec = get_backbone_spec(name)
    with torch.device("meta"):
        trunk = spec.build_trunk(spec.build_network(pretrained=False)).eval()
        out = trunk(torch.zeros(2, 3, 96, 96))
    assert out.ndim == 4 and out.shape[:2] == (2, spec.n_features)


def _own_pooled_embedding(name, network, x):
    """The embedding as the original torchvision network computes it."""
    if name.startswith("vgg"):
        return network.features(x).mean((2, 3))
    if name.startswith("mobilenet_v3"):
        return network.avgpool(network.features(x)).flatten(1)
    head = "fc" if hasattr(network, "fc") else "classifier"
    setattr(network, head, nn.Identity())
    return network(x)


@pytest.mark.parametrize(
    "name", ["vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "inception_v3", "resnet18",
             "efficientnet_b0"]
)
def test_trunk_plus_avg_pool_equals_torchvision_embedding(name):
    torch.manual_seed(0)
    spec = get_backbone_spec(name)
    network = spec.build_network(pretrained=False).eval()
    trunk = spec.build_trunk(network)
    size = 80 if name == "inception_v3" else 64
    x = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        ours = trunk(x).mean((2, 3))
        theirs = _own_pooled_embedding(name, network, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_nasnet_through_timm_gives_declared_width():
    featurizer = PretrainedCNNFeaturizer("pnasnet5large", weights=None, image_size=64, batch_size=2)
    Z = featurizer.fit_transform(torch.rand(2, 3, 64, 64))
    assert Z.shape == (2, 4320)
    assert featurizer.data_config_.mean == (0.5, 0.5, 0.5)  # timm's pretrained_cfg, not ImageNet's


def test_timm_missing_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ImportError, match=r"sklearn_tl\[timm\]"):
        PretrainedCNNFeaturizer("nasnetalarge", weights=None).fit(torch.rand(1, 3, 64, 64))


def test_any_torchvision_model_name_works():
    featurizer = PretrainedCNNFeaturizer("regnet_y_400mf", weights=None, image_size=64)
    assert featurizer.fit_transform(torch.rand(3, 3, 64, 64)).shape == (3, 440)


def test_any_timm_model_name_works():
    featurizer = PretrainedCNNFeaturizer("resnet10t", weights=None, image_size=64)
    assert featurizer.fit_transform(torch.rand(2, 3, 64, 64)).shape == (2, 512)


def test_user_module_is_pooled_and_not_modified():
    module = nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    featurizer = PretrainedCNNFeaturizer(module, image_size=32, pooling="max")
    Z = featurizer.fit_transform(torch.rand(4, 3, 32, 32))
    assert Z.shape == (4, 7)
    assert featurizer.backbone_.trunk is not module
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet_51'.*resnet50"):
        PretrainedCNNFeaturizer("resnet_51", weights=None).fit(torch.rand(1, 3, 32, 32))


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec(name="resnet18", family="resnet", n_features=512))


def test_named_intermediate_layer_is_pooled():
    built = build_embedder("resnet18", None, layer="layer2", image_size=64)
    assert built.n_features == 128
    with pytest.raises(ValueError, match="Unknown layer 'layer9'.*layer4"):
        build_embedder("resnet18", None, layer="layer9")


def test_image_size_below_minimum_is_refused():
    with pytest.raises(ValueError, match="too small for backbone 'inception_v3'.*75"):
        build_embedder("inception_v3", None, image_size=32)
