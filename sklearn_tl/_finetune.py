"""FineTuneClassifier: tune a pretrained CNN on your labels (skorch).

The network is the featurizer's :class:`~sklearn_tl._model.ImageEmbedder`
(same registry, weights, preprocessing and input formats) with a new
classifier head. What trains when is data: a *freeze spec* selects the layers
that stay fixed, :class:`FreezeSchedule` keeps the whole backbone frozen for
the first ``unfreeze_after`` epochs, :class:`PhaseCosineLR` gives each phase a
warm-up and cosine decay, and the pretrained layers learn at
``lr * backbone_lr_scale`` through an optimizer parameter group.
"""

from __future__ import annotations

import contextlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import TransformerTags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet, NeuralNetClassifier
from skorch.callbacks import EarlyStopping, EpochScoring
from skorch.utils import is_dataset
from torch import nn

from ._backbones import TimmTrunk
from ._base import IMAGE_PARAMETER_CONSTRAINTS, ImageEstimatorMixin, shared_docs
from ._callbacks import FreezeSchedule, PhaseCosineLR, unwrapped_module, valid_accuracy
from ._engine import (
    forward_batches,
    resolve_device,
    resolve_precision,
)
from ._finetune_hooks import ImageTrainingMixin
from ._freeze import BACKBONE_PREFIX, FREEZE_HELP, backbone_blocks, check_freeze_syntax, resolve_freeze
from ._head import FineTuneNetwork, build_head
from ._images import ImageDataset
from ._model import build_embedder
from ._onnx import BACKENDS, resolve_backend
from ._preprocess import ImageTransform

__all__ = [
    "FREEZE_HELP",
    "FineTuneClassifier",
    "FineTuneNetwork",
    "FreezeSchedule",
    "PhaseCosineLR",
    "backbone_blocks",
    "build_head",
    "resolve_freeze",
]


@shared_docs
class FineTuneClassifier(ImageEstimatorMixin, ImageTrainingMixin, NeuralNetClassifier):
    """Fine-tune a pretrained CNN on your labels, inside scikit-learn.

    The original ImageNet classifier is removed; a new ``head`` is trained on
    the pooled embedding. By default the head first trains alone for
    ``unfreeze_after`` epochs, then the whole network trains, the pretrained
    layers at a tenth of the learning rate, with a warm-up and cosine decay in
    each phase, random resized crops and flips. After ``fit``, ``transform``
    gives the tuned embeddings and ``final_estimator`` (e.g. ``SVC()``) can
    make the predictions from them (hybrid mode).

    This is a skorch ``NeuralNetClassifier``: ``history``, ``partial_fit``,
    ``callbacks=[...]``, and the prefixes ``optimizer__*``, ``criterion__*``,
    ``iterator_train__*``, ``iterator_valid__*`` and ``callbacks__<name>__*``
    work as in skorch.

    Parameters
    ----------
    {backbone_params}
    {preprocessing_params}
    freeze : None, "none", "backbone", int, float or list of str, default=None
        What stays fixed for the whole training: nothing (full fine-tune),
        the whole backbone (only the head trains), the first N blocks, a
        fraction of the blocks from the input, or the modules / parameters
        whose names match any of the fnmatch patterns (names as in the
        original network, e.g. ``["features.0*", "features.1.*"]``). Frozen
        BatchNorm layers keep their running statistics.
    unfreeze_after : int, default=1
        Two-phase training: the whole backbone stays frozen for this many
        epochs (the head trains alone), then the layers not selected by
        ``freeze`` are unfrozen. 0 trains them from the start.
    head : None, int, sequence of int, callable or torch.nn.Module, default=None
        The new classifier: None is one linear layer; ints are hidden widths
        (each followed by ReLU); a callable ``head(n_features, n_classes)``
        or a module mapping ``(N, n_features)`` to ``(N, n_classes)`` logits.
    dropout : float, default=0.2
        Dropout before each linear layer of a built head.
    backbone_lr_scale : float, default=0.1
        The pretrained layers learn at ``lr * backbone_lr_scale``
        (discriminative learning rates); the head learns at ``lr``. Groups
        given in ``optimizer__param_groups`` take precedence.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: :class:`PhaseCosineLR` (callback ``lr_schedule``);
        ``"constant"``: no schedule (add your own ``LRScheduler`` callback).
    augment : bool or tuple of float, default=True
        Random resized crop and horizontal flip when training (never when
        predicting); a tuple ``(min, max)`` sets the crop's area range.
    early_stopping : bool or int, default=False
        Stop when the validation loss has not improved for this many epochs
        (True is 5) and restore the best weights. Uses ``train_split``, or a
        stratified ``validation_fraction`` of the data when that is None.
    validation_fraction : float, default=0.1
        Validation share for early stopping when ``train_split`` is None.
    final_estimator : estimator or None, default=None
        If set, a clone is fitted on the tuned embeddings of the training
        images and makes the predictions (hybrid mode). Its parameters are
        settable as ``final_estimator__<name>``.
    random_state : int, RandomState instance or None, default=None
        Seeds head initialisation, shuffling, augmentation and the
        validation split for reproducible fits. Torch's global random state
        is restored after ``fit``.
    num_workers : int, default=0
        DataLoader workers for training and prediction (override for
        training alone with ``iterator_train__num_workers``).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype, as for the featurizer: fp16 (with a gradient scaler
        when training; callbacks see unscaled gradients) on CUDA, float32 on
        the CPU (bf16 only when asked for).
    backend : {"auto", "torch", "onnxruntime"}, default="auto"
        What runs ``predict``, ``predict_proba`` and ``transform`` (training is
        always torch), as for the featurizer: ``"auto"`` is ONNX Runtime on
        the CPU (the tuned network exported at the first such call, checked
        against torch, re-exported after further training) and torch on
        CUDA/MPS, or with a user's own ``torch.nn.Module`` backbone.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
        Resolved in ``fit`` for training and at every ``predict``,
        ``predict_proba`` and ``transform``, so ``set_params(device="cpu")``
        or a CPU-only machine runs a model fitted on a GPU.
    criterion : torch criterion class, default=torch.nn.CrossEntropyLoss
    optimizer : torch optimizer class, default=torch.optim.AdamW
    lr : float, default=1e-3
        Learning rate of the head.
    max_epochs : int, default=10
    batch_size : int or "auto", default="auto"
        32 on CPU, 256 on CUDA.
    train_split : callable or None, default=None
        skorch's internal validation split (e.g. ``ValidSplit(0.2)``).
    callbacks : list, "disable" or None, default=None
        Extra skorch callbacks, added to the defaults (``freeze``,
        ``lr_schedule``, ``early_stopping``, timers, scores, log).
    verbose : int, default=0
        1 prints skorch's epoch table.
    **kwargs
        Any other skorch ``NeuralNet`` parameter or prefixed parameter.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in the order of the network's outputs.
    module_ : FineTuneNetwork
        The tuned network: ``module_.embedder`` and ``module_.head``.
    backbone_ : torch.nn.Module
        The tuned embedding module (``module_.embedder``).
    {backbone_attributes}
    blocks_ : list of str
        The backbone's blocks, from the input, that an int ``freeze`` counts.
    frozen_params_ : list of str
        Parameters kept fixed after the head-only phase.
    device_ : torch.device
        The device the network trains on.
    final_estimator_ : estimator
        The fitted ``final_estimator``, if one was given.
    history_ : skorch History
        Per-epoch losses, scores, ``lr`` and ``trainable`` parameter count.

    See Also
    --------
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
    """

    _finetune_constraints: dict = {
        **IMAGE_PARAMETER_CONSTRAINTS,
        "unfreeze_after": [Interval(Integral, 0, None, closed="left")],
        "head": [None, Interval(Integral, 1, None, closed="left"), list, tuple, nn.Module, callable],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "augment": ["boolean", tuple, list],
        "early_stopping": ["boolean", Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "final_estimator": [HasMethods(["fit", "predict"]), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "backend": [StrOptions(set(BACKENDS))],
    }
    # Parameters that may hold a torch module but are settings, not components.
    _plain_params = ("backbone", "head")

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        weights="DEFAULT",
        pooling="avg",
        image_size=None,
        image_shape=None,
        mean=None,
        std=None,
        interpolation=None,
        crop_pct=None,
        value_range=None,
        freeze=None,
        unfreeze_after=1,
        head=None,
        dropout=0.2,
        backbone_lr_scale=0.1,
        lr_schedule="cosine",
        augment=True,
        early_stopping=False,
        validation_fraction=0.1,
        final_estimator=None,
        random_state=None,
        num_workers=0,
        precision="auto",
        backend="auto",
        device="auto",
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=10,
        batch_size="auto",
        train_split=None,
        callbacks=None,
        verbose=0,
        **kwargs,
    ):
        # Set before skorch's __init__, which makes later module attributes components.
        self.backbone = backbone
        self.weights = weights
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
        self.head = head
        self.dropout = dropout
        self.backbone_lr_scale = backbone_lr_scale
        self.lr_schedule = lr_schedule
        self.augment = augment
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

    # -- sklearn / skorch parameter plumbing --------------------------------

    def __setattr__(self, name, value):
        if name in self._plain_params:
            object.__setattr__(self, name, value)  # a backbone module is a setting, not a component
        else:
            super().__setattr__(name, value)

    def _get_param_names(self):
        return [name for name in super()._get_param_names() if not name.startswith("_") and name != "module"]

    def set_params(self, **params):
        nested = {
            k[len("final_estimator__") :]: params.pop(k) for k in list(params) if k.startswith("final_estimator__")
        }
        super().set_params(**params)
        if nested:
            if self.final_estimator is None:
                raise ValueError(f"Cannot set {sorted(nested)} on final_estimator=None.")
            self.final_estimator.set_params(**nested)
        return self

    def _check_finetune_params(self):
        values = {name: getattr(self, name) for name in self._finetune_constraints}
        validate_parameter_constraints(self._finetune_constraints, values, caller_name=type(self).__name__)
        self._check_image_params()
        check_freeze_syntax(self.freeze)
        if isinstance(self.augment, (tuple, list)):
            scale = tuple(self.augment)
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(
                    f"augment=(min, max) is the crop's area range, 0 < min <= max <= 1; got {self.augment!r}."
                )

    @property
    def _default_callbacks(self):
        callbacks = [cb for cb in super()._default_callbacks if cb[0] != "valid_acc"]
        extra = [("valid_acc", EpochScoring(valid_accuracy, name="valid_acc", lower_is_better=False))]
        # Settings resolved here: initialize() builds the module (frozen_params_) before the callbacks.
        frozen = list(getattr(self, "frozen_params_", ()))
        extra.append(("freeze", FreezeSchedule(frozen, self.unfreeze_after, prefix=BACKBONE_PREFIX)))
        if self.lr_schedule == "cosine":
            extra.append(("lr_schedule", PhaseCosineLR(phase_epochs=self.unfreeze_after)))
        if self.early_stopping:
            patience = 5 if self.early_stopping is True else self.early_stopping
            extra.append(("early_stopping", EarlyStopping(monitor="valid_loss", patience=patience, load_best=True)))
        return callbacks[:-1] + extra + callbacks[-1:]  # print_log stays last

    # -- initialisation ------------------------------------------------------

    def initialize(self):
        """Check the parameters, resolve device and precision, build the network, then the callbacks."""
        self._check_finetune_params()
        self.device_ = resolve_device(self.device)
        self.autocast_dtype_ = resolve_precision(self.precision, self.device_)
        self.grad_scaler_ = self._make_grad_scaler()
        # skorch's initialize(), with the callbacks after the module: they take its frozen layers.
        self.check_training_readiness()
        self._initialize_virtual_params()
        self._initialize_module()
        self._initialize_criterion()
        self._initialize_optimizer()
        self._initialize_callbacks()
        self._initialize_history()
        self._validate_params()
        self.initialized_ = True
        return self

    def initialize_module(self):
        classes = getattr(self, "classes_inferred_", None) if self.classes is None else self.classes
        if classes is None or len(classes) < 2:
            raise ValueError("FineTuneClassifier needs the classes before building its head: call fit(X, y).")
        built = build_embedder(
            self.backbone, self.weights, None, self.pooling, self.image_size, preprocessing=self._preprocessing()
        )
        embedder = built.module
        if isinstance(embedder.trunk, TimmTrunk) and hasattr(embedder.trunk.network, "reset_classifier"):
            embedder.trunk.network.reset_classifier(0)  # the ImageNet classifier is not used
        head = build_head(built.n_features, len(classes), self.head, self.dropout)
        module = self.module(embedder, head, **self.get_params_for("module"))
        module = module.to(self.device_).to(memory_format=torch.channels_last)
        self.frozen_params_ = resolve_freeze(self.freeze, module)
        self.blocks_ = [" + ".join(block) for block in backbone_blocks(embedder)]
        self._set_backbone_attributes(built)
        self.module_ = module
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
            yield
            self._set_training(False)  # inference needs no training flags flipped

    def _prepare_fit(self, X, y, reset: bool, classes=None):
        if is_dataset(X) and y is None:
            return X, None  # a Dataset that yields encoded targets itself
        y = self._check_labels(y, reset, classes)
        source = X if is_dataset(X) else self._image_source(X, reset=reset)
        return source, self._encode_labels(y, len(source), reset, classes)

    def fit(self, X, y, **fit_params):
        """Build the network, train it, and fit ``final_estimator`` if set.

        Parameters
        ----------
        X : images
            Any format :class:`PretrainedCNNFeaturizer` accepts, or a torch
            ``Dataset`` yielding ``(image, encoded_label)``.
        y : array-like of shape (n_samples,)
            Labels of any sklearn kind (ints, strings).
        **fit_params : dict
            Passed on to skorch.

        Returns
        -------
        self : FineTuneClassifier
        """
        warm = self.warm_start and self.initialized_
        with self._fit_scope(reset=not warm):
            source, y_encoded = self._prepare_fit(X, y, reset=not warm)
            if not warm:
                self.initialize()
            NeuralNet.partial_fit(self, source, y_encoded, _routing_method="fit", **fit_params)
            self._fit_final_estimator(source, y)
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising.

        ``classes`` fixes the label set on the first call; later calls must
        use labels from it.
        """
        with self._fit_scope(reset=not self.initialized_):
            source, y_encoded = self._prepare_fit(X, y, reset=not self.initialized_, classes=classes)
            if not self.initialized_:
                self.initialize()
            NeuralNet.partial_fit(self, source, y_encoded, **fit_params)
            self._fit_final_estimator(source, y)
        return self

    def fit_transform(self, X, y, **fit_params):
        """``fit(X, y)``, then the tuned embeddings of ``X``."""
        return self.fit(X, y, **fit_params).transform(X)

    def _fit_final_estimator(self, source, y):
        if self.final_estimator is None:
            if "final_estimator_" in vars(self):
                del self.final_estimator_
            return
        self.final_estimator_ = clone(self.final_estimator).fit(self.transform(source), np.asarray(y))

    # -- inference -----------------------------------------------------------

    def _forward_source(self, module, X):
        source = self._image_source(X, reset=False)
        dataset = ImageDataset(source, ImageTransform(self.data_config_))
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

    def transform(self, X):
        """Embeddings of ``X`` from the tuned backbone (hybrid mode).

        Parameters
        ----------
        X : images

        Returns
        -------
        X_embedded : ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self)
        return self._forward_source(unwrapped_module(self).embedder, X)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : images

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict_proba(self.transform(X))
        if is_dataset(X):
            return super().predict_proba(X)
        logits = torch.from_numpy(self._forward_source(self.module_, X))
        return self._get_predict_nonlinearity()(logits).numpy()

    def predict(self, X):
        """Predicted labels (of the type of ``y``).

        Parameters
        ----------
        X : images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict(self.transform(X))
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @property
    def backbone_(self):
        return unwrapped_module(self).embedder

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_label = False
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])  # transform(): embeddings
        tags.non_deterministic = self.random_state is None
        return tags
