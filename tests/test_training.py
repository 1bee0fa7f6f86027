"""Training logic behind ``sklearn-tl train`` / ``predict``, in-process on a real photo folder."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.cli.training import (
    cross_validated_predictions,
    load_labelled_folder,
    logistic_head,
    n_folds,
    predict_with_confidence,
    set_inference_options,
    train_classifier,
)

from .conftest import write_photo_folder

CLASSES = ("china", "flower")
TINY = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_photos):
    """``root/<class>/<image>.png``: 6 real 64x64 crops of each sample photo."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"), sample_photos, CLASSES, 6, 64, ".png")


def test_labelled_folder_and_folds(photo_folder, tmp_path):
    data = load_labelled_folder(photo_folder)
    assert data.class_names == list(CLASSES) and data.counts.tolist() == [6, 6]
    assert data.y.tolist() == ["china"] * 6 + ["flower"] * 6
    assert [p.split("/")[-2] for p in data.paths] == data.y.tolist()
    assert n_folds(data, 5) == 5 and n_folds(data, 10) == 6 and n_folds(data, 0) == 0
    data.counts = np.array([1, 6])
    with pytest.raises(ValueError, match="Class 'china' has 1 image.*cv=0"):
        n_folds(data, 5)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes((photo_folder / "china" / "china_0.png").read_bytes())
    with pytest.raises(ValueError, match="has one class folder \\('only'\\); training needs at least two"):
        load_labelled_folder(tmp_path)


def test_cross_validated_predictions_with_and_without_proba():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (20, 3)), rng.normal(3, 1, (20, 3))]
    y = np.array(["a"] * 20 + ["b"] * 20, dtype=object)
    predicted, confidence, scores = cross_validated_predictions(LogisticRegression(), X, y, 4, random_state=0)
    splits = StratifiedKFold(4, shuffle=True, random_state=0).split(X, y)
    expected = cross_val_predict(LogisticRegression(), X, y, cv=list(splits))
    assert predicted.tolist() == expected.tolist()
    assert confidence.shape == (40,) and (confidence >= 0.5).all()
    assert len(scores) == 4 and scores.mean() == pytest.approx(np.mean(predicted == y))

    predicted, confidence, scores = cross_validated_predictions(LinearSVC(), X, y, 4)
    assert confidence is None and predicted.shape == (40,) and len(scores) == 4


def test_features_mode_equals_cross_validating_the_whole_pipeline(photo_folder):
    data = load_labelled_folder(photo_folder)
    result = train_classifier(data.paths, data.y, mode="features", n_splits=3, progress=False,
                              **{k: v for k, v in TINY.items()})
    assert list(result.model.named_steps) == ["features", "scale", "clf"]
    assert result.model.named_steps["features"].progress == "auto"
    pipeline = Pipeline([("features", PretrainedCNNFeaturizer(progress=False, **TINY)), *logistic_head().steps])
    splits = list(StratifiedKFold(3, shuffle=True, random_state=0).split(data.paths, data.y))
    proba = cross_val_predict(pipeline, data.paths, data.y, cv=splits, method="predict_proba")
    assert result.predicted.tolist() == np.array(CLASSES, dtype=object)[proba.argmax(axis=1)].tolist()
    np.testing.assert_allclose(result.confidence, proba.max(axis=1), rtol=1e-4)
    assert result.n_splits == 3 and len(result.fold_scores) == 3
    assert set(result.model.predict(data.paths[:3])) <= set(CLASSES)


def test_finetune_mode_without_cross_validation(photo_folder):
    data = load_labelled_folder(photo_folder)
    result = train_classifier(data.paths, data.y, mode="finetune", n_splits=0, max_epochs=1, **TINY)
    assert result.predicted is None and result.fold_scores is None and result.confidence is None
    assert type(result.model).__name__ == "FineTuneClassifier" and result.model.max_epochs == 1
    assert list(result.model.classes_) == list(CLASSES)
    with pytest.raises(ValueError, match="mode must be one of features, finetune, hybrid"):
        train_classifier(data.paths, data.y, mode="banana")


def test_inference_options_and_predictions(photo_folder):
    data = load_labelled_folder(photo_folder)
    model = train_classifier(data.paths, data.y, n_splits=0, progress=False, **TINY).model
    set_inference_options(model, device="cpu", batch_size=4, progress=False)
    features = model.named_steps["features"]
    assert (features.device, features.batch_size, features.progress) == ("cpu", 4, False)
    set_inference_options(model, device=None, batch_size=None, progress="auto")  # None leaves a setting alone
    assert (features.device, features.batch_size, features.progress) == ("cpu", 4, "auto")

    labels, confidence, proba, classes = predict_with_confidence(model, data.paths)
    assert classes.tolist() == list(CLASSES)
    assert labels.tolist() == model.predict(data.paths).tolist()
    np.testing.assert_allclose(confidence, proba.max(axis=1))
    no_proba = Pipeline([("features", features), ("clf", LinearSVC())]).fit(data.paths, data.y)
    labels, confidence, proba, _ = predict_with_confidence(no_proba, data.paths)
    assert confidence is None and proba is None and labels.tolist() == no_proba.predict(data.paths).tolist()
