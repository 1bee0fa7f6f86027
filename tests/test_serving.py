"""MLflow serving, for real: a model logged in MLflow's default (skops) format is served by
``mlflow models serve`` on 127.0.0.1 and answers base64 JPEG requests exactly as the local model does."""

import warnings

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

import sklearn_tl  # noqa: E402
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer  # noqa: E402

from .conftest import REAL_WEIGHTS  # noqa: E402
from .mlflow_server import invocation_body, invoke, jpeg_crops, mlflow_server  # noqa: E402


@pytest.fixture(scope="module")
def jpeg_table(sample_photos):
    images, labels = jpeg_crops(sample_photos)
    return pd.DataFrame({"image": images}), labels


def log(model, tmp_path, X, **kwargs):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    # Artifacts under tmp_path too: MLflow's default artifact root is ./mlruns in the working directory.
    mlflow.create_experiment("serving", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("serving")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation chatter
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model, name="model", input_example=X.iloc[:2], skops_trusted_types=sklearn_tl.skops_trusted_types(),
                **kwargs,
            )
    return info


def served_answers(info, tmp_path, images):
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    with mlflow_server(info.model_uri, env=env, log_path=tmp_path / "serve.log") as url:
        return invoke(url, invocation_body(images))


def test_logged_in_the_default_format(jpeg_table, tmp_path):
    X, y = jpeg_table
    pipe = make_pipeline(PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32), LogisticRegression())
    info = log(pipe.fit(X, y), tmp_path, X)
    flavor = mlflow.models.Model.load(info.model_uri).flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert info.signature.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]


def test_served_pipeline_answers_as_the_local_one(jpeg_table, tmp_path):
    X, y = jpeg_table
    pipe = make_pipeline(PretrainedCNNFeaturizer("mobilenet_v2", weights=REAL_WEIGHTS, image_size=64),
                         LogisticRegression(max_iter=500)).fit(X, y)
    info = log(pipe, tmp_path, X)
    answers = served_answers(info, tmp_path, list(X["image"]))
    np.testing.assert_array_equal(np.asarray(answers), pipe.predict(X))
    assert len(set(answers)) == 2  # both photos are told apart: the images really went through the network


def test_served_finetuner_probabilities_match(jpeg_table, tmp_path):
    X, y = jpeg_table
    clf = FineTuneClassifier("resnet18", weights=None, image_size=32, max_epochs=1, batch_size=8, random_state=0)
    clf.fit(X, y)
    info = log(clf, tmp_path, X, pyfunc_predict_fn="predict_proba")
    answers = served_answers(info, tmp_path, list(X["image"]))
    np.testing.assert_allclose(np.asarray(answers, dtype=np.float64), clf.predict_proba(X), rtol=1e-6, atol=1e-7)
