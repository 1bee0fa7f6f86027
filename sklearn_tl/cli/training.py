"""Training and applying an image classifier: what ``sklearn-tl train`` and ``predict`` do.

Three kinds of model (``mode``): ``"features"`` (frozen CNN embeddings →
StandardScaler → LogisticRegression), ``"finetune"`` (:class:`FineTuneClassifier`)
and ``"hybrid"`` (tune, then the logistic regression on the tuned embeddings).
:func:`train_classifier` gives stratified k-fold out-of-fold predictions, then
fits on all images. With several labels per image (a 0/1 matrix ``y``, e.g.
from :func:`load_labelled_csv`) every mode is a multilabel
``FineTuneClassifier`` whose ``classes_`` name the label columns, the logistic
regressions are one per label, and the folds are plain k-fold. Plain functions with explicit arguments, usable without the
command line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._defaults import FINETUNE_MAX_EPOCHS

__all__ = [
    "MODES",
    "LabelledImages",
    "TrainingResult",
    "cross_validated_predictions",
    "load_labelled_csv",
    "load_labelled_folder",
    "logistic_head",
    "n_folds",
    "predict_with_confidence",
    "readable_images",
    "set_inference_options",
    "train_classifier",
]

MODES = ("features", "finetune", "hybrid")


@dataclass
class LabelledImages:
    """Image paths with their class names, from a ``root/<class>/<image>`` folder."""

    paths: list
    y: np.ndarray  # class name of each image (object array), or a 0/1 (n, n_labels) matrix for several labels
    class_names: list
    counts: np.ndarray  # images per class (per label), in class_names order

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2


@dataclass
class TrainingResult:
    """A model fitted on all images, and its out-of-fold predictions (None without cross-validation)."""

    model: object
    n_splits: int
    predicted: np.ndarray | None = None
    confidence: np.ndarray | None = None
    fold_scores: np.ndarray | None = None


def load_labelled_folder(folder) -> LabelledImages:
    """Paths and class names of a class-folder tree; at least two classes (see :func:`load_image_folder`)."""
    from ..data.folders import load_image_folder

    data = load_image_folder(folder)
    names = list(data.target_names)
    if len(names) < 2:
        raise ValueError(f"{str(folder)!r} has one class folder ({names[0]!r}); training needs at least two.")
    return LabelledImages(
        paths=[str(p) for p in data.filenames],
        y=np.asarray(names, dtype=object)[data.target],
        class_names=names,
        counts=np.bincount(data.target, minlength=len(names)),
    )


def load_labelled_csv(csv_file) -> LabelledImages:
    """Paths and their labels from a CSV file with a ``path`` and a ``labels`` column.

    ``labels`` lists an image's labels separated by ``;`` (none is allowed);
    relative paths are relative to the CSV file's folder. ``y`` is the 0/1
    matrix of the labels, columns in sorted label order.
    """
    import csv
    from pathlib import Path

    csv_file = Path(csv_file)
    try:
        with open(csv_file, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"Cannot read the labels file {str(csv_file)!r}: {exc}") from None
    if not {"path", "labels"} <= set(fields):
        raise ValueError(f"{str(csv_file)!r} needs a header with the columns 'path' and 'labels' (';' between labels).")
    paths, label_sets = [], []
    for number, row in enumerate(rows, 2):
        path = Path((row["path"] or "").strip()).expanduser()
        if not path.is_absolute():
            path = csv_file.parent / path
        if not path.is_file():
            raise FileNotFoundError(f"{str(csv_file)!r} line {number}: image {str(row['path'])[:200]!r} does not exist.")
        paths.append(str(path))
        label_sets.append({label.strip() for label in (row["labels"] or "").split(";") if label.strip()})
    names = sorted(set().union(*label_sets))
    if len(names) < 2:
        raise ValueError(f"{str(csv_file)!r} names {len(names)} label(s); training needs at least two.")
    y = np.array([[name in labels for name in names] for labels in label_sets], dtype=np.int64)
    return LabelledImages(paths=paths, y=y, class_names=names, counts=y.sum(axis=0))


def readable_images(data: LabelledImages) -> tuple[LabelledImages, list[str]]:
    """``data`` without the images that cannot be decoded, and the paths left out.

    Each file is decoded once, by the decoder training uses, at reduced
    scale (a JPEG's DCT scaling still reads every byte, so a truncated file
    fails as it would in training, at a fraction of the cost). The files left
    out are named in one :class:`ImageReadWarning`; a class left with no
    readable image is an error.
    """
    import warnings

    from ..data.decode import read_image_file
    from ..exceptions import ImageReadError, ImageReadWarning
    from ..runtime.forward import first_messages

    keep, errors = np.ones(len(data.paths), dtype=bool), []
    for i, path in enumerate(data.paths):
        try:
            read_image_file(path, min_side=16)
        except ImageReadError as exc:
            keep[i] = False
            errors.append(str(exc))
    if not errors:
        return data, []
    warnings.warn(
        f"{len(errors)} of {len(data.paths)} image(s) could not be read and are left out: {first_messages(errors)}",
        ImageReadWarning,
        stacklevel=2,
    )
    y = data.y[keep]
    counts = y.sum(axis=0) if data.multilabel else np.array([np.sum(y == name) for name in data.class_names])
    if not counts.all():
        empty = data.class_names[int(np.argmin(counts))]
        raise ValueError(f"Class {empty!r} has no readable image (the warning above names the files).")
    paths = np.asarray(data.paths, dtype=object)
    return LabelledImages(list(paths[keep]), y, data.class_names, counts), list(paths[~keep])


def n_folds(data: LabelledImages, cv: int) -> int:
    """``cv`` capped by the smallest class (by the number of images for several labels); 0 stays 0."""
    if data.multilabel:
        if cv and min(cv, len(data.paths)) < 2:
            raise ValueError("Cross-validation needs at least 2 images (or pass cv=0 to skip it).")
        return min(cv, len(data.paths))
    smallest = int(data.counts.min())
    folds = min(cv, smallest)
    if cv and folds < 2:
        raise ValueError(
            f"Class {data.class_names[int(data.counts.argmin())]!r} has {smallest} image; cross-validation "
            "needs at least 2 per class (add images, or pass cv=0 to skip it)."
        )
    return folds


def logistic_head(C: float = 1.0):
    """The classifier on embeddings: StandardScaler → LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=C, max_iter=2000))])


def cross_validated_predictions(model, X, y, n_splits: int, random_state=0):
    """Out-of-fold predictions and confidences (None without ``predict_proba``), and each fold's accuracy.

    For a 0/1 label matrix ``y``: the predicted 0/1 matrix, no confidence, and
    each fold's samples-F1.
    """
    from sklearn.metrics import f1_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    y = np.asarray(y)
    if y.ndim == 2:
        splits = list(KFold(n_splits, shuffle=True, random_state=random_state).split(X, y))
        predicted = cross_val_predict(model, X, y, cv=splits)
        scores = np.array([f1_score(y[test], predicted[test], average="samples", zero_division=0.0)
                           for _, test in splits])
        return predicted, None, scores
    splits = list(StratifiedKFold(n_splits, shuffle=True, random_state=random_state).split(X, y))
    try:
        proba = cross_val_predict(model, X, y, cv=splits, method="predict_proba")
        classes = np.unique(y)
        predicted, confidence = classes[proba.argmax(axis=1)], proba.max(axis=1)
    except AttributeError:  # e.g. a final estimator without predict_proba
        predicted, confidence = cross_val_predict(model, X, y, cv=splits), None
    scores = np.array([np.mean(predicted[test] == y[test]) for _, test in splits])
    return predicted, confidence, scores


def train_classifier(
    paths,
    y,
    *,
    mode: str = "features",
    backbone="mobilenet_v2",
    weights="DEFAULT",
    image_size=None,
    batch_size="auto",
    device="auto",
    progress=True,
    cache=None,
    C: float = 1.0,
    max_epochs: int = FINETUNE_MAX_EPOCHS,
    lr: float = 1e-3,
    freeze=None,
    n_splits: int = 5,
    random_state: int = 0,
    label_names=None,
) -> TrainingResult:
    """Cross-validate (``n_splits`` ≥ 2; 0 skips it) and fit a ``mode`` classifier on all images.

    In ``"features"`` mode each image is embedded once: the frozen featurizer
    learns nothing from the images, so cross-validating the classifier on the
    embeddings gives the same result as cross-validating the whole Pipeline.
    The returned model is then ``Pipeline([("features", featurizer), ("scale", ...), ("clf", ...)])``.
    ``progress`` applies to the featurizer; the fine-tuner prints its own epochs.
    A 0/1 matrix ``y`` (several labels per image, columns named by
    ``label_names``) trains a multilabel :class:`FineTuneClassifier` in every
    mode: ``"features"`` is ``max_epochs=0`` with one logistic regression per
    label on the frozen embeddings as its ``final_estimator``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    multilabel = np.ndim(y) == 2
    y = np.asarray(y) if multilabel else np.asarray(y, dtype=object)
    if multilabel:
        from sklearn.multiclass import OneVsRestClassifier

        from ..estimators.classifier import FineTuneClassifier

        frozen = dict(max_epochs=0, head_init="random") if mode == "features" else {}
        model = FineTuneClassifier(
            backbone, weights=weights, image_size=image_size, batch_size=batch_size, device=device,
            max_epochs=max_epochs, lr=lr, freeze=freeze, classes=label_names, random_state=random_state,
            final_estimator=OneVsRestClassifier(logistic_head(C)) if mode != "finetune" else None,
        ).set_params(**frozen)
        X = paths
    elif mode == "features":
        from ..estimators.featurizer import PretrainedCNNFeaturizer

        featurizer = PretrainedCNNFeaturizer(
            backbone, weights=weights, image_size=image_size, batch_size=batch_size, device=device,
            progress=progress, cache=cache, random_state=random_state,
        ).fit(paths)
        X = featurizer.transform(paths)
        featurizer.set_params(progress="auto")  # the saved model shows progress only where it helps
        model = logistic_head(C)
    else:
        from ..estimators.classifier import FineTuneClassifier

        model = FineTuneClassifier(
            backbone, weights=weights, image_size=image_size, batch_size=batch_size, device=device,
            max_epochs=max_epochs, lr=lr, freeze=freeze,
            final_estimator=logistic_head(C) if mode == "hybrid" else None, random_state=random_state,
        )
        X = paths
    result = TrainingResult(model=model, n_splits=n_splits)
    if n_splits >= 2:
        result.predicted, result.confidence, result.fold_scores = cross_validated_predictions(
            model, X, y, n_splits, random_state
        )
    model.fit(X, y)
    if mode == "features" and not multilabel:
        from sklearn.pipeline import Pipeline

        result.model = Pipeline([("features", featurizer), *model.steps])
    return result


def set_inference_options(model, *, device=None, batch_size=None, progress=None):
    """Set ``device``, ``batch_size`` and ``progress`` (where given) on every sklearn_tl step of ``model``."""
    from ..deploy.persistence import _sklearn_tl_steps

    overrides = {"device": device, "batch_size": batch_size, "progress": progress}
    for _, step in _sklearn_tl_steps(model):
        params = step.get_params()
        step.set_params(**{k: v for k, v in overrides.items() if v is not None and k in params})


def predict_with_confidence(model, X):
    """``(labels, confidence, proba, classes)``: confidence and proba are None without ``predict_proba``.

    A multilabel model's label is the ``;``-separated names of the labels it
    predicts (empty for none), with no confidence; ``proba`` has one column per label.
    """
    classes = np.asarray(getattr(model, "classes_", []), dtype=object)
    if getattr(model, "multilabel_", False):
        present = np.asarray(model.predict(X))
        labels = np.array([";".join(str(c) for c in classes[row.astype(bool)]) for row in present], dtype=object)
        return labels, None, model.predict_proba(X), classes
    proba = None
    if hasattr(model, "predict_proba"):
        try:
            proba = model.predict_proba(X)
        except AttributeError:
            proba = None
    if proba is not None and len(classes) == proba.shape[1]:
        return classes[proba.argmax(axis=1)], proba.max(axis=1), proba, classes
    return np.asarray(model.predict(X), dtype=object), None, proba, classes
