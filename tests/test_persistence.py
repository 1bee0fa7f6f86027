"""load_model on malformed files: always a ModelFileError naming the file, never a bare KeyError."""

import copy
import pickle

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.deploy.persistence import FORMAT, load_model, save_model
from sklearn_tl.exceptions import ModelFileError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real model file and its content, for altering."""
    X = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    model = make_pipeline(PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, progress=False),
                          LogisticRegression()).fit(X, [0, 1, 0, 1])
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    save_model(model, path)
    return path, joblib.load(path)


def _with_header(content, change):
    content = copy.deepcopy(content)
    change(content)
    return content


def _pop(key):
    return lambda content: content.pop(key)


def _set_header(value):
    return lambda content: content.__setitem__("header", value)


def _set_field(field, value):
    return lambda content: content["header"].__setitem__(field, value)


def _set_version(package, value):
    return lambda content: content["header"]["versions"].__setitem__(package, value)


MALFORMED = {
    "header missing": _pop("header"),
    "model missing": _pop("model"),
    "header is a str": _set_header("sklearn_tl 0.1"),
    "header is a list": _set_header([("versions", {})]),
    "header is None": _set_header(None),
    "header empty": _set_header({}),
    "no versions": lambda c: c["header"].pop("versions"),
    "versions is a str": _set_field("versions", "0.1.0"),
    "versions is a list": _set_field("versions", ["0.1.0"]),
    "no sklearn_tl version": lambda c: c["header"]["versions"].pop("sklearn_tl"),
    "sklearn_tl version is an int": _set_version("sklearn_tl", 1),
    "torch version is a float": _set_version("torch", 2.1),
    "estimator is an int": _set_field("estimator", 3),
    "classes is a str": _set_field("classes", "01"),
    "no preprocessing": lambda c: c["header"].pop("preprocessing"),
    "preprocessing is a list": _set_field("preprocessing", []),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_header_is_a_model_file_error_naming_the_file(case, saved, tmp_path):
    path, content = saved
    bad = tmp_path / f"{case.replace(' ', '_')}.joblib"
    joblib.dump(_with_header(content, MALFORMED[case]), bad)
    with pytest.raises(ModelFileError) as error:
        load_model(bad)
    assert str(bad) in str(error.value)
    assert not isinstance(error.value.__cause__, (KeyError, AttributeError, TypeError))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_model_file_error(fraction, saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.joblib"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match="truncated|malformed|not an sklearn_tl") as error:
        load_model(bad)
    assert str(bad) in str(error.value)


@pytest.mark.parametrize(
    "payload",
    [b"", b"this is not a model", b"\x00" * 64, pickle.dumps(["format", FORMAT]), pickle.dumps(42)],
    ids=["empty", "text", "zeros", "pickled list", "pickled int"],
)
def test_not_a_model_file_is_a_model_file_error(payload, tmp_path):
    bad = tmp_path / "model.joblib"
    bad.write_bytes(payload)
    with pytest.raises(ModelFileError) as error:
        load_model(bad)
    assert str(bad) in str(error.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist") as error:
        load_model(tmp_path / "nope.joblib")
    assert "nope.joblib" in str(error.value)


def test_intact_file_still_loads(saved):
    path, content = saved
    model, header = load_model(path, return_header=True)
    assert header == content["header"]
    assert list(model.classes_) == [0, 1]
