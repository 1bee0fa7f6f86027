"""What both image estimators share: stated preprocessing, value ranges, random_state; fine-tuner device and AMP."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch.callbacks import Callback

from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer
from sklearn_tl.data.inputs import as_image_source
from sklearn_tl.data.config import IMAGENET_MEAN, IMAGENET_STD

from .test_finetune import tiny, tiny_backbone

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)


def featurizer(**params):
    backbone = params.pop("backbone", None) or tiny_backbone()
    return PretrainedCNNFeaturizer(backbone, **{"image_size": 16, "random_state": 0, **params})


def finetuner(**params):
    return tiny(**{"max_epochs": 0, **params})


ESTIMATORS = {"featurizer": featurizer, "finetuner": finetuner}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.array([0, 1] * 3)


def by_hand(module, X, mean, std):
    """Normalise and forward ``module`` without the package: ``(x / 255 - mean) / std``, then average-pool."""
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return module.eval()(x).mean(dim=(2, 3)).numpy()


class TestStatedPreprocessing:
    @pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS)
    def test_stated_mean_and_std_reach_the_network(self, make, images):
        X, y = images
        module = tiny_backbone()
        # crop_pct=1 and 16-px images: no resize, no crop, so only the normalisation is left.
        est = make(backbone=module, weights="DEFAULT", mean=MEAN, std=STD, crop_pct=1.0).fit(X, y)
        assert est.data_config_.mean == MEAN and est.data_config_.std == STD
        np.testing.assert_allclose(est.transform(X), by_hand(module, X, MEAN, STD), rtol=1e-4, atol=1e-5)
        default = make(backbone=module, weights="DEFAULT", crop_pct=1.0).fit(X, y)
        assert default.data_config_.mean == IMAGENET_MEAN and default.data_config_.std == IMAGENET_STD
        assert np.abs(default.transform(X) - est.transform(X)).max() > 1e-2

    @pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS)
    def test_interpolation_and_crop_pct_set_the_resize(self, make, images):
        X, y = images
        config = make(image_size=12, interpolation="bicubic", crop_pct=0.5).fit(X, y).data_config_
        assert (config.crop_size, config.resize_size, config.interpolation) == (12, 24, "bicubic")
        native = make(image_size=12).fit(X, y).data_config_
        assert native.interpolation == "bilinear" and native.resize_size == round(12 * 256 / 224)

    def test_stated_preprocessing_is_part_of_the_cache_fingerprint(self, images, tmp_path):
        X, _ = images
        module = tiny_backbone()
        first = featurizer(backbone=module, weights="DEFAULT", cache=tmp_path).fit(X)
        first.transform(X)
        stated = featurizer(backbone=module, weights="DEFAULT", cache=tmp_path, mean=MEAN, std=STD).fit(X)
        assert stated._cache_fingerprint != first._cache_fingerprint
        np.testing.assert_allclose(
            stated.transform(X), featurizer(backbone=module, weights="DEFAULT", mean=MEAN, std=STD).fit(X).transform(X)
        )

    @pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS)
    @pytest.mark.parametrize(
        "params, match",
        [
            ({"mean": (0.5, 0.5)}, "mean must be 3 numbers"),
            ({"mean": (0.5, "a", 0.5)}, "mean must be 3 numbers"),
            ({"std": (0.5, 0.0, 0.5)}, "std must be 3 finite numbers, each > 0"),
            ({"std": (0.5, math.nan, 0.5)}, "std must be 3 finite numbers"),
            ({"interpolation": "lanczos"}, "interpolation"),
            ({"crop_pct": 0.0}, "crop_pct"),
            ({"crop_pct": 1.5}, "crop_pct"),
            ({"value_range": (1, 0)}, "value_range must be"),
            ({"value_range": (0, math.inf)}, "value_range must be"),
            ({"value_range": "guess"}, "value_range"),
        ],
    )
    def test_bad_preprocessing_fails_in_fit_naming_it(self, make, params, match, images):
        X, y = images
        est = make(**params)
        with pytest.raises(ValueError, match=match):
            est.fit(X, y)

    def test_a_timm_module_brings_its_pretrained_cfg(self, images):
        timm = pytest.importorskip("timm")
        X, _ = images
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        config = PretrainedCNNFeaturizer(model, weights="DEFAULT").fit(X).data_config_
        cfg = model.pretrained_cfg
        assert config.mean == (0.5, 0.5, 0.5) and config.std == (0.5, 0.5, 0.5)
        assert config.crop_size == cfg["input_size"][-1] and config.interpolation == cfg["interpolation"]
        assert config.resize_size == math.floor(cfg["input_size"][-1] / cfg["crop_pct"])
        # Explicit parameters still win over the module's metadata.
        stated = PretrainedCNNFeaturizer(model, weights="DEFAULT", image_size=32, mean=MEAN).fit(X).data_config_
        assert stated.mean == MEAN and stated.std == (0.5, 0.5, 0.5)


class TestValueRange:
    @pytest.fixture(scope="class")
    @staticmethod
    def digits():
        data = load_digits()
        return data.data[:20], data.target[:20]  # floats 0..16, flattened 8x8

    @pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS)
    def test_a_stated_range_maps_to_unit_interval(self, make, digits):
        X, y = digits
        module = tiny_backbone()
        with pytest.raises(ValueError, match="float images must be in"):
            make(image_shape=(8, 8)).fit(X, y)  # None still never guesses
        est = make(backbone=module, image_shape=(8, 8), value_range=(0, 16)).fit(X, y)
        assert est.value_range_ == (0.0, 16.0)
        unit = make(backbone=module, image_shape=(8, 8)).fit(X / 16.0, y)
        np.testing.assert_allclose(est.transform(X), unit.transform(X / 16.0), rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match=r"outside value_range=\(0, 16\)"):
            est.transform(X * 2)

    @pytest.mark.parametrize("make", ESTIMATORS.values(), ids=ESTIMATORS)
    def test_auto_learns_the_range_at_fit(self, make, digits):
        X, y = digits
        module = tiny_backbone()
        est = make(backbone=module, image_shape=(8, 8), value_range="auto").fit(X, y)
        assert est.value_range_ == (float(X.min()), float(X.max())) == (0.0, 16.0)
        stated = make(backbone=module, image_shape=(8, 8), value_range=(0, 16)).fit(X, y)
        np.testing.assert_array_equal(est.transform(X), stated.transform(X))

    def test_auto_needs_numbers(self, tmp_path):
        with pytest.raises(ValueError, match="value_range='auto' learns"):
            featurizer(value_range="auto").fit([str(tmp_path / "a.png")])
        with pytest.raises(ValueError, match="low < high"):
            featurizer(value_range="auto").fit(np.full((2, 8, 8), 3.0))
        with pytest.raises(ValueError, match="value_range applies to arrays"):
            as_image_source([str(tmp_path / "a.png")], value_range=(0, 1))

    def test_the_range_is_part_of_the_content_key(self, digits):
        X, _ = digits
        keys = {as_image_source(X, (8, 8), value_range=r).content_key(0) for r in [(0, 16), (0, 32), (-1, 16)]}
        assert len(keys) == 3


class TestRandomState:
    def test_finetuner_accepts_a_random_state_instance(self, images):
        X, y = images
        first = tiny(random_state=np.random.RandomState(0), max_epochs=1).fit(X, y)
        second = tiny(random_state=np.random.RandomState(0), max_epochs=1).fit(X, y)
        np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
        with pytest.raises(ValueError, match="random_state"):
            tiny(random_state="seed").fit(X, y)


class GradRecorder(Callback):
    def initialize(self):
        self.grads_ = []
        self.benchmark_ = []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.grads_.append({n: p.grad.detach().clone() for n, p in named_parameters if p.grad is not None})
        self.benchmark_.append(torch.backends.cudnn.benchmark)


class TestFineTunerTraining:
    def test_callbacks_see_unscaled_gradients(self, images, monkeypatch):
        X, y = images
        common = dict(unfreeze_after=0, max_epochs=2, batch_size=3, lr_schedule="constant", precision="float32")
        plain, scaled = GradRecorder(), GradRecorder()
        tiny(callbacks=[("grads", plain)], **common).fit(X, y)
        # A CPU gradient scaler, as CUDA float16 training uses, so that scaling is testable without a GPU.
        scaler = lambda self: torch.amp.GradScaler("cpu", init_scale=1024.0)  # noqa: E731
        monkeypatch.setattr(FineTuneClassifier, "_make_grad_scaler", scaler)
        clf = tiny(callbacks=[("grads", scaled)], **common).fit(X, y)
        assert clf.grad_scaler_ is not None and clf.grad_scaler_.get_scale() >= 1024.0
        assert len(plain.grads_) == len(scaled.grads_) == 4
        for expected, seen in zip(plain.grads_, scaled.grads_):
            assert expected.keys() == seen.keys()
            for name in expected:
                torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-7)

    def test_fit_leaves_no_global_flag_and_an_eval_module(self, images):
        X, y = images
        recorder = GradRecorder()
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            clf = tiny(callbacks=[("grads", recorder)], max_epochs=1).fit(X, y)
            assert set(recorder.benchmark_) == {True} and torch.backends.cudnn.benchmark is True
        finally:
            torch.backends.cudnn.benchmark = before
        assert not any(m.training for m in clf.module_.modules())
        clf.partial_fit(X, y)
        assert not any(m.training for m in clf.module_.modules())

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_inference_runs_on_the_device_named_at_call_time(self, images, monkeypatch):
        X, y = images
        clf = tiny(max_epochs=1, device="cpu").fit(X, y)
        expected = clf.predict_proba(X)
        clf.set_params(device="cuda")
        for method in (clf.predict, clf.predict_proba, clf.transform):
            with pytest.raises(ValueError, match="CUDA is not available"):
                method(X)
        import sklearn_tl.estimators.finetune_base as finetune

        seen = []
        forward = finetune.forward_batches
        monkeypatch.setattr(finetune, "forward_batches", lambda *a, **k: seen.append(k["device"]) or forward(*a, **k))
        clf.set_params(device="cpu")
        np.testing.assert_array_equal(clf.predict_proba(X), expected)
        assert seen == [torch.device("cpu")]
