"""What the fine-tuners share: the network, its training recipe and inference (skorch).

:class:`FineTuneBase` is to :class:`~sklearn_tl.FineTuneClassifier` and
:class:`~sklearn_tl.FineTuneRegressor` what skorch's ``NeuralNet`` is to
``NeuralNetClassifier`` and ``NeuralNetRegressor``. The network is the
featurizer's :class:`~sklearn_tl.models.embedder.ImageEmbedder` (same registry, weights,
preprocessing and input formats) with a new head. What trains when is data: a
*freeze spec* selects the layers that stay fixed, :class:`FreezeSchedule`
keeps the whole backbone frozen for the first ``unfreeze_after`` epochs,
:class:`PhaseCosineLR` gives each phase a warm-up and cosine decay, and the
pretrained layers learn at ``lr * backbone_lr_scale`` through an optimizer
parameter group. A subclass says what the targets are: how they are checked
and encoded, the head's width, its LP-FT fit, and how network outputs become
predictions.
"""

from __future__ import annotations

import contextlib
import os
from numbers import Integral, Real

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import TransformerTags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, has_fit_parameter
from skorch import NeuralNet
from skorch.callbacks import EarlyStopping
from skorch.utils import is_dataset
from torch import nn

from .._defaults import FINETUNE_MAX_EPOCHS
from ..cache.fingerprint import backbone_identity, identified_by_name, model_fingerprint, runtime_fingerprint
from ..cache.store import EmbeddingCache, as_embedding_cache
from ..data.augment import AUGMENT_PRESETS, CropPolicy
from ..data.dataset import ImageDataset
from ..data.transforms import ImageTransform, tta_policy, tta_views
from ..finetune.callbacks import FreezeSchedule, KeepBestEpoch, PhaseCosineLR, unwrapped_module
from ..finetune.freeze import BACKBONE_PREFIX, backbone_blocks, check_freeze_syntax, resolve_freeze
from ..finetune.head_fit import frozen_embeddings
from ..finetune.hooks import ImageTrainingMixin
from ..finetune.layers import _layer_embedder
from ..finetune.lr_finder import LRFinderResult, lr_range_test_training
from ..finetune.network import FineTuneNetwork, build_head
from ..finetune.params import SettingsParamsMixin
from ..models.build import _probe_widths, as_layers, build_embedder, layer_feature_names
from ..models.sources.timm import TimmTrunk
from ..runtime.device import resolve_device, resolve_precision
from ..runtime.forward import forward_batches
from ..runtime.onnx import BACKENDS, resolve_backend
from .base import IMAGE_PARAMETER_CONSTRAINTS, ImageEstimatorMixin
from .state import finetuner_state, is_data_state, restore_finetuner

__all__ = ["FineTuneBase"]

DEFAULT_LR = 1e-3  # the optimizer's rate before lr="auto" finds one, and where the test finds none
LR_FINDER_STEPS = 40  # training batches of the range test behind lr="auto"


FINETUNE_PARAMETER_CONSTRAINTS: dict = {
    **IMAGE_PARAMETER_CONSTRAINTS,
    "unfreeze_after": [Interval(Integral, 0, None, closed="left")],
    "head_init": [StrOptions({"probe", "random"})],
    "batchnorm_stats": [StrOptions({"auto", "frozen", "update"})],
    "layer": [str, list, tuple, None],
    "tta": ["boolean"],
    "cache": [str, os.PathLike, joblib.Memory, EmbeddingCache, None],
    "head": [None, Interval(Integral, 1, None, closed="left"), list, tuple, nn.Module, callable],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
    "lr_schedule": [StrOptions({"cosine", "constant"})],
    "augment": ["boolean", StrOptions(set(AUGMENT_PRESETS)), tuple, list, callable],
    "early_stopping": ["boolean", Interval(Integral, 1, None, closed="left")],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "final_estimator": [HasMethods(["fit", "predict"]), None],
    "lr": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "max_epochs": [Interval(Integral, 0, None, closed="left")],
    "backend": [StrOptions(set(BACKENDS))],
    "train_split": [StrOptions({"auto"}), callable, None],
}


# Parameters added after model files were first saved, with the values that reproduce those models.
DEFAULTS_OF_OLDER_FILES = {
    "layer": None,
    "head_init": "random",
    "batchnorm_stats": "update",
    "tta": False,
    "cache": None,
}


class FineTuneBase(SettingsParamsMixin, ImageEstimatorMixin, ImageTrainingMixin, NeuralNet):
    """The fine-tuners' shared machinery; use :class:`FineTuneClassifier` or :class:`FineTuneRegressor`.

    A subclass sets the targets' side: ``_check_targets``, ``_encode_targets``,
    ``_n_outputs``, ``_fit_head_on`` and ``_output``, and the
    ``_stratified_split`` and ``_target_sample_weight`` it needs.
    """

    _finetune_constraints: dict = FINETUNE_PARAMETER_CONSTRAINTS
    _DEFAULTS_OF_OLDER_FILES = DEFAULTS_OF_OLDER_FILES

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        criterion,
        weights="DEFAULT",
        layer=None,
        pooling="avg",
        image_size=None,
        image_shape=None,
        mean=None,
        std=None,
        interpolation=None,
        crop_pct=None,
        value_range=None,
        freeze=None,
        unfreeze_after=0,
        head_init="probe",
        batchnorm_stats="auto",
        head=None,
        dropout=0.2,
        backbone_lr_scale=0.1,
        lr_schedule="cosine",
        augment="auto",
        tta=False,
        cache=None,
        early_stopping=False,
        validation_fraction=0.1,
        final_estimator=None,
        random_state=None,
        num_workers=0,
        precision="auto",
        backend="auto",
        device="auto",
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=FINETUNE_MAX_EPOCHS,
        batch_size="auto",
        train_split="auto",
        callbacks=None,
        verbose=0,
        **kwargs,
    ):
        # Set before skorch's __init__, which makes later module attributes components.
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.image_shape = image_shape
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.crop_pct = crop_pct
        self.value_range = value_range
        self.freeze = freeze
        self.unfreeze_after = unfreeze_after
        self.head_init = head_init
        self.batchnorm_stats = batchnorm_stats
        self.head = head
        self.dropout = dropout
        self.backbone_lr_scale = backbone_lr_scale
        self.lr_schedule = lr_schedule
        self.augment = augment
        self.tta = tta
        self.cache = cache
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.final_estimator = final_estimator
        self.random_state = random_state
        self.num_workers = num_workers
        self.precision = precision
        self.backend = backend
        super().__init__(
            FineTuneNetwork,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            callbacks=callbacks,
            verbose=verbose,
            device=device,
            **kwargs,
        )

    # -- what a subclass defines ---------------------------------------------

    def _check_targets(self, y, reset: bool, classes=None) -> np.ndarray:
        """``y`` checked (before ``X``), as an array."""
        raise NotImplementedError

    def _encode_targets(self, y: np.ndarray, n_samples: int, reset: bool, classes=None) -> np.ndarray:
        """What the network trains on; learns the targets' fitted attributes when ``reset``."""
        raise NotImplementedError

    def _n_outputs(self) -> int:
        """The head's width."""
        raise NotImplementedError

    def _fit_head_on(self, head: nn.Module, embeddings: torch.Tensor, targets: torch.Tensor, weights) -> None:
        """LP-FT's head fit on frozen embeddings and encoded targets."""
        raise NotImplementedError

    def _output(self, outputs: torch.Tensor) -> np.ndarray:
        """The network's outputs as what TTA averages (probabilities, standardised predictions)."""
        return self._get_predict_nonlinearity()(outputs).numpy()

    def _check_partial_fit(self) -> None:
        """Refuse settings that ``partial_fit`` cannot honour."""

    def _target_sample_weight(self, y: np.ndarray):
        """Per-image weights the targets imply (``class_weight``), or None."""
        return None

    _stratified_split = False  # early stopping's own validation split

    # -- sklearn / skorch parameter plumbing --------------------------------

    def __getstate__(self):
        return finetuner_state(self, vars(self))  # data: see _state.py

    def __setstate__(self, state):
        for name, value in self._DEFAULTS_OF_OLDER_FILES.items():
            state.setdefault(name, value)
        if state.get("initialized_"):
            state.setdefault("layer_", None)
        if is_data_state(state):
            restore_finetuner(self, state)
            return
        super().__setstate__(state)

    def _check_finetune_params(self):
        values = {name: getattr(self, name) for name in self._finetune_constraints}
        validate_parameter_constraints(self._finetune_constraints, values, caller_name=type(self).__name__)
        self._check_image_params()
        check_freeze_syntax(self.freeze)
        if self.tta:
            self._tta_policy()
        as_layers(self.layer)

    def _tta_policy(self) -> CropPolicy:
        """The crop preset ``tta=True`` takes its views from (checked in ``fit`` and at prediction)."""
        return tta_policy(self.augment, self.final_estimator)

    @property
    def _default_callbacks(self):
        callbacks = [cb for cb in super()._default_callbacks if cb[0] != "valid_acc"]
        extra = self._score_callbacks()
        # The schedule resolves `freeze` against the module when it runs: skorch's start-up order stands.
        schedule = FreezeSchedule(unfreeze_after=self.unfreeze_after, prefix=BACKBONE_PREFIX, freeze=self.freeze)
        extra.append(("freeze", schedule))
        if self.lr_schedule == "cosine":
            extra.append(("lr_schedule", PhaseCosineLR(phase_epochs=self.unfreeze_after)))
        if self.early_stopping:
            patience = 5 if self.early_stopping is True else self.early_stopping
            extra.append(("early_stopping", EarlyStopping(monitor="valid_loss", patience=patience, load_best=True)))
        extra.append(("keep_best", KeepBestEpoch()))  # with a validation split: never end below the start
        return callbacks[:-1] + extra + callbacks[-1:]  # print_log stays last

    def _score_callbacks(self) -> list:
        """The task's validation scores, as ``(name, callback)``."""
        return []

    # -- initialisation ------------------------------------------------------

    def initialize(self):
        """Check the parameters, resolve device and precision, then initialise as skorch does."""
        self._check_finetune_params()
        self.device_ = resolve_device(self.device)
        self.autocast_dtype_ = resolve_precision(self.precision, self.device_)
        self.lr_ = DEFAULT_LR if self.lr == "auto" else self.lr
        self.grad_scaler_ = self._make_grad_scaler()
        return super().initialize()

    def initialize_module(self):
        n_outputs = self._n_outputs()
        built = build_embedder(
            self.backbone, self.weights, None, self.pooling, self.image_size, preprocessing=self._preprocessing()
        )
        embedder = built.module
        if isinstance(embedder.trunk, TimmTrunk) and hasattr(embedder.trunk.network, "reset_classifier"):
            embedder.trunk.network.reset_classifier(0)  # the ImageNet classifier is not used
        head = build_head(built.n_features, n_outputs, self.head, self.dropout)
        module = self.module(embedder, head, **self.get_params_for("module"))
        module = module.to(self.device_).to(memory_format=torch.channels_last)
        self.frozen_params_ = resolve_freeze(self.freeze, module)
        self.blocks_ = [" + ".join(block) for block in backbone_blocks(embedder)]
        self._set_backbone_attributes(built)
        self.module_ = module
        self.layer_ = self.layer  # what transform uses, whatever set_params does later
        if self.layer is not None:  # fail in fit on an unknown layer; transform's width
            layers = as_layers(self.layer)
            cut = self._transform_module()
            self.layer_widths_ = tuple(zip(layers, _probe_widths(cut, self.data_config_, self.backbone)))
            self.n_features_out_ = sum(width for _, width in self.layer_widths_)
        elif "layer_widths_" in vars(self):
            del self.layer_widths_
        return self

    # -- fit -----------------------------------------------------------------

    @contextlib.contextmanager
    def _fit_scope(self, reset: bool):
        if reset:
            self._check_finetune_params()  # before random_state is used
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        seeded = self.random_state is not None
        # One seed per fit for torch and the validation split; a RandomState gives a new one each fit.
        self._fit_seed = self._random_seed() if seeded else None
        with torch.random.fork_rng(devices=devices, enabled=seeded):
            if seeded:
                torch.manual_seed(self._fit_seed)
            try:
                yield
            finally:
                self.__dict__.pop("_fit_split", None)
                self.__dict__.pop("_fit_auto_split", None)
            self._set_training(False)  # inference needs no training flags flipped

    def _prepare_fit(self, X, y, reset: bool, classes=None, sample_weight=None):
        """``(source, encoded y, per-image loss weights or None)``, all checked, ``y`` first."""
        class_weight = getattr(self, "class_weight", None)
        if is_dataset(X) and (sample_weight is not None or class_weight is not None):
            raise ValueError(
                "class_weight and sample_weight need images and y (arrays, paths, PIL images...), not a "
                "torch Dataset: a Dataset must weight its own loss (e.g. with a criterion)."
            )
        if is_dataset(X) and y is None:
            return X, None, None  # a Dataset that yields encoded targets itself
        y = self._check_targets(y, reset, classes)
        weights = None
        implied = self._target_sample_weight(y)
        if sample_weight is not None or implied is not None:
            weights = _check_sample_weight(sample_weight, np.empty((len(y), 0)), ensure_non_negative=True)
            if implied is not None:
                weights = weights * implied
            if not weights.any():
                raise ValueError("Sample weights must contain at least one non-zero number.")
            weights = weights.astype(np.float32)
        source = X if is_dataset(X) else self._image_source(X, reset=reset)
        return source, self._encode_targets(y, len(source), reset, classes), weights

    def _training_data(self, source, y_encoded, weights):
        """What skorch trains on: ``source`` itself, or a dataset whose items carry their weights."""
        if weights is None:
            return source
        if not hasattr(self.criterion_, "reduction"):
            raise ValueError(
                f"class_weight and sample_weight need a criterion with a `reduction` setting (per-sample "
                f"losses); {type(self.criterion_).__name__} has none."
            )
        return ImageDataset(source, ImageTransform(self.data_config_), targets=y_encoded, weights=weights)

    def _begin(self, X, y, *, initialize: bool, classes=None, sample_weight=None):
        """Check the data, initialise if asked: ``(source, training data, encoded y, weights)``."""
        source, y_encoded, weights = self._prepare_fit(
            X, y, reset=initialize, classes=classes, sample_weight=sample_weight
        )
        if initialize:
            self.initialize()
        return source, self._training_data(source, y_encoded, weights), y_encoded, weights

    def _start_training(self, X, y):
        """Before the first epoch: LP-FT's head fit and the LR range test, on this fit's training split."""
        if self.head_init != "probe" and self.lr != "auto":
            return
        self._fit_split = self.get_split_datasets(X, y)  # skorch's fit loop takes this very split
        if self.head_init == "probe":
            self._fit_head(self._fit_split[0])
        if self.lr == "auto":
            self.lr_finder_ = self._lr_range_test(self._fit_split[0], num_iter=LR_FINDER_STEPS)
            found = self.lr_finder_.suggestion  # within the swept range; DEFAULT_LR with a warning if no signal
            for group in self.optimizer_.param_groups:  # every group keeps its ratio to lr
                group["lr"] *= found / self.lr_
            self.lr_ = found

    def _kept_the_probe(self) -> bool:
        """Whether ``train_split="auto"`` held images out and ``keep_best`` went back to the probe head."""
        return (
            self.head_init == "probe"
            and isinstance(self.train_split, str)
            and getattr(self, "best_epoch_", None) == 0
            and len(self.history) > 0
            and "valid_loss" in self.history[-1]
        )

    def _fit_head(self, dataset_train):
        """Fit the head on the frozen embeddings: a forward pass of the images, then L-BFGS."""
        network = unwrapped_module(self)
        if not any(p.requires_grad for p in network.head.parameters()):
            return
        embeddings, targets, weights = frozen_embeddings(
            network.embedder, dataset_train, self.data_config_,
            batch_size=lambda n: self._loader_batch_size(self.get_params_for("iterator_valid"), n),
            device=self.device_, precision=self.precision, num_workers=self.num_workers,
            store=as_embedding_cache(self.cache), backbone=self.backbone,
            fingerprint=lambda width: self._head_fit_fingerprint(network.embedder, width),
        )
        self._fit_head_on(network.head, embeddings, targets, weights)

    def _head_fit_fingerprint(self, embedder, width: int) -> bytes:
        """The cache key of the untrained embedder: a featurizer's with the same settings and backend="torch"."""
        module = None if identified_by_name(self.backbone, self.weights_sha256_) else embedder
        static = model_fingerprint(
            backbone_identity(self.backbone, self.weights_sha256_, module),
            layer=None,
            pooling=embedder.pool.mode,
            data_config=self.data_config_.as_dict(),
            image_shape=self.image_shape,
            n_features=width,
        )
        return runtime_fingerprint(static, self.device_, self.autocast_dtype_)

    def _lr_range_test(self, dataset_train, **kwargs) -> LRFinderResult:
        """The range test on the parameters the next epoch trains (as the ``freeze`` callback sets them)."""
        schedule = dict(self.callbacks_).get("freeze")
        network = unwrapped_module(self)
        frozen = set() if schedule is None else schedule.frozen_in(network, len(self.history) + 1)
        return lr_range_test_training(self, dataset_train, frozen, default_lr=DEFAULT_LR, **kwargs)

    def fit(self, X, y, sample_weight=None, **fit_params):
        """Build the network, fit its head (LP-FT), train it, and fit ``final_estimator`` if set.

        Parameters
        ----------
        X : images
            Any format :class:`PretrainedCNNFeaturizer` accepts, or a torch
            ``Dataset`` yielding ``(image, encoded_target)``.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The classifier's labels of any sklearn kind (ints, strings) or a
            0/1 multilabel indicator matrix; the regressor's continuous targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each image in the loss (and the head fit),
            multiplied with ``class_weight``.
        **fit_params : dict
            Passed on to skorch.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        warm = self.warm_start and self.initialized_
        with self._fit_scope(reset=not warm):
            source, data, y_encoded, weights = self._begin(X, y, initialize=not warm, sample_weight=sample_weight)
            self._fit_auto_split = not warm and self.max_epochs > 0  # train_split="auto" holds out in fit only
            if not warm:
                self._start_training(data, y_encoded)
            NeuralNet.partial_fit(self, data, y_encoded, _routing_method="fit", **fit_params)
            if not warm and self._kept_the_probe():
                self._fit_head(self.get_dataset(data, y_encoded))  # the probe on every image, held-out ones too
            self._fit_final_estimator(source, y, weights)
        return self

    def partial_fit(self, X, y=None, classes=None, sample_weight=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising.

        The first call fits the head as ``fit`` does. For the classifier,
        ``classes`` fixes the label set on the first call; later calls must
        use labels from it. The regressor standardises its targets with the
        first call's mean and scale.
        """
        first = not self.initialized_
        self._check_partial_fit()
        with self._fit_scope(reset=first):
            source, data, y_encoded, weights = self._begin(
                X, y, initialize=first, classes=classes, sample_weight=sample_weight
            )
            if first:
                self._start_training(data, y_encoded)
            NeuralNet.partial_fit(self, data, y_encoded, **fit_params)
            self._fit_final_estimator(source, y, weights)
        return self

    def lr_find(self, X, y, *, start_lr=1e-6, end_lr=1.0, num_iter=100, sample_weight=None) -> LRFinderResult:
        """An LR range test on ``(X, y)``, run on a clone: this estimator is not changed.

        The clone is initialised and its head fitted as ``fit`` would, then
        the learning rate grows geometrically from ``start_lr`` to ``end_lr``
        over ``num_iter`` training batches (stopping early if the loss
        diverges). Returns an ``LRFinderResult`` with ``lrs``, the smoothed
        ``losses`` and ``suggestion`` (the rate ``lr="auto"`` would train
        at, within ``[start_lr, end_lr]``; where the curve is flat or near
        zero, the default 1e-3 moved into that range, with one
        :class:`LRFinderWarning` and ``fallback=True``); ``as_dict()`` gives
        them as lists.
        """
        net = clone(self)
        with net._fit_scope(reset=True):
            _, data, y_encoded, _ = net._begin(X, y, initialize=True, sample_weight=sample_weight)
            dataset_train = net.get_split_datasets(data, y_encoded)[0]
            if net.head_init == "probe":
                net._fit_head(dataset_train)
            return net._lr_range_test(dataset_train, start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)

    def fit_transform(self, X, y, **fit_params):
        """``fit(X, y)``, then the tuned embeddings of ``X``."""
        return self.fit(X, y, **fit_params).transform(X)

    def _fit_final_estimator(self, source, y, weights=None):
        if self.final_estimator is None:
            if "final_estimator_" in vars(self):
                del self.final_estimator_
            return
        estimator = clone(self.final_estimator)
        fit_params = {}
        if weights is not None:
            if not has_fit_parameter(estimator, "sample_weight"):
                raise ValueError(
                    f"class_weight / sample_weight also weight the final_estimator, but "
                    f"{type(estimator).__name__}.fit takes no sample_weight."
                )
            fit_params["sample_weight"] = weights
        self.final_estimator_ = estimator.fit(self.transform(source), np.asarray(y), **fit_params)

    # -- inference -----------------------------------------------------------

    def _forward_source(self, module, X, transform=None, source=None):
        source = self._image_source(X, reset=False) if source is None else source
        dataset = ImageDataset(source, ImageTransform(self.data_config_) if transform is None else transform)
        device = self._inference_device()
        user_module = isinstance(self.backbone, nn.Module)
        return forward_batches(
            module,
            dataset,
            batch_size=self.batch_size,
            device=device,
            precision=self.precision,
            num_workers=self.num_workers,
            backend=resolve_backend(self.backend, device, self.precision, False, user_module),
        )

    def _transform_module(self) -> nn.Module:
        """What ``transform`` runs: the tuned embedder, or its cut at ``layer``."""
        embedder = unwrapped_module(self).embedder
        layer = self.layer_
        if layer is None:
            return embedder
        record = tuple(layer) if isinstance(layer, (list, tuple)) else layer
        return _layer_embedder(embedder, self.backbone, as_layers(layer), record, self.data_config_)

    def transform(self, X):
        """Embeddings of ``X`` from the tuned backbone (hybrid mode), of ``layer`` if set.

        Parameters
        ----------
        X : images

        Returns
        -------
        X_embedded : ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self)
        return self._forward_source(self._transform_module(), X)

    def get_feature_names_out(self, input_features=None):
        """Names of ``transform``'s columns: ``<class name, lower case><i>``, or ``<layer>_<pooling>_<i>`` with ``layer``."""
        check_is_fitted(self)
        if self.layer_ is not None:
            pooling = unwrapped_module(self).embedder.pool.mode
            return np.asarray(layer_feature_names(self.layer_widths_, pooling), dtype=object)
        prefix = type(self).__name__.lower()
        return np.asarray([f"{prefix}{i}" for i in range(self.n_features_out_)], dtype=object)

    def _network_output(self, X) -> np.ndarray:
        """What the network predicts for ``X`` through :meth:`_output`; with ``tta``, averaged over the views."""
        if is_dataset(X):
            if self.tta:
                raise ValueError("tta=True makes its views from images; a torch Dataset predicts without it (tta=False).")
            return np.concatenate([self._output(out.float().cpu()) for out in self.forward_iter(X, training=False)])
        if not self.tta:
            return self._output(torch.from_numpy(self._forward_source(self.module_, X)))
        source = self._image_source(X, reset=False)
        views = tta_views(self.data_config_, self._tta_policy())
        return np.mean([self._output(torch.from_numpy(self._forward_source(self.module_, X, view, source))) for view in views], axis=0)

    @property
    def backbone_(self):
        return unwrapped_module(self).embedder

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])  # transform(): embeddings
        tags.non_deterministic = self.random_state is None
        return tags
