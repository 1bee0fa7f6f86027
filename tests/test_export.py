"""export_onnx: one ONNX file per fitted model, compared with the model where torch cannot be imported.

Every final estimator users put after a featurizer, after StandardScaler and/or
PCA, inside a Pipeline or a GridSearchCV, and the fine-tuner (its own head and
its hybrid mode) are exported and run by ``onnxruntime`` plus
``sklearn_tl/onnx_images.py`` in a subprocess where ``import torch`` fails.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from torch import nn

import sklearn_tl
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer, export_onnx, load_model, save_model
from sklearn_tl.cli import main

# Probabilities of the file vs the model's: the ONNX network's float32 rounding (~1e-6 relative),
# amplified by the steps (an SGDClassifier's unregularised scores reach the thousands: up to 3e-5 seen).
PROBA_ATOL = 1e-4

TORCH_FREE = """
import json, sys
sys.modules["torch"] = None  # `import torch` fails in this process
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch imported")
import importlib.util
import numpy as np
import onnxruntime
spec = importlib.util.spec_from_file_location("onnx_images", {helper!r})
onnx_images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onnx_images)
for job in json.load(open({jobs!r})):
    session = onnxruntime.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
    batch = onnx_images.prepare_images(list(np.load(job["images"])), **onnx_images.preprocessing_of(session))
    names = [output.name for output in session.get_outputs()]
    outputs = session.run(None, {{"images": batch}})
    np.savez(job["out"], **{{n: o.astype(str) if o.dtype == object else o for n, o in zip(names, outputs)}})
assert not [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] == "torch"]
"""


def run_torch_free(jobs, folder):
    """Run each ``{"model": .onnx, "images": .npy}`` job in one process without torch: a dict of outputs per job."""
    for i, job in enumerate(jobs):
        job["out"] = str(folder / f"outputs-{i}.npz")
    (folder / "jobs.json").write_text(json.dumps(jobs))
    script = TORCH_FREE.format(
        helper=os.path.join(os.path.dirname(sklearn_tl.__file__), "onnx_images.py"), jobs=str(folder / "jobs.json")
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = []
    for job in jobs:
        with np.load(job["out"]) as saved:
            results.append({name: saved[name] for name in saved.files})
    return results


def tiny_backbone():
    """A seeded two-convolution CNN: 16 features, exported and run in milliseconds."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU())


class Doubler(TransformerMixin, BaseEstimator):
    """A transformer skl2onnx has no converter for."""

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def transform(self, X):
        return 2 * X


FINAL_ESTIMATORS = {
    "svc-rbf": lambda: SVC(),
    "svc-linear": lambda: SVC(kernel="linear"),
    "svc-probability": lambda: SVC(probability=True, random_state=0),
    "calibrated-svc": lambda: CalibratedClassifierCV(SVC(), ensemble=False),  # sklearn's successor of the above
    "linear-svc": lambda: LinearSVC(),
    "logistic-regression": lambda: LogisticRegression(max_iter=1000),
    "ridge": lambda: RidgeClassifier(),
    "sgd-hinge": lambda: SGDClassifier(random_state=0),
    "sgd-log-loss": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "sgd-modified-huber": lambda: SGDClassifier(loss="modified_huber", random_state=0),
    "knn": lambda: KNeighborsClassifier(3),
    "random-forest": lambda: RandomForestClassifier(10, random_state=0),
    "hist-gradient-boosting": lambda: HistGradientBoostingClassifier(max_iter=10, min_samples_leaf=5, random_state=0),
    "mlp": lambda: MLPClassifier((16,), max_iter=500, random_state=0),
}
# Each final estimator after a different preprocessing, in turn.
PREPROCESSING = [[], [StandardScaler], [PCA], [StandardScaler, PCA]]


def _pipelines(featurizer, X, y):
    """Fitted pipelines (featurizer fitted once) for every final estimator, and the other containers."""
    embeddings = featurizer.transform(X)
    models = {}
    for i, (name, make) in enumerate(FINAL_ESTIMATORS.items()):
        before = [step(n_components=8) if step is PCA else step() for step in PREPROCESSING[i % len(PREPROCESSING)]]
        tail = make_pipeline(*before, make()).fit(embeddings, y)
        models[name] = Pipeline([("featurizer", featurizer), *tail.steps])
    nested = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(embeddings, y)
    models["nested-pipeline"] = make_pipeline(featurizer, nested)
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC()), {"svc__C": [0.5, 2.0]}, cv=2).fit(embeddings, y)
    models["grid-search-step"] = make_pipeline(featurizer, search)  # a step's best_estimator_
    return models


@pytest.fixture(scope="module")
def data(textures):
    X, y = textures
    return X[::2], y[::2]  # 45 images, 3 classes


@pytest.fixture(scope="module")
def models(data):
    X, y = data
    featurizer = PretrainedCNNFeaturizer(tiny_backbone(), image_size=16, backend="torch").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True) is deprecated in sklearn 1.9
        warnings.simplefilter("ignore", ConvergenceWarning)  # a small MLP on 45 images
        models = _pipelines(featurizer, X, y)
        unfitted = make_pipeline(PretrainedCNNFeaturizer(tiny_backbone(), image_size=16, backend="torch"), SVC())
        models["grid-search"] = GridSearchCV(unfitted, {"svc__C": [0.5, 2.0]}, cv=2).fit(X, y)
        models["grid-search-best"] = models["grid-search"].best_estimator_
        names = np.array(["brick", "grass", "gravel"])[y]  # string labels: the fine-tuner's own label table
        params = dict(image_size=16, max_epochs=1, train_split=None, batch_size=16, verbose=0, random_state=0)
        models["fine-tuner"] = FineTuneClassifier(tiny_backbone(), **params).fit(X, names)
        models["fine-tuner-hybrid-svc"] = FineTuneClassifier(tiny_backbone(), final_estimator=SVC(), **params).fit(X, y)
        tuned = models["fine-tuner"]  # as a pipeline's transformer: its tuned embeddings
        models["fine-tuner-as-step"] = Pipeline([("tuned", tuned), ("svc", SVC().fit(tuned.transform(X), names))])
        final = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        models["fine-tuner-hybrid-pipeline"] = FineTuneClassifier(tiny_backbone(), final_estimator=final, **params).fit(
            X, names
        )
    return models


@pytest.fixture(scope="module")
def exported(models, data, tmp_path_factory):
    """Each model exported and run without torch on images at the resize length (the helper only crops)."""
    X, _ = data
    folder = tmp_path_factory.mktemp("exported")
    config = models["svc-rbf"][0].data_config_
    exact = X[:, : config.resize_size, : config.resize_size]
    np.save(folder / "images.npy", exact)
    jobs, failures = [], {}
    for name, model in models.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                jobs.append({"name": name, "model": export_onnx(model, folder / f"{name}.onnx")})
        except Exception as exc:  # reported by that model's test
            failures[name] = exc
    for job in jobs:
        job["images"] = str(folder / "images.npy")
    results = run_torch_free(jobs, folder)
    return exact, {job["name"]: result for job, result in zip(jobs, results)}, failures


def has_predict_proba(model) -> bool:
    """A hybrid fine-tuner's predict_proba is its final_estimator_'s, if that has one."""
    final = getattr(model, "final_estimator_", None)
    return hasattr(model if final is None else final, "predict_proba")


CONTAINERS = ["nested-pipeline", "grid-search-step", "grid-search", "grid-search-best"]
FINE_TUNERS = ["fine-tuner", "fine-tuner-hybrid-svc", "fine-tuner-hybrid-pipeline", "fine-tuner-as-step"]


class TestExportedModelsRunWithoutTorch:
    @pytest.mark.parametrize("name", [*FINAL_ESTIMATORS, *CONTAINERS, *FINE_TUNERS])
    def test_outputs_are_the_models(self, name, models, exported):
        images, outputs, failures = exported
        if name in failures:
            raise failures[name]
        model, got = models[name], outputs[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            has_proba = has_predict_proba(model)
            assert list(got) == (["label", "probabilities"] if has_proba else ["label"])
            np.testing.assert_array_equal(got["label"], model.predict(images))
            if has_proba:
                np.testing.assert_allclose(got["probabilities"], model.predict_proba(images), rtol=0, atol=PROBA_ATOL)

    def test_opset(self, models, exported, tmp_path):
        import onnx
        import onnxruntime

        from sklearn_tl.onnx_images import prepare_images, preprocessing_of

        images, _, _ = exported
        model = models["hist-gradient-boosting"]
        path = export_onnx(model, tmp_path / "m.onnx", opset=15)
        assert {entry.domain: entry.version for entry in onnx.load(path).opset_import}[""] == 15
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        label, proba = session.run(None, {"images": prepare_images(list(images), **preprocessing_of(session))})
        np.testing.assert_array_equal(label, model.predict(images))
        np.testing.assert_allclose(proba, model.predict_proba(images), rtol=0, atol=PROBA_ATOL)

    def test_the_cases_cover_both_kinds_of_output(self, models):
        kinds = {has_predict_proba(models[name]) for name in FINAL_ESTIMATORS}
        assert kinds == {True, False}
        assert isinstance(models["fine-tuner"].classes_[0], str)  # a string label table in the file


class TestFineTunerExport:
    def test_cli_exports_a_fine_tuner_file(self, models, data, tmp_path):
        import onnxruntime

        from sklearn_tl.onnx_images import prepare_images, preprocessing_of

        X, _ = data
        model = models["fine-tuner-hybrid-svc"]
        save_model(model, tmp_path / "ft.joblib")
        assert main(["export", str(tmp_path / "ft.joblib"), str(tmp_path / "ft.onnx")]) == 0
        session = onnxruntime.InferenceSession(str(tmp_path / "ft.onnx"), providers=["CPUExecutionProvider"])
        config = model.data_config_
        exact = X[:, : config.resize_size, : config.resize_size]
        (label,) = session.run(None, {"images": prepare_images(list(exact), **preprocessing_of(session))})
        np.testing.assert_array_equal(label, load_model(tmp_path / "ft.joblib").predict(exact))

    def test_tta_is_refused_with_the_fix(self, models, tmp_path):
        model = models["fine-tuner"]
        model.set_params(tta=True)
        try:
            with pytest.raises(ValueError, match=r"tta=True.*set_params\(tta=False\)"):
                export_onnx(model, tmp_path / "m.onnx")
        finally:
            model.set_params(tta=False)
        assert not (tmp_path / "m.onnx").exists()

    def test_unconvertible_final_estimator_step_is_named(self, models, data, tmp_path):
        X, y = data
        model = FineTuneClassifier(tiny_backbone(), image_size=16, max_epochs=1, train_split=None, verbose=0,
                                   final_estimator=make_pipeline(Doubler(), SVC()), random_state=0).fit(X, y)
        with pytest.raises(ValueError, match=r"'final_estimator__doubler' \(Doubler\) cannot be converted"):
            export_onnx(model, tmp_path / "m.onnx")


class TestErrors:
    def test_unconvertible_step_is_named(self, models, data, tmp_path):
        X, y = data
        featurizer = models["svc-rbf"][0]
        embeddings = featurizer.transform(X)
        odd = Pipeline([("featurizer", featurizer), ("double", Doubler().fit(embeddings)),
                        ("svc", SVC().fit(2 * embeddings, y))])
        with pytest.raises(ValueError, match=r"step\(s\) 'double' \(Doubler\) cannot be converted") as caught:
            export_onnx(odd, tmp_path / "m.onnx")
        assert "Traceback" not in str(caught.value) and len(str(caught.value)) < 400
        searched = GridSearchCV(make_pipeline(Doubler(), SVC()), {"svc__C": [1.0]}, cv=2).fit(embeddings, y)
        with pytest.raises(ValueError, match=r"'gridsearchcv__doubler' \(Doubler\)"):
            export_onnx(make_pipeline(featurizer, searched), tmp_path / "m.onnx")

    def test_refused_configuration_is_named_and_bounded(self, models, data, tmp_path):
        X, _ = data
        featurizer = models["svc-rbf"][0]
        refused = make_pipeline(featurizer, FunctionTransformer(np.abs).fit(X[:1]), models["svc-rbf"][-1])
        with pytest.raises(ValueError, match=r"could not convert the step\(s\) 'functiontransformer'") as caught:
            export_onnx(refused, tmp_path / "m.onnx")
        assert len(str(caught.value)) < 600

    def test_search_without_best_estimator(self, data, tmp_path):
        X, y = data
        pipeline = make_pipeline(PretrainedCNNFeaturizer(tiny_backbone(), image_size=16, backend="torch"), SVC())
        search = GridSearchCV(pipeline, {"svc__C": [1.0, 2.0]}, cv=2, refit=False).fit(X, y)
        with pytest.raises(ValueError, match="refit=False: it has no best_estimator_"):
            export_onnx(search, tmp_path / "m.onnx")

    def test_wrong_model_types(self, models, tmp_path):
        with pytest.raises(TypeError, match="first step is a PretrainedCNNFeaturizer or a fine-tuner"):
            export_onnx(make_pipeline(FunctionTransformer(), models["svc-rbf"][-1]), tmp_path / "m.onnx")
        with pytest.raises(TypeError, match="got SVC"):
            export_onnx(models["svc-rbf"][-1], tmp_path / "m.onnx")


# ---------------------------------------------------------------- a registered backbone, and the CLI


@pytest.fixture(scope="module")
def pipeline(textures):
    X, y = textures
    featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=40, random_state=0)
    return make_pipeline(featurizer, StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


class TestExportOnnx:
    def test_runs_where_torch_cannot_be_imported(self, pipeline, textures, tmp_path):
        X, _ = textures  # 48 px: the featurizer's resize length (46) differs, so the helper resizes too
        crop = pipeline[0].data_config_
        save_model(pipeline, tmp_path / "model.joblib")
        assert main(["export", str(tmp_path / "model.joblib"), str(tmp_path / "model.onnx")]) == 0
        # Images already at the resize length: the helper's crop is exactly the featurizer's.
        exact = X[:, : crop.resize_size, : crop.resize_size]
        np.save(tmp_path / "exact.npy", exact)
        np.save(tmp_path / "resized.npy", X)
        model = str(tmp_path / "model.onnx")
        jobs = [{"model": model, "images": str(tmp_path / f"{name}.npy")} for name in ("exact", "resized")]
        exact_out, resized_out = run_torch_free(jobs, tmp_path)
        loaded = load_model(tmp_path / "model.joblib")
        np.testing.assert_array_equal(exact_out["label"], loaded.predict(exact))
        np.testing.assert_allclose(exact_out["probabilities"], loaded.predict_proba(exact), atol=1e-4)
        # Pillow's resize is not torchvision's to the last grey level: the same labels all the same.
        np.testing.assert_array_equal(resized_out["label"], loaded.predict(X))

    def test_a_bare_featurizer_gives_embeddings(self, pipeline, textures, tmp_path):
        import onnxruntime

        from sklearn_tl.onnx_images import prepare_images, preprocessing_of

        X, _ = textures
        session = onnxruntime.InferenceSession(export_onnx(pipeline[0], tmp_path / "f.onnx"))
        embedded = session.run(["embeddings"], {"images": prepare_images(list(X[:4]), **preprocessing_of(session))})[0]
        reference = pipeline[0].transform(X[:4])
        cosine = (embedded * reference).sum(1) / (np.linalg.norm(embedded, axis=1) * np.linalg.norm(reference, axis=1))
        assert cosine.min() > 0.99
