"""``layer=``: the trunk cut at build time after one or several named layers."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.estimators.featurizer import featurizer_fingerprint as model_fingerprint
from sklearn_tl.models.build import build_embedder
from sklearn_tl.models.embedder import network_root
from sklearn_tl.models.sources.cut import CutTrunk, HookedLayers


def featurizer(**params):
    defaults = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0,
                "precision": "float32"}
    return PretrainedCNNFeaturizer(**{**defaults, **params})


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)


def hooked_embedding(backbone, layers, size, x, pooling="avg"):
    """The old semantics, written out: forward hooks on the uncut network, outputs pooled and concatenated."""
    uncut = build_embedder(backbone, None, pooling=pooling, image_size=size, seed=0).module
    root, kept = network_root(uncut.trunk), {}
    for name in layers:
        def keep(_module, _inputs, output, name=name):
            kept.setdefault(name, output.clone())
        root.get_submodule(name).register_forward_hook(keep)
    with torch.inference_mode():
        uncut.trunk((x - uncut.mean) / uncut.std)
    return torch.cat([uncut.pool(kept[name]) for name in layers], dim=1)


# Every seed family (and timm, and a user module), at a small size with random weights.
FAMILIES = [
    ("vgg16", ["features.15"], 32, [256]),
    ("mobilenet_v2", ["features.13", "features.6"], 32, [96, 32]),
    ("densenet121", ["features.denseblock2"], 32, [512]),
    ("inception_v3", ["Mixed_6a", "Mixed_5b"], 80, [768, 256]),
    ("resnet18", ["layer3"], 32, [256]),
    ("resnet50", ["layer2", "layer4"], 32, [512, 2048]),
    ("efficientnet_b0", ["features.5"], 32, [112]),
    ("efficientnet_lite0", ["blocks.4", "conv_stem"], 32, [112, 32]),  # timm
    ("resnet10t", ["layer2"], 32, [128]),  # timm
]


@pytest.mark.parametrize("backbone, layers, size, widths", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_is_cut_by_fx_and_equals_the_hooked_network(backbone, layers, size, widths):
    built = build_embedder(backbone, None, layer=layers, image_size=size, seed=0)
    assert built.n_features == sum(widths)
    assert built.layer_widths == tuple(zip(layers, widths))
    trunk = built.module.trunk
    assert isinstance(trunk, CutTrunk) and isinstance(trunk.body, torch.fx.GraphModule)  # FX, not the fallback
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = built.module(x)
    torch.testing.assert_close(out, hooked_embedding(backbone, layers, size, x), rtol=1e-5, atol=1e-5)


def test_the_cut_graph_stops_at_the_last_layer():
    trunk = build_embedder("resnet18", None, layer="layer2", image_size=32).module.trunk
    names = {n for n, _ in trunk.named_modules()}
    assert "body.layer2" in names and not any(n.startswith(("body.layer3", "body.layer4")) for n in names)


class TestMultiLayer:
    def test_widths_order_and_names(self, images):
        model = featurizer(layer=["layer3", "layer1.0", "bn1"], pooling="max").fit(images)
        assert model.n_features_out_ == 256 + 64 + 64
        names = model.get_feature_names_out()
        assert len(names) == model.n_features_out_ == model.transform(images).shape[1]
        assert list(names[:2]) == ["layer3_max_0", "layer3_max_1"]
        assert names[255] == "layer3_max_255" and names[256] == "layer1_0_max_0" and names[-1] == "bn1_max_63"

    def test_equals_the_single_layer_results_concatenated(self, images):
        # bn1 feeds an in-place ReLU in ResNet: its output must still be taken before it.
        layers = ["layer2", "bn1", "layer1"]
        together = featurizer(layer=layers).fit_transform(images)
        apart = [featurizer(layer=name).fit_transform(images) for name in layers]
        np.testing.assert_allclose(together, np.hstack(apart), rtol=1e-5, atol=1e-6)

    def test_single_layer_names_say_the_layer_and_no_layer_keeps_the_old_names(self, images):
        assert featurizer(layer="layer1.1").fit(images).get_feature_names_out()[3] == "layer1_1_avg_3"
        assert featurizer().fit(images).get_feature_names_out()[3] == "pretrainedcnnfeaturizer3"

    def test_pandas_output_has_the_layer_names(self, images):
        frame = featurizer(layer=("layer1", "layer2")).set_output(transform="pandas").fit_transform(images)
        assert frame.shape == (5, 64 + 128) and frame.columns[64] == "layer2_avg_0"

    def test_the_list_given_is_not_modified(self, images):
        layers = ["layer2", "layer1"]
        model = featurizer(layer=layers).fit(images)
        assert model.get_params()["layer"] is layers and layers == ["layer2", "layer1"]

    @pytest.mark.parametrize("layer", [[], ["layer1", "layer1"], ["layer1", 3], [""]])
    def test_bad_layer_lists_are_refused(self, images, layer):
        with pytest.raises(ValueError, match="non-empty list of distinct module names"):
            featurizer(layer=layer).fit(images)

    def test_a_layer_must_be_a_name_or_a_list(self, images):
        with pytest.raises(InvalidParameterError, match="layer"):
            featurizer(layer=3).fit(images)

    def test_unknown_layer_in_a_list_is_named_with_the_known_ones(self, images):
        with pytest.raises(ValueError, match="Unknown layer 'layer9'.*layer4"):
            featurizer(layer=["layer1", "layer9"]).fit(images)

    def test_a_layer_the_forward_pass_never_reaches(self, images):
        # timm's network holds its classifier, which forward_features never runs.
        with pytest.raises(ValueError, match="'classifier' is not reached"):
            featurizer(backbone="efficientnet_lite0", layer="classifier").fit(images)


class TestTheCutModule:
    def test_is_traceable_by_fx_and_torch_export(self, images):
        module = featurizer(layer=["layer3", "layer1"]).fit(images).backbone_
        x = torch.rand(2, 3, 32, 32)
        with torch.inference_mode():
            expected = module(x)
        traced = torch.fx.symbolic_trace(module.trunk)  # FX traces the cut trunk as one graph
        exported = torch.export.export(module, (x,))  # what torch.compile and torch.onnx.export build on
        with torch.inference_mode():
            maps = traced((x - module.mean) / module.std)
            torch.testing.assert_close(torch.cat([m.mean((2, 3)) for m in maps], dim=1), expected)
            torch.testing.assert_close(exported.module()(x), expected)

    @pytest.mark.slow
    def test_torch_compile_runs_the_cut(self, images):
        module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU())
        eager = featurizer(backbone=module, layer=["2", "4"], batch_size=8).fit(images)
        compiled = featurizer(backbone=module, layer=["2", "4"], batch_size=8, compile=True).fit(images)
        np.testing.assert_allclose(compiled.transform(images), eager.transform(images), rtol=1e-5, atol=1e-6)

    def test_onnx_export(self, images, tmp_path):
        pytest.importorskip("onnxscript")  # torch.onnx.export's exporter, with the onnx extra
        module = featurizer(layer=["layer3", "layer1"]).fit(images).backbone_
        program = torch.onnx.export(module, (torch.rand(1, 3, 32, 32),), tmp_path / "cut.onnx", dynamo=True)
        assert (tmp_path / "cut.onnx").is_file() and len(program.model.graph.outputs) == 1

    def test_batchnorm_folding_still_applies(self, images):
        model = featurizer(layer=["layer2", "bn1"]).fit(images)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone_.modules())
        unfolded = build_embedder("resnet18", None, layer=["layer2", "bn1"], image_size=32,
                                  seed=model._build_args[-1]).module
        assert any(isinstance(m, nn.BatchNorm2d) for m in unfolded.modules())
        x = torch.rand(2, 3, 32, 32)
        with torch.inference_mode():
            torch.testing.assert_close(model.backbone_(x), unfolded(x), rtol=1e-4, atol=1e-4)

    def test_pickle_round_trip(self, images):
        model = featurizer(layer=["layer3", "layer1"]).fit(images)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).transform(images), model.transform(images))

    def test_the_cache_fingerprint_tells_layer_lists_apart(self, images, tmp_path):
        prints = {
            str(layer): model_fingerprint(featurizer(layer=layer).fit(images), exact=True)
            for layer in [None, "layer1", ["layer1", "layer2"], ["layer2", "layer1"]]
        }
        assert len(set(prints.values())) == len(prints)
        cached = featurizer(layer=["layer2", "layer1"], cache=tmp_path)
        first = cached.fit_transform(images)
        np.testing.assert_array_equal(cached.fit_transform(images), first)


class Branchy(nn.Module):
    """A user module whose forward FX cannot trace (control flow on a tensor value)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU())

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:
            x = x * 1.0
        return self.body(x)


class TestUserModules:
    def test_a_traceable_module_is_cut_by_fx(self, images):
        module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())
        model = featurizer(backbone=module, layer=["1", "3"]).fit(images)
        assert isinstance(model.backbone_.trunk.body, torch.fx.GraphModule)
        assert model.n_features_out_ == 24 and model.get_feature_names_out()[8] == "3_avg_0"

    def test_an_untraceable_module_falls_back_to_hooks_and_is_still_right(self, images):
        torch.manual_seed(0)
        module = Branchy().eval()
        model = featurizer(backbone=module, weights="DEFAULT", layer=["body", "stem.1"]).fit(images)
        assert isinstance(model.backbone_.trunk.body, HookedLayers)
        x = torch.rand(2, 3, 32, 32)
        embedder = model.backbone_
        with torch.inference_mode():
            normalised = (x - embedder.mean) / embedder.std
            stem_bn = module.stem[1](module.stem[0](normalised))
            expected = torch.cat([module(normalised).mean((2, 3)), stem_bn.mean((2, 3))], dim=1)
            torch.testing.assert_close(embedder(x), expected, rtol=1e-4, atol=1e-5)
        # the hooked BatchNorm is not folded away; the pickled model still takes its output
        assert isinstance(embedder.trunk.body.trunk.stem[1], nn.BatchNorm2d)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).transform(images), model.transform(images))
