"""PretrainedCNNFeaturizer: input formats, the sklearn contract on image input,
persistence, and real pretrained behaviour."""

import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_tl import ImageReadError, PretrainedCNNFeaturizer
from sklearn_tl.runtime.forward import forward_batches
from sklearn_tl.data.dataset import ImageDataset
from sklearn_tl.data.inputs import as_image_source
from sklearn_tl.data.transforms import ImageTransform

from .conftest import REAL_WEIGHTS


def tiny(**params):
    """A cheap random-init featurizer for plumbing tests."""
    defaults = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}
    return PretrainedCNNFeaturizer(**{**defaults, **params})


@pytest.fixture(scope="module")
def fitted(small_images_module):
    return tiny().fit(small_images_module)


@pytest.fixture(scope="module")
def small_images_module():
    return np.random.default_rng(1).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


class TestInputFormats:
    def test_all_formats_give_the_same_embeddings(self, fitted, small_images_module, tmp_path):
        X = small_images_module
        expected = fitted.transform(X)
        paths = []
        for i, image in enumerate(X):
            paths.append(tmp_path / f"img{i}.png")
            Image.fromarray(image).save(paths[-1])
        variants = {
            "tensor NCHW": torch.from_numpy(X).permute(0, 3, 1, 2),
            "list of PIL": [Image.fromarray(image) for image in X],
            "list of arrays": list(X),
            "list of Path": paths,
            "list of str": [str(p) for p in paths],
            "1-D array of paths": np.array([str(p) for p in paths], dtype=object),
        }
        for name, variant in variants.items():
            np.testing.assert_allclose(fitted.transform(variant), expected, rtol=1e-4, atol=1e-5, err_msg=name)
        # float images in [0, 1] are resized in float: close, not bit-identical
        np.testing.assert_allclose(fitted.transform(X / 255.0), expected, rtol=0.05, atol=0.05)

    def test_output_is_float32_n_by_width(self, fitted, small_images_module):
        Z = fitted.transform(small_images_module)
        assert Z.dtype == np.float32 and Z.shape == (6, 512)
        assert np.isfinite(Z).all()

    def test_grayscale_and_rgba_become_rgb(self, fitted, small_images_module):
        gray = small_images_module[..., 0]
        as_rgb = np.repeat(gray[..., None], 3, axis=-1)
        np.testing.assert_allclose(fitted.transform(gray), fitted.transform(as_rgb), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fitted.transform(gray[..., None]), fitted.transform(as_rgb), rtol=1e-5, atol=1e-6)
        alpha = np.full(small_images_module.shape[:3] + (1,), 7, dtype=np.uint8)
        rgba = np.concatenate([small_images_module, alpha], axis=-1)
        np.testing.assert_allclose(fitted.transform(rgba), fitted.transform(small_images_module), rtol=1e-5)
        pil_rgba = [Image.fromarray(image, "RGBA") for image in rgba]
        np.testing.assert_allclose(fitted.transform(pil_rgba), fitted.transform(small_images_module), rtol=1e-4)

    def test_images_of_different_sizes(self, fitted, sample_photos):
        images = [sample_photos[0][:100, :150], sample_photos[1][:300, :90], sample_photos[0][50:60, 70:80]]
        Z = fitted.transform(images)
        assert Z.shape == (3, 512)
        np.testing.assert_allclose(Z[1], fitted.transform([images[1]])[0], rtol=1e-4, atol=1e-5)

    def test_flattened_images_need_image_shape(self):
        from sklearn.datasets import load_digits

        X = load_digits().data[:10] / 16.0
        featurizer = tiny(image_shape=(8, 8)).fit(X)
        assert featurizer.n_features_in_ == 64
        np.testing.assert_allclose(
            featurizer.transform(X), featurizer.transform(X.reshape(10, 8, 8)), rtol=1e-5, atol=1e-6
        )
        with pytest.raises(ValueError, match="image_shape"):
            tiny().fit(X)
        with pytest.raises(ValueError, match="64 features"):
            featurizer.transform(X[:, :60])

    def test_integer_and_float_dtypes_and_memory_layouts(self, fitted, small_images_module):
        expected = fitted.transform(small_images_module)
        for variant in [small_images_module.astype(np.int64), np.asfortranarray(small_images_module)]:
            np.testing.assert_allclose(fitted.transform(variant), expected, rtol=1e-5, atol=1e-6)
        for dtype in [np.float32, np.float64]:
            Z = fitted.transform((small_images_module / 255.0).astype(dtype))
            assert Z.dtype == np.float32  # output is always float32

    def test_input_is_never_modified_and_may_be_read_only(self, fitted, small_images_module, tmp_path):
        X = small_images_module.copy()
        X.setflags(write=False)
        fitted.transform(X)
        np.testing.assert_array_equal(X, small_images_module)
        np.save(tmp_path / "x.npy", small_images_module)
        memmap = np.load(tmp_path / "x.npy", mmap_mode="r")
        np.testing.assert_allclose(fitted.transform(memmap), fitted.transform(small_images_module), rtol=1e-5)
        tensor = torch.from_numpy(small_images_module.copy()).permute(0, 3, 1, 2)
        before = tensor.clone()
        fitted.transform(tensor)
        assert torch.equal(tensor, before)
        pil = [Image.fromarray(small_images_module[0])]
        fitted.transform(pil)
        np.testing.assert_array_equal(np.asarray(pil[0]), small_images_module[0])


class TestBadInput:
    @pytest.mark.parametrize(
        "X, match",
        [
            (np.zeros((0, 8, 8), np.uint8), "0 sample"),
            ([], "empty"),
            (np.full((2, 8, 8), np.nan), "NaN"),
            (np.full((2, 8, 8), np.inf), "NaN or infinity"),
            (np.zeros((2, 8, 8, 2), np.uint8), "last axis"),
            (np.zeros((2, 3, 8, 8), np.uint8), "transpose"),
            (torch.zeros(2, 5, 8, 8), "channels"),
            (np.zeros((2, 2, 8, 8, 3), np.uint8), "5 dimension"),
            (np.zeros(5, np.uint8), "1 dimension"),
            (np.full((2, 8, 8), 300, np.int32), "maximum 300"),
            (np.full((2, 8, 8), -1.0), "Negative values"),
            (np.full((2, 8, 8), 2.0), r"\[0, 1\]"),
            (np.zeros((2, 8, 8), complex), "Complex data"),
            (np.zeros((2, 8, 8), bool), "dtype bool"),
            ([np.zeros((4, 4, 3), np.uint8), "not/an/image.png"], "not/an/image.png"),
            ([np.zeros((4, 4, 3), np.uint8), 3.5], "X\\[1\\] is a float"),
        ],
    )
    def test_clear_errors(self, X, match):
        with pytest.raises((ValueError, TypeError), match=match):
            tiny().fit_transform(X)

    def test_sparse_input_is_refused(self):
        from scipy import sparse

        with pytest.raises(TypeError, match="Sparse input is not supported"):
            tiny().fit(sparse.csr_matrix(np.ones((2, 64))))

    def test_unreadable_file_names_path_and_index(self, fitted, tmp_path):
        good = tmp_path / "good.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"this is not a jpeg")
        with pytest.raises(ImageReadError, match=r"bad\.jpg.*index 1") as info:
            fitted.transform([good, bad])
        assert info.value.index == 1 and info.value.path == str(bad)

    def test_single_path_is_refused_with_hint(self, fitted):
        with pytest.raises(TypeError, match="list of image paths"):
            fitted.transform("photo.jpg")

    @pytest.mark.parametrize(
        "params",
        [{"pooling": "median"}, {"precision": "float8"}, {"batch_size": 0}, {"image_size": -3},
         {"num_workers": -1}, {"backbone": 3}],
    )
    def test_bad_parameter_values(self, params, small_images_module):
        with pytest.raises(InvalidParameterError):
            tiny(**params).fit(small_images_module)

    def test_bad_devices(self, small_images_module):
        with pytest.raises(ValueError, match="device must be"):
            tiny(device="tpu").fit(small_images_module)
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                tiny(device="cuda:0").fit(small_images_module)


class TestEstimatorContract:
    def test_params_are_stored_untouched_and_fit_returns_self(self, small_images_module):
        module = torch.nn.Conv2d(3, 4, 3)
        featurizer = PretrainedCNNFeaturizer(module, weights="DEFAULT", image_shape=[8, 8])
        params = featurizer.get_params()
        assert params["backbone"] is module and params["image_shape"] == [8, 8]
        assert featurizer.fit(small_images_module) is featurizer
        assert featurizer.get_params()["backbone"] is module
        assert featurizer.get_params() == params

    def test_transform_before_fit_raises(self, small_images_module):
        with pytest.raises(NotFittedError):
            tiny().transform(small_images_module)

    def test_fit_is_idempotent_and_deterministic(self, small_images_module):
        featurizer = tiny()
        first = featurizer.fit(small_images_module).transform(small_images_module)
        torch.manual_seed(123)  # the global torch seed does not matter, random_state does
        assert featurizer.fit(small_images_module) is featurizer
        np.testing.assert_array_equal(featurizer.transform(small_images_module), first)
        other_seed = tiny(random_state=1).fit_transform(small_images_module)
        assert not np.allclose(other_seed, first)

    def test_same_image_same_row_whatever_the_batch(self, small_images_module):
        featurizer = tiny(batch_size=4).fit(small_images_module)
        full = featurizer.transform(small_images_module)
        order = np.array([5, 2, 0, 4, 1, 3])
        np.testing.assert_allclose(featurizer.transform(small_images_module[order]), full[order], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(featurizer.transform(small_images_module[3:5]), full[3:5], rtol=1e-4, atol=1e-5)
        one_by_one = featurizer.set_params(batch_size=1).transform(small_images_module)
        np.testing.assert_allclose(one_by_one, full, rtol=1e-4, atol=1e-5)

    def test_transform_does_not_change_the_estimator(self, fitted, small_images_module):
        before = dict(fitted.__dict__)
        fitted.transform(small_images_module)
        assert fitted.__dict__ == before

    def test_feature_names_and_pandas_output(self, small_images_module):
        featurizer = tiny().fit(small_images_module)
        names = featurizer.get_feature_names_out()
        assert len(names) == 512 and names[0] == "pretrainedcnnfeaturizer0"
        frame = featurizer.set_output(transform="pandas").transform(small_images_module)
        assert list(frame.columns) == list(names) and frame.shape == (6, 512)

    def test_fit_accepts_and_ignores_y(self, small_images_module):
        a = tiny().fit(small_images_module, np.arange(6)).transform(small_images_module)
        assert a.shape == (6, 512)

    def test_clone_and_grid_search_over_backbone(self, small_images_module):
        X = np.concatenate([small_images_module, 255 - small_images_module])
        y = np.array([0] * 6 + [1] * 6)
        pipe = Pipeline([("featurizer", tiny()), ("clf", LogisticRegression(max_iter=500))])
        clone(pipe)
        search = GridSearchCV(
            pipe, {"featurizer__backbone": ["resnet18", "mobilenet_v3_small"], "clf__C": [1.0]}, cv=2
        ).fit(X, y)
        assert set(search.cv_results_["param_featurizer__backbone"]) == {"resnet18", "mobilenet_v3_small"}
        width = search.best_estimator_.named_steps["featurizer"].n_features_out_
        assert width == {"resnet18": 512, "mobilenet_v3_small": 576}[search.best_params_["featurizer__backbone"]]

    def test_pipeline_gives_the_same_result_as_the_steps(self, small_images_module):
        y = np.array([0, 1, 0, 1, 0, 1])
        featurizer = tiny().fit(small_images_module)
        Z = featurizer.transform(small_images_module)
        direct = LogisticRegression().fit(Z, y).predict_proba(Z)
        piped = make_pipeline(tiny(), LogisticRegression()).fit(small_images_module, y)
        np.testing.assert_allclose(piped.predict_proba(small_images_module), direct, rtol=1e-4, atol=1e-5)


class TestOptions:
    def test_pooling_and_layer_change_the_embedding(self, small_images_module):
        avg = tiny(pooling="avg").fit_transform(small_images_module)
        mx = tiny(pooling="max").fit_transform(small_images_module)
        gem = tiny(pooling="gem").fit_transform(small_images_module)
        assert (mx >= avg - 1e-5).all()  # max over positions bounds their mean
        assert (gem >= avg - 1e-3).all() and (gem <= mx + 1e-3).all()  # generalised mean lies between
        assert tiny(layer="layer3").fit(small_images_module).n_features_out_ == 256

    @pytest.mark.slow
    def test_reduced_precision_stays_close_to_float32(self, textures):
        X, y = textures
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        embeddings, accuracy = {}, {}
        for precision in ["float32", "float16", "bfloat16"]:
            featurizer = PretrainedCNNFeaturizer(weights=REAL_WEIGHTS, image_size=64, precision=precision)
            embeddings[precision] = featurizer.fit_transform(X)
            accuracy[precision] = cross_val_score(classifier, embeddings[precision], y, cv=3).mean()
        a = embeddings["float32"]
        for precision, min_cosine, mean_cosine in [("float16", 0.999, 0.9995), ("bfloat16", 0.95, 0.99)]:
            b = embeddings[precision]
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            assert cosine.min() > min_cosine and cosine.mean() > mean_cosine, precision
            assert not np.array_equal(a, b)  # reduced precision really ran
            assert accuracy[precision] >= accuracy["float32"] - 0.03, precision

    def test_float16_overflow_is_recomputed_in_float32(self, small_images_module):
        featurizer = tiny().fit(small_images_module)
        expected = featurizer.transform(small_images_module)

        class Overflowing(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                out = self.inner(x)
                if torch.is_autocast_enabled("cpu"):
                    return torch.full_like(out, float("inf"))  # what an fp16 overflow gives
                return out

        dataset = ImageDataset(as_image_source(small_images_module), ImageTransform(featurizer.data_config_))
        out = forward_batches(Overflowing(featurizer.backbone_), dataset, device="cpu", precision="float16")
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)

    def test_out_of_memory_backs_off_without_losing_rows(self, small_images_module):
        featurizer = tiny().fit(small_images_module)
        expected = featurizer.transform(small_images_module)
        calls = []

        class Flaky(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                calls.append(len(x))
                if len(x) > 2:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                return self.inner(x)

        dataset = ImageDataset(as_image_source(small_images_module), ImageTransform(featurizer.data_config_))
        out = forward_batches(Flaky(featurizer.backbone_), dataset, batch_size=6, device="cpu")
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
        assert calls[:2] == [6, 3] and max(calls[2:]) <= 2  # halved until it fits, then kept small


DEPLOY_SCRIPT = textwrap.dedent(
    """
    import sys, joblib, numpy as np
    import sklearn_tl.models.weights as weights

    def no_lookup(*args, **kwargs):
        raise AssertionError("a deployed model must not look weights up")

    weights.resolve_weights = no_lookup
    weights.OFFLINE_WEIGHT_PACKAGES = ()
    model = joblib.load(sys.argv[1])
    X = np.load(sys.argv[2])
    np.save(sys.argv[3], model.predict_proba(X))
    """
)


@pytest.mark.slow
def test_joblib_deploy_in_a_fresh_cpu_only_process(tmp_path, textures):
    X, y = textures
    pipe = make_pipeline(
        PretrainedCNNFeaturizer(weights=REAL_WEIGHTS, image_size=64), StandardScaler(), LogisticRegression(max_iter=500)
    ).fit(X, y)
    joblib.dump(pipe, tmp_path / "model.joblib")
    np.save(tmp_path / "X.npy", X[:10])
    (tmp_path / "deploy.py").write_text(DEPLOY_SCRIPT)
    env = {"CUDA_VISIBLE_DEVICES": "", "SKLEARN_TL_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "empty"),
           "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, str(tmp_path / "deploy.py"), str(tmp_path / "model.joblib"), str(tmp_path / "X.npy"),
         str(tmp_path / "proba.npy")],
        check=True, env=env, timeout=300,
    )
    np.testing.assert_allclose(np.load(tmp_path / "proba.npy"), pipe.predict_proba(X[:10]), rtol=1e-5, atol=1e-6)


def test_pickled_state_is_on_the_cpu(small_images_module):
    featurizer = tiny().fit(small_images_module)
    state = featurizer.__getstate__()
    assert all(isinstance(a, np.ndarray) for a in state["_backbone"].values())  # data: numpy arrays, CPU
    restored = pickle.loads(pickle.dumps(featurizer))
    np.testing.assert_array_equal(restored.transform(small_images_module), featurizer.transform(small_images_module))


@pytest.mark.slow
def test_pretrained_features_beat_raw_pixels_and_random_init(textures):
    X, y = textures
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    raw = cross_val_score(classifier, X.reshape(len(X), -1) / 255.0, y, cv=3).mean()
    scores = {}
    for weights in [REAL_WEIGHTS, None]:
        Z = PretrainedCNNFeaturizer(weights=weights, image_size=96).fit_transform(X)
        scores[weights] = cross_val_score(classifier, Z, y, cv=3).mean()
    assert scores[REAL_WEIGHTS] >= 0.9
    assert scores[REAL_WEIGHTS] > raw + 0.1
    assert scores[REAL_WEIGHTS] > scores[None] + 0.1


class TestBatchNormFolding:
    @pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_b0", "inception_v3"])
    def test_folded_backbone_computes_the_same_embedding(self, name):
        from sklearn_tl.models.build import build_embedder

        size = 80 if name == "inception_v3" else 48
        X = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        featurizer = PretrainedCNNFeaturizer(name, weights=None, image_size=size, random_state=0).fit(X)
        n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in featurizer.backbone_.modules())
        unfolded = build_embedder(name, None, image_size=size, seed=featurizer._build_args[-1])
        assert n_norms < sum(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.module.modules()) // 2
        dataset = ImageDataset(as_image_source(X), ImageTransform(featurizer.data_config_))
        expected = forward_batches(unfolded.module, dataset, device="cpu", precision="float32")
        np.testing.assert_allclose(featurizer.transform(X), expected, rtol=1e-4, atol=1e-5)

    def test_a_module_that_applies_them_otherwise_is_left_alone(self):
        class NormFirst(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3)
                self.norm = torch.nn.BatchNorm2d(3)
                with torch.no_grad():
                    self.norm.running_mean.fill_(0.3)
                    self.norm.running_var.fill_(2.0)

            def forward(self, x):  # registered conv → norm, applied norm → conv
                return self.conv(self.norm(x))

        featurizer = PretrainedCNNFeaturizer(NormFirst(), image_size=16).fit(np.zeros((1, 16, 16, 3), np.uint8))
        assert isinstance(featurizer.backbone_.trunk.norm, torch.nn.BatchNorm2d)


@pytest.mark.slow
def test_compile_gives_the_same_embeddings(small_images_module):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    eager = PretrainedCNNFeaturizer(module, image_size=16, batch_size=4).fit(small_images_module)
    fast = clone(eager).set_params(compile=True).fit(small_images_module)
    # 6 images in batches of 4: the last batch is padded, so one shape is compiled
    np.testing.assert_allclose(fast.transform(small_images_module), eager.transform(small_images_module),
                               rtol=1e-4, atol=1e-5)
    pickle.loads(pickle.dumps(fast))  # the compiled copy is not part of the state


class TestReviewedEdgeCases:
    def test_module_with_a_fixed_input_size_above_96(self):
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.BatchNorm2d(2), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(2 * 128 * 128, 8),
        )
        X = np.zeros((2, 150, 150, 3), np.uint8)
        assert PretrainedCNNFeaturizer(module, image_size=128).fit(X).transform(X).shape == (2, 8)

    def test_half_precision_tensors_are_accepted(self, small_images_module):
        X = torch.from_numpy(small_images_module).permute(0, 3, 1, 2) / 255.0
        expected = tiny().fit_transform(X)
        np.testing.assert_allclose(tiny().fit_transform(X.to(torch.bfloat16)), expected, atol=0.05)

    def test_module_weights_none_is_a_seeded_random_init(self, small_images_module):
        module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        own = PretrainedCNNFeaturizer(module, image_size=16).fit_transform(small_images_module)
        again = PretrainedCNNFeaturizer(module, weights="DEFAULT", image_size=16).fit_transform(small_images_module)
        np.testing.assert_array_equal(own, again)  # "DEFAULT": the module's own parameters
        seeded = [PretrainedCNNFeaturizer(module, weights=None, image_size=16, random_state=seed)
                  .fit_transform(small_images_module) for seed in (0, 0, 1)]
        np.testing.assert_array_equal(seeded[0], seeded[1])
        assert not np.allclose(seeded[0], seeded[2]) and not np.allclose(seeded[0], own)

    def test_enum_weights_for_a_module_are_refused_clearly(self, small_images_module):
        from torchvision.models import ResNet18_Weights

        with pytest.raises(ValueError, match="For a torch.nn.Module backbone"):
            PretrainedCNNFeaturizer(torch.nn.Conv2d(3, 4, 3), weights=ResNet18_Weights.IMAGENET1K_V1).fit(
                small_images_module
            )

    def test_float_tiff_with_on_error_warn(self, tmp_path, small_images_module):
        Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32)).save(tmp_path / "f.tif")
        good = tmp_path / "good.png"
        Image.fromarray(small_images_module[0]).save(good)
        with pytest.raises(ImageReadError, match="f.tif"):
            tiny().fit(small_images_module).transform([good, tmp_path / "f.tif"])
        with pytest.warns(match="f.tif"):
            Z = tiny(on_error="warn").fit(small_images_module).transform([good, tmp_path / "f.tif"])
        assert np.isnan(Z[1]).all() and np.isfinite(Z[0]).all()

    def test_weights_file_changed_after_a_lazy_fit(self, tmp_path, mobilenet_file, small_images_module):
        import shutil

        path = tmp_path / "mine.pth"
        shutil.copy(mobilenet_file, path)
        featurizer = PretrainedCNNFeaturizer(weights=path, image_size=32, cache=tmp_path / "cache").fit(
            small_images_module
        )
        state = torch.load(path, weights_only=True)
        state["features.0.0.weight"] += 1.0
        torch.save(state, path)
        with pytest.raises(ValueError, match="changed since fit"):
            featurizer.transform(small_images_module)
