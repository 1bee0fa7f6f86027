"""What the two image estimators share: parameters, their checks and docs, input adaptation, fitted attributes.

:class:`ImageEstimatorMixin` is mixed into
:class:`~sklearn_tl.PretrainedCNNFeaturizer` (a plain sklearn estimator) and
:class:`~sklearn_tl.FineTuneClassifier` (a skorch net, which validates its
parameters itself): each merges :data:`IMAGE_PARAMETER_CONSTRAINTS` into its
own constraints and calls :meth:`~ImageEstimatorMixin._check_image_params`
where it validates.
"""

from __future__ import annotations

import math
import os
from enum import Enum
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import validate_data

from ..runtime.device import PRECISIONS
from ..data.inputs import as_image_source
from ..data.decode import short_repr
from ..models.embedder import POOLINGS

__all__ = ["IMAGE_PARAMETER_CONSTRAINTS", "INTERPOLATIONS", "ImageEstimatorMixin", "shared_docs"]

# torchvision InterpolationMode values that resize tensors (the others are PIL-only).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")

IMAGE_PARAMETER_CONSTRAINTS: dict = {
    "backbone": [str, torch.nn.Module],
    "weights": [str, os.PathLike, Enum, None],
    "pooling": [StrOptions(set(POOLINGS))],
    "image_size": [Interval(Integral, 1, None, closed="left"), None],
    "image_shape": [tuple, list, None],
    "mean": [tuple, list, np.ndarray, None],
    "std": [tuple, list, np.ndarray, None],
    "interpolation": [StrOptions(set(INTERPOLATIONS)), None],
    "crop_pct": [Interval(Real, 0, 1, closed="right"), None],
    "value_range": [tuple, list, StrOptions({"auto"}), None],
    "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    "device": [str, torch.device],
    "precision": [StrOptions({"auto", *PRECISIONS})],
    "num_workers": [Interval(Integral, 0, None, closed="left")],
    "random_state": ["random_state"],
}

_DOCS = {
    "backbone_params": """\
    backbone : str or torch.nn.Module, default="mobilenet_v2"
        A name from :func:`list_backbones`, any torchvision classification model
        name, any timm model name (``timm`` extra), or a module that maps
        ``(N, 3, H, W)`` to a feature map ``(N, C, h, w)`` or embeddings ``(N, D)``.
        A module is copied, never modified; its preprocessing is its timm
        ``pretrained_cfg`` if it has one, else ImageNet's (state it with
        ``mean``, ``std``, ...).
    weights : str, path, torchvision WeightsEnum or None, default="DEFAULT"
        ``"DEFAULT"``, a torchvision weights name (``"IMAGENET1K_V1"``), a path to
        a state-dict file or to a directory holding torchvision's file, or None
        for random initialisation. Looked up offline first (see README).
""",
    "preprocessing_params": """\
    pooling : {"avg", "max", "gem"}, default="avg"
        Global pooling of the feature map; ``"gem"`` is generalised-mean (p=3).
    image_size : int or None, default=None
        Side of the square crop fed to the network; None uses the weights'
        native size (224 for most). Smaller is faster.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)`` of flattened rows, for 2-D ``X`` such as
        ``load_digits().data``.
    mean, std : sequence of 3 floats or None, default=None
        Per-channel normalisation of images in [0, 1]; None takes the
        weights' metadata (ImageNet's when there is none). Stds are > 0.
    interpolation : {"bilinear", "bicubic", "nearest", "nearest-exact"} or None, default=None
        Resize interpolation; None takes the weights' metadata.
    crop_pct : float in (0, 1] or None, default=None
        The centre crop's share of the resized side (the shorter side is
        resized to ``image_size / crop_pct``); None takes the weights'.
    value_range : None, (low, high) or "auto", default=None
        The range of array and tensor values, mapped to [0, 1] as
        ``(x - low) / (high - low)``; values outside it are an error. None:
        integers in [0, 255], floats in [0, 1]. ``"auto"`` learns
        ``(min, max)`` of the data passed to ``fit`` (``value_range_``).
""",
    "backbone_attributes": """\
    data_config_ : DataConfig
        Resolved preprocessing: ``crop_size``, ``resize_size``, ``interpolation``,
        ``mean``, ``std``.
    n_features_out_ : int
        Embedding width.
    weights_ : str or None
        Which weights were loaded (torchvision name or file path).
    weights_sha256_ : str or None
        sha256 of the weights file.
    value_range_ : tuple of 2 floats or None
        The value range of array input (``value_range``, learned if ``"auto"``).
""",
}


def shared_docs(cls):
    """Fill the ``{backbone_params}``-style lines of ``cls``'s docstring from :data:`_DOCS`."""
    for key, text in _DOCS.items():
        cls.__doc__ = cls.__doc__.replace("    {" + key + "}\n", text)
    return cls


def _three_numbers(value, name: str, positive: bool = False) -> None:
    values = list(value)
    if len(values) != 3 or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be 3 numbers, one per RGB channel; got {short_repr(value)}.")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        raise ValueError(f"{name} must be 3 finite numbers{', each > 0' if positive else ''}; got {short_repr(value)}.")


def _learned_value_range(X) -> tuple[float, float]:
    """``(min, max)`` of array or tensor input (``value_range="auto"``)."""
    if hasattr(X, "to_numpy") and not isinstance(X, (np.ndarray, torch.Tensor)):
        X = X.to_numpy()
    items = list(X) if isinstance(X, (list, tuple)) else [X]
    lows, highs = [], []
    for item in items:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().float().numpy()
        item = np.asarray(item) if not isinstance(item, (str, os.PathLike)) else None
        if item is None or item.dtype.kind not in "uif" or item.size == 0:
            raise ValueError(
                "value_range='auto' learns (min, max) from arrays or tensors of numbers; "
                "X holds other items (paths, encoded images, PIL images): pass value_range=None or (low, high)."
            )
        lows.append(float(item.min()))
        highs.append(float(item.max()))
    low, high = min(lows), max(highs)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(
            f"value_range='auto' found the values of X in [{low:g}, {high:g}]: a range needs low < high "
            "and finite values; pass value_range=(low, high)."
        )
    return low, high


class ImageEstimatorMixin:
    """Input adaptation, parameter checks and fitted backbone attributes of the image estimators."""

    def _check_image_params(self) -> None:
        """The checks of the shared parameters that constraints cannot state."""
        if self.mean is not None:
            _three_numbers(self.mean, "mean")
        if self.std is not None:
            _three_numbers(self.std, "std", positive=True)
        value_range = self.value_range
        if isinstance(value_range, (tuple, list)):
            if (
                len(value_range) != 2
                or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value_range)
                or not value_range[0] < value_range[1]
            ):
                raise ValueError(
                    f"value_range must be (low, high) with finite low < high, or 'auto'; got {short_repr(value_range)}."
                )

    def _preprocessing(self) -> dict:
        """The explicit preprocessing parameters, for :func:`~sklearn_tl.models.build.build_embedder`."""
        mean, std = (None if v is None else tuple(float(x) for x in v) for v in (self.mean, self.std))
        return {"mean": mean, "std": std, "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def _random_seed(self) -> int:
        """A torch seed drawn from ``random_state`` (an int, a ``RandomState`` or None)."""
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _image_source(self, X, reset: bool):
        """``X`` as an image source; with ``reset`` (fit), also set ``n_features_in_`` and ``value_range_``."""
        if isinstance(X, np.ndarray) and X.ndim == 2 and self.image_shape is not None:
            # Flattened images are ordinary 2-D sklearn data: validate them so.
            X = validate_data(self, X, reset=reset, dtype=None, ensure_min_features=1)
        elif reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_  # left from an earlier fit on flattened input
        if reset:
            value_range = self.value_range
            if isinstance(value_range, str):
                value_range = _learned_value_range(X)
            self.value_range_ = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        return as_image_source(X, self.image_shape, value_range=getattr(self, "value_range_", None))

    def _set_backbone_attributes(self, built) -> None:
        """The fitted attributes that describe the built (or described) backbone."""
        self.data_config_ = built.data_config
        self.n_features_out_ = built.n_features
        self.weights_ = built.weights.name
        self.weights_sha256_ = built.weights.sha256
