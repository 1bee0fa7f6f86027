"""FineTuneRegressor: tune a pretrained CNN on continuous targets (skorch).

Everything but the targets is :class:`~sklearn_tl.estimators.finetune_base.FineTuneBase`:
this module standardises the targets (the network learns zero-mean,
unit-variance outputs, whatever the scale of ``y``), fits the head as a ridge
regression on the frozen embeddings, and restores the scale in ``predict``.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_array, check_is_fitted
from skorch import NeuralNetRegressor
from torch import nn

from .finetune_base import FineTuneBase
from .finetune_docs import finetune_docs
from ..finetune.head_fit import fit_head

__all__ = ["FineTuneRegressor"]


@finetune_docs
class FineTuneRegressor(FineTuneBase, NeuralNetRegressor):
    """Fine-tune a pretrained CNN on continuous targets, inside scikit-learn.

    The regressor of :class:`FineTuneClassifier`'s network and recipe: the
    ImageNet classifier is replaced by a new ``head`` with one output per
    target, first fitted as a ridge regression on the frozen embeddings
    (LP-FT), then the whole network trains with the pretrained layers at a
    tenth of the learning rate. ``y`` is standardised inside (each target to
    mean 0 and standard deviation 1, so the loss, the head fit and the
    learning rate see the same scale whatever the units), and ``predict``
    restores its scale. ``score`` is R² (``RegressorMixin``).

    This is a skorch ``NeuralNetRegressor``: ``history``, ``partial_fit``,
    ``callbacks=[...]`` and the prefixed parameters work as in skorch.

    Parameters
    ----------
    {backbone_params}
    layer : str, list of str or None, default=None
        What ``transform`` (and ``final_estimator``) uses, as the
        featurizer's ``layer``: the pooled output of this layer of the tuned
        network, or of each layer of a list, concatenated. The head always
        trains on the last feature map. None: that last, pooled embedding.
    {preprocessing_params}
    {training_params}
    alpha : float, default=1.0
        The ridge penalty of the LP-FT head fit (``Ridge(alpha)`` on the
        frozen embeddings and the standardised targets).
    {runtime_params}
    criterion : torch criterion class, default=torch.nn.MSELoss
        Any criterion of ``(N, n_outputs)`` predictions and standardised
        targets (e.g. ``torch.nn.HuberLoss``, ``torch.nn.L1Loss``).
    {optimizer_params}
    Attributes
    ----------
    n_outputs_ : int
        The number of targets (columns of a 2-D ``y``; 1 for a 1-D ``y``).
    target_mean_ : ndarray of shape (n_outputs_,)
        The mean of each target in the first fit's ``y``.
    target_scale_ : ndarray of shape (n_outputs_,)
        Its standard deviation (1 where a target is constant): the network
        predicts ``(y - target_mean_) / target_scale_``.
    {finetune_attributes}
    See Also
    --------
    FineTuneClassifier : the same network and recipe for labels.
    PretrainedCNNFeaturizer : frozen embeddings for any sklearn regressor.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_tl import FineTuneRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    >>> y = X.mean(axis=(1, 2, 3)) / 255  # brightness
    >>> reg = FineTuneRegressor("resnet18", weights=None, image_size=32, max_epochs=2,
    ...                         head=(16,), random_state=0)
    >>> reg.fit(X, y).predict(X[:3]).shape
    (3,)
    """

    _finetune_constraints: dict = {
        **FineTuneBase._finetune_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
    }

    __module__ = "sklearn_tl"  # pickles and skops files name the public class, wherever it is defined

    def __init__(self, backbone="mobilenet_v2", *, alpha=1.0, criterion=nn.MSELoss, **kwargs):
        self.alpha = alpha
        super().__init__(backbone, criterion=criterion, **kwargs)

    # -- targets ---------------------------------------------------------------

    def _check_targets(self, y, reset: bool, classes=None) -> np.ndarray:
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        if classes is not None:
            raise ValueError("classes does not apply to a regressor.")
        if np.ndim(y) not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D (one column per target); got shape {np.shape(y)}.")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if y.shape[0] == 0:
            raise ValueError("y is empty: at least one image with a target is required.")
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if not reset and n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} targets; this model was fitted on {self.n_outputs_}.")
        return y

    def _encode_targets(self, y: np.ndarray, n_samples: int, reset: bool, classes=None) -> np.ndarray:
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} images but y has {len(y)} targets; they must match.")
        columns = y.reshape(len(y), -1)
        if reset:
            self.n_outputs_ = columns.shape[1]
            self.target_mean_ = columns.mean(axis=0)
            scale = columns.std(axis=0)
            self.target_scale_ = np.where(scale > 0, scale, 1.0)
        return ((columns - self.target_mean_) / self.target_scale_).astype(np.float32)

    def _n_outputs(self) -> int:
        if "n_outputs_" not in vars(self):
            raise ValueError("FineTuneRegressor needs y before building its head: call fit(X, y).")
        return self.n_outputs_

    def _fit_head_on(self, head, embeddings, targets, weights) -> None:
        fit_head(head, embeddings, targets, loss="squared_error", alpha=self.alpha, sample_weight=weights)

    # -- inference -------------------------------------------------------------

    def _output(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.numpy()  # standardised predictions: TTA averages them, predict restores the scale

    def predict(self, X):
        """Predicted targets, in the units of ``y``.

        Parameters
        ----------
        X : images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs_)
            1-D for a single target (as ``MLPRegressor``).
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict(self.transform(X))
        standardised = self._network_output(X).astype(np.float64)
        predicted = standardised * self.target_scale_ + self.target_mean_
        return predicted.ravel() if self.n_outputs_ == 1 else predicted

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
