"""Fitted estimators stored as data: skops files trusting only sklearn_tl, pickles naming no private module.

The network is rebuilt from the registry on load and the saved arrays loaded
into it; outputs after a round trip equal the fitted model's exactly.
"""

import os
import pickle
import pickletools
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import skops.io
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from torch import nn

import sklearn_tl
from sklearn_tl import (
    EmbeddingCache,
    FineTuneClassifier,
    ModelFileError,
    PretrainedCNNFeaturizer,
    SafeFormatError,
    load_model,
    save_model,
    skops_trusted_types,
)
from sklearn_tl.estimators.featurizer import featurizer_fingerprint as model_fingerprint

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
Y = np.array(["cat", "dog"] * 4, dtype=object)
SMALL = {"weights": None, "image_size": 32, "random_state": 0}
FINETUNE = {**SMALL, "max_epochs": 1, "batch_size": 4}


def outputs(model) -> dict:
    """What a model gives on X: transform of its sklearn_tl step and its predictions."""
    step = model[0] if hasattr(model, "steps") else model
    out = {"transform": step.transform(X), "predict": np.asarray(model.predict(X), dtype=str)}
    if getattr(model, "final_estimator_", None) is None:
        out["predict_proba"] = model.predict_proba(X)
    return out


@pytest.fixture(scope="module")
def models():
    return {
        "pipeline": make_pipeline(
            PretrainedCNNFeaturizer("mobilenet_v3_small", layer=["features.2", "features.5"], progress=False, **SMALL),
            LogisticRegression(max_iter=500),
        ).fit(X, Y),
        "finetune": FineTuneClassifier("mobilenet_v3_small", head=(8,), **FINETUNE).fit(X, Y),
        "hybrid": FineTuneClassifier("mobilenet_v3_small", final_estimator=SVC(), layer="features.5",
                                     **FINETUNE).fit(X, Y),
    }


@pytest.fixture(scope="module")
def skops_files(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("skops")
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.skops"
        skops.io.dump(model, paths[name])
    return paths


def test_skops_lists_only_sklearn_tl_types(skops_files):
    assert sorted(skops_trusted_types()) == [
        "sklearn_tl.FineTuneClassifier", "sklearn_tl.FineTuneRegressor", "sklearn_tl.PretrainedCNNFeaturizer"
    ]
    for name, path in skops_files.items():
        untrusted = skops.io.get_untrusted_types(file=path)
        assert untrusted, name
        assert set(untrusted) <= set(skops_trusted_types()), (name, untrusted)


FRESH_PROCESS = """
import sys, numpy as np, skops.io, sklearn_tl
from sklearn_tl import _sources
def no_lookup(*args, **kwargs):
    raise AssertionError("weights looked up while loading a model")
for source in _sources.sources():
    type(source).resolve_weights = no_lookup
_sources.ModelSource.load = no_lookup
X = np.load(sys.argv[1])
results = {}
for path in sys.argv[3:]:
    model = skops.io.load(path, trusted=sklearn_tl.skops_trusted_types())
    step = model[0] if hasattr(model, "steps") else model
    name = path.rsplit("/", 1)[-1].split(".")[0]
    results[name + ".transform"] = step.transform(X)
    results[name + ".predict"] = np.asarray(model.predict(X), dtype=str)
    if getattr(model, "final_estimator_", None) is None:
        results[name + ".predict_proba"] = model.predict_proba(X)
np.savez(sys.argv[2], **results)
"""


def test_skops_round_trip_in_a_fresh_process_trusting_only_sklearn_tl(models, skops_files, tmp_path):
    np.save(tmp_path / "X.npy", X)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH_PROCESS), str(tmp_path / "X.npy"), str(tmp_path / "out.npz"),
         *map(str, skops_files.values())],
        check=True, env=env, timeout=300,
    )
    loaded = np.load(tmp_path / "out.npz")
    for name, model in models.items():
        for output, value in outputs(model).items():
            np.testing.assert_array_equal(loaded[f"{name}.{output}"], value, err_msg=f"{name}.{output}")


@pytest.mark.parametrize("how", ["pickle", "joblib", "save_model", "save_model_joblib"])
def test_round_trip_gives_identical_outputs(models, how, tmp_path):
    for name, model in models.items():
        if how == "pickle":
            loaded = pickle.loads(pickle.dumps(model))
        elif how == "joblib":
            joblib.dump(model, tmp_path / "m.joblib")
            loaded = joblib.load(tmp_path / "m.joblib")
        else:
            path = tmp_path / ("m.joblib" if how == "save_model_joblib" else "m.skops")
            save_model(model, path)
            loaded = load_model(path)
        for output, value in outputs(model).items():
            np.testing.assert_array_equal(outputs(loaded)[output], value, err_msg=f"{name}.{output}")


def _pickled_modules(data: bytes) -> set:
    """The module of every global the pickle stream names, read from its opcodes."""
    modules, strings, memo = set(), [], {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif opcode.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
            strings.append(memo[arg])
        elif opcode.name == "GLOBAL":
            modules.add(arg.split(" ")[0])
        elif opcode.name == "STACK_GLOBAL":
            modules.add(strings[-2])
        if opcode.name == "MEMOIZE" and not strings:
            memo[len(memo)] = None
    return modules


def test_pickles_name_only_public_modules(models):
    for name, model in models.items():
        modules = _pickled_modules(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        assert "sklearn_tl" in modules, name
        foreign = {m for m in modules if m != "sklearn_tl" and m.split(".")[0] not in {"numpy", "builtins", "sklearn"}}
        assert not foreign, (name, sorted(foreign))


class TinyNet(nn.Module):
    """A user's own backbone."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_a_users_module_pickles_but_the_safe_format_refuses_it(tmp_path):
    model = PretrainedCNNFeaturizer(TinyNet(), weights="DEFAULT", image_size=16, progress=False).fit(X)
    expected = model.transform(X)
    with pytest.raises(SafeFormatError, match=r"backbone=<TinyNet>.*format='joblib'"):
        save_model(model, tmp_path / "m.skops")
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(SafeFormatError, match="cannot rebuild"):
        skops.io.dump(model, tmp_path / "direct.skops")
    save_model(model, tmp_path / "m.skops", format="joblib")
    np.testing.assert_array_equal(load_model(tmp_path / "m.skops").transform(X), expected)
    joblib.dump(model, tmp_path / "m.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "m.joblib").transform(X), expected)


class Doubler(TransformerMixin, BaseEstimator):
    """A user's transformer: skops lists it as untrusted."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return 2 * X


def test_load_model_refuses_untrusted_types_and_names_them(tmp_path):
    model = make_pipeline(PretrainedCNNFeaturizer("mobilenet_v3_small", progress=False, **SMALL), Doubler(),
                          LogisticRegression()).fit(X, Y)
    path = tmp_path / "m.skops"
    save_model(model, path)
    with pytest.raises(ModelFileError, match=r"tests\.test_state\.Doubler") as error:
        load_model(path)
    assert str(path) in str(error.value)
    np.testing.assert_array_equal(load_model(path, trusted=[Doubler]).predict_proba(X), model.predict_proba(X))


def test_save_model_format_follows_the_name_and_load_model_sniffs_it(models, tmp_path):
    model = models["finetune"]
    save_model(model, tmp_path / "a.skops")
    save_model(model, tmp_path / "b.joblib")
    save_model(model, tmp_path / "c.model", format="joblib")
    assert (tmp_path / "a.skops").read_bytes()[:2] == b"PK"
    assert joblib.load(tmp_path / "b.joblib")["format"] == "sklearn_tl.model/1"
    for name in ("a.skops", "b.joblib", "c.model"):
        model2, header = load_model(tmp_path / name, return_header=True)
        assert header["estimator"] == "FineTuneClassifier"
        np.testing.assert_array_equal(model2.predict_proba(X), model.predict_proba(X))
    with pytest.raises(ValueError, match="format must be one of"):
        save_model(model, tmp_path / "d.skops", format="pickle")


def test_partial_fit_after_a_round_trip_continues_as_without_it(models, tmp_path):
    model = models["finetune"]
    path = tmp_path / "m.skops"
    save_model(model, path)
    loaded = load_model(path)
    before = pickle.loads(pickle.dumps(model))  # the fitted model, untouched by this test
    before.partial_fit(X, Y)
    loaded.partial_fit(X, Y)
    np.testing.assert_array_equal(loaded.predict_proba(X), before.predict_proba(X))
    assert len(loaded.history) == len(before.history) == 2

    lean = tmp_path / "lean.skops"
    save_model(model, lean, include_optimizer=False)
    assert lean.stat().st_size < 0.5 * path.stat().st_size
    served = load_model(lean)
    np.testing.assert_array_equal(served.predict_proba(X), model.predict_proba(X))
    served.partial_fit(X, Y)  # starts the optimizer afresh
    assert len(served.history) == 2


def test_cache_keys_are_the_same_after_a_round_trip(mobilenet_file, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    model = PretrainedCNNFeaturizer("mobilenet_v2", weights="IMAGENET1K_V1", image_size=32, cache=cache,
                                    progress=False).fit(X)
    assert model._built_backbone() is None  # lazy: built at the first cache miss
    rows = model.transform(X)
    entries = cache.n_entries
    path = tmp_path / "m.skops"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.cache == cache
    assert loaded._cache_fingerprint == model._cache_fingerprint
    assert model_fingerprint(loaded, exact=True) == model_fingerprint(model, exact=True)
    np.testing.assert_array_equal(loaded.transform(X), rows)
    assert cache.n_entries == entries  # every row found under the same keys


def test_mlflow_default_format_saves_logs_and_loads(models, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    import mlflow.sklearn

    pipe = models["pipeline"]
    mlflow.sklearn.save_model(pipe, tmp_path / "saved", skops_trusted_types=skops_trusted_types())
    np.testing.assert_array_equal(mlflow.sklearn.load_model(tmp_path / "saved").predict_proba(X),
                                  pipe.predict_proba(X))

    model = models["finetune"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x keeps the file store behind this flag
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", skops_trusted_types=skops_trusted_types())
    served = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_array_equal(np.asarray(served.predict(X)), model.predict(X))
    np.testing.assert_array_equal(mlflow.sklearn.load_model(info.model_uri).predict_proba(X),
                                  model.predict_proba(X))


def test_trusted_types_are_public_and_importable():
    assert "skops_trusted_types" in sklearn_tl.__all__
    for name in skops_trusted_types():
        module, _, cls = name.rpartition(".")
        assert getattr(__import__(module), cls).__module__ == "sklearn_tl"
