"""Model files written by earlier versions load with identical outputs.

``tests/data/<version>/`` holds files written by that version with
``save_model`` (``tests/data/make_<version>.py`` made them) and the outputs
they gave when written. Users' saved files are a contract: these must keep
loading through ``load_model`` and plain ``joblib.load``.
"""

import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest

from sklearn_tl import load_model

DATA = Path(__file__).parent / "data"
VERSIONS = sorted(p.name for p in DATA.iterdir() if p.is_dir() and (p / "outputs.npz").exists())
MODELS = {
    "featurizer_pipeline": lambda m, X: {"transform": m[0].transform(X), "predict_proba": m.predict_proba(X)},
    "finetune": lambda m, X: {"transform": m.transform(X), "predict_proba": m.predict_proba(X)},
    "hybrid_svc": lambda m, X: {
        "transform": m.transform(X),
        "predict": m.predict(X),
        "decision_function": m.final_estimator_.decision_function(m.transform(X)),
    },
}


def test_there_are_old_files():
    assert "v0_1_0" in VERSIONS


@pytest.mark.parametrize("loader", ["load_model", "joblib"])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("version", VERSIONS)
def test_old_model_file_gives_identical_outputs(version, name, loader):
    folder = DATA / version
    expected = np.load(folder / "outputs.npz")
    path = folder / f"{name}.joblib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version warnings are the point of other tests
        model = load_model(path) if loader == "load_model" else joblib.load(path)["model"]
    X = expected["X"]
    X_before = X.copy()
    for output, value in MODELS[name](model, X).items():
        np.testing.assert_array_equal(value, expected[f"{name}.{output}"], err_msg=f"{version}/{name}.{output}")
    np.testing.assert_array_equal(X, X_before)
