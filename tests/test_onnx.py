"""The ONNX Runtime backend: agreement with torch, fallback, pickling, int8, decoding overlap.

export_onnx is tested in test_export.py.
"""

import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.runtime import onnx as onnx_module
from sklearn_tl.cache.fingerprint import runtime_fingerprint
from sklearn_tl.runtime.forward import prefetched
from sklearn_tl.exceptions import OnnxFallbackWarning
from sklearn_tl.runtime.onnx import onnx_forward, resolve_backend

from .conftest import REAL_WEIGHTS


def row_cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def runs_on_onnxruntime(featurizer) -> bool:
    """Whether a usable session was built for this featurizer's module."""
    entries = onnx_module._REGISTRY.get(featurizer.backbone_, {})
    return any(session is not None for entry in entries.values() for session in entry.sessions.values())


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 84, 84, 3), dtype=np.uint8)


class TestBackendsAgree:
    @pytest.mark.parametrize(
        "backbone, size",
        [
            ("vgg16", 32),
            ("mobilenet_v2", 48),
            ("densenet121", 32),
            ("inception_v3", 75),
            ("resnet18", 32),
            ("efficientnet_b0", 32),
            ("resnet10t", 32),  # any timm model
        ],
    )
    def test_each_seed_family(self, images, backbone, size):
        params = dict(weights=None, image_size=size, random_state=0, batch_size=2)
        reference = PretrainedCNNFeaturizer(backbone, backend="torch", **params).fit(images).transform(images)
        featurizer = PretrainedCNNFeaturizer(backbone, backend="auto", **params).fit(images)
        with warnings.catch_warnings():
            warnings.simplefilter("error", OnnxFallbackWarning)
            embedded = featurizer.transform(images)  # an odd batch (1 of 5) too: the batch axis is dynamic
        assert runs_on_onnxruntime(featurizer)
        assert embedded.dtype == np.float32 and embedded.shape == reference.shape
        assert row_cosine(embedded, reference).min() >= 0.9999

    def test_layer_exports_or_falls_back_cleanly(self, images):
        params = dict(weights=None, image_size=32, random_state=0, layer="layer3")
        reference = PretrainedCNNFeaturizer("resnet18", backend="torch", **params).fit(images).transform(images)
        featurizer = PretrainedCNNFeaturizer("resnet18", backend="onnxruntime", **params).fit(images)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            embedded = featurizer.transform(images)
        fallbacks = [w for w in caught if issubclass(w.category, OnnxFallbackWarning)]
        assert len(fallbacks) <= 1 and runs_on_onnxruntime(featurizer) == (not fallbacks)
        assert row_cosine(embedded, reference).min() >= 0.9999

    def test_auto_choice(self):
        cpu, cuda = torch.device("cpu"), torch.device("cuda")
        assert resolve_backend("auto", cpu) == "onnxruntime"
        assert resolve_backend("auto", cuda) == "torch"
        assert resolve_backend("auto", cpu, "bfloat16") == "torch"  # an autocast dtype is a torch feature
        assert resolve_backend("auto", cpu, compile=True) == "torch"
        assert resolve_backend("auto", cpu, user_module=True) == "torch"
        assert resolve_backend("onnxruntime", cpu, user_module=True) == "onnxruntime"
        assert resolve_backend("auto", cpu, "int8") == "onnxruntime"
        bad_choices = [
            ("onnxruntime", cuda), ("torch", cpu, "int8"), ("auto", cuda, "int8"), ("onnxruntime", cpu, "float16")
        ]
        for bad in bad_choices:
            with pytest.raises(ValueError, match="onnxruntime|ONNX Runtime"):
                resolve_backend(*bad)

    def test_bad_combination_fails_in_fit(self, images):
        with pytest.raises(ValueError, match="int8"):
            PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, backend="torch", precision="int8").fit(
                images
            )

    def test_backend_and_int8_are_in_the_cache_key(self):
        cpu = torch.device("cpu")
        keys = {runtime_fingerprint("s", cpu, None, b) for b in ("torch", "onnxruntime-1", "onnxruntime-1-int8-ab")}
        assert len(keys) == 3
        assert runtime_fingerprint("s", cpu, None) == runtime_fingerprint("s", cpu, None, "torch")


class CallCounter(nn.Module):
    """Its output depends on how often it was called: an export freezes the count."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.conv(x)) + self.calls


class TestFallback:
    def test_failed_export_warns_once_and_runs_torch(self, images, monkeypatch):
        def broken(module, example):
            raise RuntimeError("no exporter for this graph")

        monkeypatch.setattr(onnx_module, "export_module", broken)
        params = dict(weights=None, image_size=32, random_state=0)
        featurizer = PretrainedCNNFeaturizer("resnet18", **params).fit(images)
        with pytest.warns(OnnxFallbackWarning, match="torch runs this model: no exporter for this graph"):
            first = featurizer.transform(images)
        with warnings.catch_warnings():
            warnings.simplefilter("error", OnnxFallbackWarning)  # once per model, not per call
            second = featurizer.transform(images)
        reference = PretrainedCNNFeaturizer("resnet18", backend="torch", **params).fit(images).transform(images)
        np.testing.assert_allclose(first, reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(first, second)

    def test_graph_that_does_not_reproduce_the_model_is_not_used(self, images):
        featurizer = PretrainedCNNFeaturizer(CallCounter(), image_size=16, backend="onnxruntime").fit(images)
        with pytest.warns(OnnxFallbackWarning, match="does not reproduce the model"):
            featurizer.transform(images)
        assert not runs_on_onnxruntime(featurizer)

    def test_user_module_runs_on_torch_by_default(self, images):
        featurizer = PretrainedCNNFeaturizer(CallCounter(), image_size=16).fit(images)
        with warnings.catch_warnings():
            warnings.simplefilter("error", OnnxFallbackWarning)
            featurizer.transform(images)
        assert not runs_on_onnxruntime(featurizer)


class TestSessionLifetime:
    def test_pickling_a_featurizer_that_holds_a_session(self, images):
        featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, random_state=0).fit(images)
        expected = featurizer.transform(images)
        assert runs_on_onnxruntime(featurizer)
        before = dict(vars(featurizer))
        featurizer.transform(images)
        assert vars(featurizer).keys() == before.keys()  # the session is not in the estimator
        blob = pickle.dumps(featurizer)
        assert b"onnxruntime" not in blob and b"InferenceSession" not in blob
        loaded = pickle.loads(blob)
        np.testing.assert_allclose(loaded.transform(images), expected, rtol=1e-5, atol=1e-6)
        assert runs_on_onnxruntime(loaded)  # rebuilt where the model runs

    def test_changed_weights_are_exported_again(self):
        module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
        x = torch.rand(2, 3, 8, 8)
        first = onnx_forward(module, (3, 8, 8))(x.numpy())
        with torch.no_grad():
            module[0].weight.mul_(2)  # in place, as an optimizer step
        second = onnx_forward(module, (3, 8, 8))(x.numpy())
        with torch.inference_mode():
            np.testing.assert_allclose(second, module(x).numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(first, second)

    def test_threads_share_one_session(self, images):
        featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, random_state=0, batch_size=2)
        featurizer.fit(images)
        expected = featurizer.transform(images)
        fresh = pickle.loads(pickle.dumps(featurizer))  # no session yet: the threads race to build it
        results = [None] * 4

        def work(i):
            results[i] = fresh.transform(images)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for result in results:
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
        entries = onnx_module._REGISTRY[fresh.backbone_]
        assert len(entries) == 1 and len(next(iter(entries.values())).sessions) == 1


class TestPrefetch:
    def test_order_and_overlap(self):
        decoding = []

        def loader():
            for i in range(4):
                decoding.append(i)
                yield i

        seen = []
        for item in prefetched(loader()):
            if item == 0:
                deadline = threading.Event()
                deadline.wait(0.5)  # while batch 0 "computes", batch 1 is decoded
                assert 1 in decoding
            seen.append(item)
        assert seen == [0, 1, 2, 3]

    def test_load_error_arrives_after_the_batches_before_it(self):
        def loader():
            yield 0
            yield 1
            raise OSError("bad file at index 2")

        seen = []
        with pytest.raises(OSError, match="index 2"):
            for item in prefetched(loader()):
                seen.append(item)
        assert seen == [0, 1]

    def test_consumer_stopping_early_ends_the_thread(self):
        before = threading.active_count()
        for item in prefetched(iter(range(100))):
            if item == 1:
                break
        assert threading.active_count() == before


class TestInt8:
    def test_needs_calibration_from_fit(self, images):
        featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32).fit(images)
        assert not hasattr(featurizer, "calibration_images_")
        featurizer.set_params(precision="int8")
        with pytest.raises(ValueError, match="fit again with precision='int8'"):
            featurizer.transform(images)

    @pytest.mark.slow
    def test_fidelity_on_real_mobilenet_v2(self, textures):
        X, _ = textures
        params = dict(weights=REAL_WEIGHTS, image_size=96, device="cpu")
        fp32 = PretrainedCNNFeaturizer(**params).fit(X).transform(X)
        featurizer = PretrainedCNNFeaturizer(precision="int8", **params).fit(X)
        assert featurizer.calibration_images_.shape == (64, 3, 96, 96)
        assert featurizer.calibration_images_.dtype == np.uint8
        with warnings.catch_warnings():
            warnings.simplefilter("error", OnnxFallbackWarning)  # int8 was really used
            int8 = featurizer.transform(X)
        cosine = row_cosine(int8, fp32)
        # Lossy but the same model (measured: see README "Backends"); not the fp32 rows.
        assert cosine.mean() >= 0.95 and cosine.min() >= 0.8
        assert not np.allclose(int8, fp32, rtol=1e-3, atol=1e-3)


class TestFineTuner:
    def test_predict_and_transform_run_on_onnxruntime_and_follow_training(self, images):
        from sklearn_tl import FineTuneClassifier

        y = np.arange(len(images)) % 2
        clf = FineTuneClassifier("resnet18", weights=None, image_size=32, max_epochs=1, train_split=None,
                                 verbose=0, random_state=0).fit(images, y)
        assert resolve_backend(clf.backend, torch.device("cpu")) == "onnxruntime"
        calls = []
        real = onnx_module.onnx_forward

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        for _ in range(2):  # once, then again after more training changed every weight
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(onnx_module, "onnx_forward", counting)
                import sklearn_tl.runtime.forward as engine_module

                patch.setattr(engine_module, "onnx_forward", counting)
                proba = clf.predict_proba(images)
                embedded = clf.transform(images)
            assert calls
            reference = clf.set_params(backend="torch")
            np.testing.assert_allclose(proba, reference.predict_proba(images), atol=1e-4)
            assert row_cosine(embedded, reference.transform(images)).min() >= 0.9999
            clf.set_params(backend="auto").partial_fit(images, y)
            calls.clear()
