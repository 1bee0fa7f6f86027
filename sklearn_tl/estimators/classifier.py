"""FineTuneClassifier: tune a pretrained CNN on your labels, one per image or several (skorch).

Everything but the labels is :class:`~sklearn_tl.estimators.finetune_base.FineTuneBase`:
this module says how labels are checked and encoded (a class per image, or a
0/1 multilabel indicator matrix), the head's softmax or per-label sigmoid, its
LP-FT logistic fit, class weights, and what ``predict`` returns.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d
from skorch import NeuralNetClassifier
from skorch.callbacks import EpochScoring
from torch import nn

from ..finetune.callbacks import valid_accuracy
from ..finetune.head_fit import fit_head
from ..finetune.labels import _has_nan_label
from .finetune_base import FineTuneBase
from .finetune_docs import finetune_docs

__all__ = ["FineTuneClassifier"]


@finetune_docs
class FineTuneClassifier(FineTuneBase, NeuralNetClassifier):
    """Fine-tune a pretrained CNN on your labels, inside scikit-learn.

    The original ImageNet classifier is removed; a new ``head`` is trained on
    the pooled embedding. The default recipe is LP-FT (Kumar et al., ICLR
    2022): the head is first fitted to convergence on the frozen embeddings
    (one forward pass of the training images and a multinomial logistic
    regression fit, no backward pass through the backbone), then the whole
    network trains from that head, the pretrained layers at a tenth of the
    learning rate, with a warm-up and cosine decay, and random crops that keep
    most of each image. After ``fit``, ``transform`` gives the tuned
    embeddings (of ``layer`` if set) and ``final_estimator`` (e.g. ``SVC()``)
    can make the predictions from them (hybrid mode).

    ``y`` is one label per image, or several: a 0/1 indicator matrix of shape
    ``(n_samples, n_labels)`` (scikit-learn's ``multilabel-indicator``, as
    ``MultiLabelBinarizer`` gives). A multilabel fit trains one sigmoid per
    label with ``BCEWithLogitsLoss``, fits the head as one-vs-rest logistic
    regressions, and ``predict`` returns the 0/1 matrix.

    This is a skorch ``NeuralNetClassifier``: ``history``, ``partial_fit``,
    ``callbacks=[...]``, and the prefixes ``optimizer__*``, ``criterion__*``,
    ``iterator_train__*``, ``iterator_valid__*`` and ``callbacks__<name>__*``
    work as in skorch.

    Parameters
    ----------
    {backbone_params}
    layer : str, list of str or None, default=None
        What ``transform`` (and ``final_estimator``) uses, as the
        featurizer's ``layer``: the pooled output of this layer of the tuned
        network, or of each layer of a list, concatenated (feature names
        ``<layer>_<pooling>_<i>``). The head always trains on the last
        feature map. None: that last, pooled embedding.
    {preprocessing_params}
    {training_params}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss (and in the head fit), as in
        scikit-learn: ``{label: weight}`` or ``"balanced"``
        (``n_samples / (n_classes * np.bincount(y))``); multiplied with
        ``fit``'s ``sample_weight``. The training loss is the mean of the
        weighted per-image losses. With a multilabel ``y`` it weights each
        label's positives (``BCEWithLogitsLoss``'s ``pos_weight``):
        ``"balanced"`` is ``n_negatives / n_positives`` per label, a dict
        maps label columns to that weight (1 for columns it leaves out).
    threshold : float in (0, 1), default=0.5
        With a multilabel ``y``: ``predict`` marks a label present where its
        probability is at least this.
    {runtime_params}
    criterion : torch criterion class, default=torch.nn.CrossEntropyLoss
        With a multilabel ``y``, the default becomes ``torch.nn.BCEWithLogitsLoss``.
    {optimizer_params}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in the order of the network's outputs; with a multilabel
        ``y``, the label columns ``0 .. n_labels - 1`` (as ``MLPClassifier``),
        or the names given as ``classes`` (one per column).
    multilabel_ : bool
        Whether ``y`` was a multilabel indicator matrix.
    pos_weight_ : ndarray of shape (n_labels,) or None
        With a multilabel ``y`` and ``class_weight``: each label's positive weight.
    {finetune_attributes}
    See Also
    --------
    FineTuneRegressor : the same network and recipe for continuous targets.
    PretrainedCNNFeaturizer : frozen embeddings for any sklearn estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_tl import FineTuneClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    >>> y = np.array(["cat", "dog"] * 4)
    >>> clf = FineTuneClassifier("resnet18", weights=None, image_size=32, max_epochs=2,
    ...                          freeze=2, head=(16,), random_state=0)
    >>> clf.fit(X, y).predict(X[:3]).shape
    (3,)
    >>> clf.transform(X).shape
    (8, 512)
    >>> Y = np.array([[1, 0, 1], [0, 1, 1]] * 4)  # several labels per image
    >>> clf.fit(X, Y).predict(X[:3]).shape, clf.predict_proba(X[:3]).shape
    ((3, 3), (3, 3))
    """

    _finetune_constraints: dict = {
        **FineTuneBase._finetune_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "threshold": [Interval(Real, 0, 1, closed="neither")],
    }
    _DEFAULTS_OF_OLDER_FILES = {**FineTuneBase._DEFAULTS_OF_OLDER_FILES, "class_weight": None, "threshold": 0.5}

    __module__ = "sklearn_tl"  # pickles and skops files name the public class, wherever it is defined

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        class_weight=None,
        threshold=0.5,
        criterion=nn.CrossEntropyLoss,
        **kwargs,
    ):
        self.class_weight = class_weight
        self.threshold = threshold
        super().__init__(backbone, criterion=criterion, **kwargs)

    def __setstate__(self, state):
        if state.get("initialized_"):
            state.setdefault("multilabel_", False)
            state.setdefault("pos_weight_", None)
        super().__setstate__(state)

    @property
    def _stratified_split(self):
        return not getattr(self, "multilabel_", False)

    def _check_partial_fit(self) -> None:
        if self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' is not supported by partial_fit: each call's batch would get "
                "its own weights. Compute them once (sklearn.utils.class_weight.compute_class_weight) and "
                "pass class_weight as a dict."
            )

    def _score_callbacks(self) -> list:
        return [("valid_acc", EpochScoring(valid_accuracy, name="valid_acc", lower_is_better=False))]

    # -- labels ----------------------------------------------------------------

    def _check_targets(self, y, reset: bool, classes=None) -> np.ndarray:
        """``y`` as a 1-D array of classification labels or a 0/1 indicator matrix, checked before ``X``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if np.ndim(y) == 2 and np.shape(y)[1] > 1:
            return self._check_indicator(y, reset, classes)
        if not reset and getattr(self, "multilabel_", False):
            raise ValueError(f"This model was fitted on a multilabel y of {len(self.classes_)} columns; got a 1-D y.")
        y = column_or_1d(y, warn=True)
        if y.size == 0:
            raise ValueError("y is empty: at least one labelled image is required.")
        if _has_nan_label(y):
            raise ValueError("y contains NaN or None labels; every image needs a label.")
        check_classification_targets(y)
        if reset and self.classes is None and classes is None and len(np.unique(y)) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes to learn from; y has only one class: {y[0]!r}."
            )
        return y

    def _check_indicator(self, y, reset: bool, classes=None) -> np.ndarray:
        """A multilabel ``y``: 0/1 (or bool) values, one column per label."""
        y = np.asarray(y)
        if y.shape[0] == 0:
            raise ValueError("y is empty: at least one labelled image is required.")
        if _has_nan_label(y):
            raise ValueError("y contains NaN or None labels; every image needs a label.")
        if type_of_target(y) != "multilabel-indicator":
            raise ValueError(
                f"A 2-D y must be a 0/1 multilabel indicator matrix (one column per label); got "
                f"type_of_target(y) = {type_of_target(y)!r}. For several label columns of other values, "
                f"wrap a featurizer pipeline in MultiOutputClassifier."
            )
        if classes is not None:
            raise ValueError("partial_fit's classes does not apply to a multilabel y: its columns are the labels.")
        if self.classes is not None and len(self.classes) != y.shape[1]:
            raise ValueError(
                f"With a multilabel y, classes names its {y.shape[1]} columns; got {len(self.classes)} names."
            )
        if not reset and (not getattr(self, "multilabel_", False) or y.shape[1] != len(self.classes_)):
            raise ValueError(f"y has {y.shape[1]} label columns; this model was fitted on {len(self.classes_)}.")
        return y

    def _encode_targets(self, y: np.ndarray, n_samples: int, reset: bool, classes=None) -> np.ndarray:
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} images but y has {len(y)} labels; they must match.")
        if y.ndim == 2:
            if reset:
                self.multilabel_ = True
                self.classes_inferred_ = np.arange(y.shape[1])
                self.pos_weight_ = self._pos_weight(y)
            return y.astype(np.float32)
        if reset:
            self.multilabel_ = False
            self.pos_weight_ = None
            given = self.classes if self.classes is not None else classes
            known = np.unique(y) if given is None else np.asarray(given)
            if len(known) < 2:
                raise ValueError(
                    f"FineTuneClassifier needs at least 2 classes to learn from; y has only one class: {known[0]!r}."
                )
            self.classes_inferred_ = np.unique(known) if self.classes is None else known
        known = self.classes_
        order = np.argsort(known, kind="stable")
        positions = np.clip(np.searchsorted(known[order], y), 0, len(known) - 1)
        encoded = order[positions]
        unseen = known[encoded] != y
        if unseen.any():
            raise ValueError(
                f"y contains labels not among classes_ {known.tolist()!r}: {sorted(set(y[unseen].tolist()))[:10]!r}."
            )
        return encoded.astype(np.int64)

    def _pos_weight(self, y: np.ndarray):
        """``class_weight`` of a multilabel ``y`` as each label's positive weight, or None."""
        if self.class_weight is None:
            return None
        if self.class_weight == "balanced":
            positives = y.sum(axis=0).astype(np.float64)
            negatives = len(y) - positives
            return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)
        unknown = [k for k in self.class_weight if not (isinstance(k, (int, np.integer)) and 0 <= k < y.shape[1])]
        if unknown:
            raise ValueError(
                f"With a multilabel y, class_weight maps label columns 0..{y.shape[1] - 1} to positive "
                f"weights; got keys {unknown[:10]!r}."
            )
        weights = np.ones(y.shape[1], dtype=np.float32)
        for column, weight in self.class_weight.items():
            weights[column] = weight
        return weights

    def _target_sample_weight(self, y: np.ndarray):
        if self.class_weight is None or y.ndim == 2:
            return None  # a multilabel y is weighted per label, by pos_weight
        return compute_sample_weight(self.class_weight, y)

    def _n_outputs(self) -> int:
        classes = getattr(self, "classes_inferred_", None) if self.classes is None else self.classes
        if classes is None or len(classes) < 2:
            raise ValueError("FineTuneClassifier needs the classes before building its head: call fit(X, y).")
        return len(classes)

    def initialize_criterion(self):
        kwargs = self.get_params_for("criterion")
        criterion = self.criterion
        if getattr(self, "multilabel_", False):
            if criterion is nn.CrossEntropyLoss:
                criterion = nn.BCEWithLogitsLoss  # the default's multilabel counterpart
            if self.pos_weight_ is not None and "pos_weight" not in kwargs:
                kwargs["pos_weight"] = torch.as_tensor(self.pos_weight_)
        self.criterion_ = self.initialized_instance(criterion, kwargs)
        return self

    def _fit_head_on(self, head, embeddings, targets, weights) -> None:
        if getattr(self, "multilabel_", False):
            pos_weight = None if self.pos_weight_ is None else torch.as_tensor(self.pos_weight_)
            fit_head(head, embeddings, targets, loss="binary_cross_entropy", pos_weight=pos_weight,
                     sample_weight=weights)
        else:
            fit_head(head, embeddings, targets, sample_weight=weights)

    # -- inference -------------------------------------------------------------

    def _output(self, outputs: torch.Tensor) -> np.ndarray:
        if getattr(self, "multilabel_", False) and self.predict_nonlinearity == "auto":
            return torch.sigmoid(outputs).numpy()
        return super()._output(outputs)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``; with a multilabel ``y``, each label's.

        Parameters
        ----------
        X : images

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes) or (n_samples, n_labels)
            Rows sum to 1 for one label per image; multilabel columns are
            independent probabilities.
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict_proba(self.transform(X))
        return self._network_output(X)

    def predict(self, X):
        """Predicted labels (of the type of ``y``), or the 0/1 matrix of a multilabel fit.

        Parameters
        ----------
        X : images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_labels)
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict(self.transform(X))
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= self.threshold).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
