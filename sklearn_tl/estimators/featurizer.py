"""PretrainedCNNFeaturizer: images → embeddings of a pretrained CNN."""

from __future__ import annotations

import os
import threading

import joblib
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ..cache.fingerprint import backbone_identity, identified_by_name, model_fingerprint, runtime_fingerprint
from ..cache.store import EmbeddingCache, as_embedding_cache
from ..data.dataset import ON_ERROR, ImageDataset
from ..data.transforms import ImageTransform
from ..models.build import build_embedder, describe_embedder, fold_batchnorm, layer_feature_names
from ..runtime.device import PRECISIONS, for_inference, resolve_device, resolve_precision
from ..runtime.forward import forward_batches
from ..runtime.onnx import BACKENDS, backend_key, calibration_sample, resolve_backend
from .base import IMAGE_PARAMETER_CONSTRAINTS, ImageEstimatorMixin, shared_docs
from .state import featurizer_state, is_data_state, restore_featurizer

__all__ = ["PretrainedCNNFeaturizer"]


_BUILD_LOCK = threading.Lock()


def _inference_backbone(built) -> torch.nn.Module:
    """The built embedder as ``backbone_`` stores it: BatchNorms folded, eval, channels-last.

    Converted here, once, before anyone shares it: inference never converts it
    again (threads serving one fitted model run it side by side).
    """
    module = fold_batchnorm(built.module, built.data_config.crop_size, built.data_config.min_size)
    return for_inference(module)


def featurizer_fingerprint(featurizer, exact: bool = False) -> str:
    """The model fingerprint of a fitted featurizer, from the fields that decide its output.

    ``exact=True`` identifies the fitted module by its structure and state
    dict, for when the parameters may have changed since ``fit``.
    """
    backbone, sha256 = featurizer.backbone, featurizer.weights_sha256_
    exact = exact or not identified_by_name(backbone, sha256)
    # Called in fit, a not-yet-built module (see backbone_) has fit's parameters.
    module = featurizer.backbone_ if exact else featurizer._built_backbone()
    return model_fingerprint(
        backbone_identity(backbone, sha256, module if exact else None),
        layer=featurizer.layer if module is None else module.layer,
        pooling=featurizer.pooling if module is None else module.pool.mode,
        data_config=featurizer.data_config_.as_dict(),
        image_shape=featurizer.image_shape,
        n_features=featurizer.n_features_out_,
    )


@shared_docs
class PretrainedCNNFeaturizer(ImageEstimatorMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Turn images into embeddings of a pretrained convolutional network.

    The backbone is cut before its classifier; its last feature map is pooled
    globally into one vector per image. Preprocessing (resize, crop, mean, std,
    interpolation, crop) comes from the weights' own metadata unless stated.

    Parameters
    ----------
    {backbone_params}
    layer : str, list of str or None, default=None
        Take the pooled output of this module (named as in the torchvision or
        timm network, e.g. ``"layer3"`` or ``"features.13"``) instead of the
        last feature map; with a list, each layer's pooled output, concatenated
        in the order given. The network is cut after the last of them when it
        is built, so the forward pass stops there. Feature names are then
        ``<layer>_<pooling>_<i>``, dots in the layer name replaced by underscores
        (``layer3_avg_17``).
    {preprocessing_params}
    batch_size : int or "auto", default="auto"
        Images per forward pass; ``"auto"`` is 256 on CUDA, 32 on CPU. On an
        out-of-memory error batches are halved and retried.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``. Resolved at each ``transform``, so a model fitted on a GPU
        runs on a CPU-only machine.
    precision : {"auto", "float32", "bfloat16", "float16", "int8"}, default="auto"
        Autocast dtype. ``"auto"``: fp16 on CUDA (a batch that overflows is
        redone in fp32), float32 on the CPU whatever the CPU (bf16, even
        native, lost too much fidelity: an explicit choice; bf16 and fp16 run
        on torch). ``"int8"`` (CPU, ONNX Runtime): the network statically
        quantized, calibrated on up to 64 images of the ``X`` given to ``fit``
        (``fit`` keeps them, preprocessed, in ``calibration_images_``);
        faster, and close to float32 but not equal (see README, "Backends").
        Output is always float32.
    backend : {"auto", "torch", "onnxruntime"}, default="auto"
        What runs the network. ``"auto"``: ONNX Runtime on the CPU (the
        network is exported at the first ``transform``, checked against torch
        on a probe batch and used only if they agree; otherwise torch runs it
        and one :class:`OnnxFallbackWarning` says why), torch on CUDA and MPS
        or with ``compile=True``, and for a ``torch.nn.Module`` backbone (whose
        ``forward`` an export may not capture: name ``"onnxruntime"`` for it).
    num_workers : int, default=0
        DataLoader worker processes decoding and resizing images in parallel.
    compile : bool, default=False
        Run a ``torch.compile``d copy of the backbone. The first ``transform``
        compiles (5-9 s for MobileNetV2 / ResNet-50 on 2 CPU cores); later ones
        were 1.00-1.09x faster on this project's CPU (see benchmarks/README.md).
    progress : bool or "auto", default="auto"
        Show a progress bar with images per second; ``"auto"`` shows it for runs
        of 500 images or more when standard error is a terminal.
    on_error : {"raise", "warn"}, default="raise"
        What an unreadable, truncated or non-image file does: raise an
        :class:`ImageReadError` naming the file and its index, or give a row of
        NaN for that sample with one :class:`ImageReadWarning` (so the row count
        still matches ``y``; drop or impute those rows before a classifier that
        rejects NaN).
    cache : str, path-like, joblib.Memory, EmbeddingCache or None, default=None
        Store embeddings on disk, keyed on each image's content and on
        everything that changes the output (backbone, weights sha256, layer,
        pooling, preprocessing, image shape, resolved device type and precision,
        versions), so a ``GridSearchCV`` over the classifier embeds each image
        once across folds, candidates, runs and ``n_jobs`` workers. A path or a
        ``joblib.Memory`` names the directory; entries go to its
        ``sklearn_tl_embeddings`` sub-directory. See :class:`EmbeddingCache`
        for the size and for clearing it.

    Attributes
    ----------
    backbone_ : torch.nn.Module
        The embedding module (normalisation, trunk, pooling) with its weights.
    {backbone_attributes}
    n_features_in_ : int
        Only for flattened 2-D input: the number of values per row.
    calibration_images_ : ndarray of shape (n, 3, H, W), uint8
        Only with ``precision="int8"``: up to 64 images of ``fit``'s ``X``,
        preprocessed, that calibrate the quantized network.

    See Also
    --------
    FineTuneClassifier : tune the backbone on your labels.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_tl import PretrainedCNNFeaturizer
    >>> X = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    >>> featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, random_state=0)
    >>> featurizer.fit_transform(X).shape
    (4, 512)
    """

    _parameter_constraints: dict = {
        **IMAGE_PARAMETER_CONSTRAINTS,
        "layer": [str, list, tuple, None],
        "precision": [StrOptions({"auto", "int8", *PRECISIONS})],
        "backend": [StrOptions(set(BACKENDS))],
        "compile": ["boolean"],
        "progress": ["boolean", StrOptions({"auto"})],
        "on_error": [StrOptions(set(ON_ERROR))],
        "cache": [str, os.PathLike, joblib.Memory, EmbeddingCache, None],
    }

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
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
        batch_size="auto",
        device="auto",
        precision="auto",
        num_workers=0,
        compile=False,
        progress="auto",
        on_error="raise",
        random_state=None,
        cache=None,
        backend="auto",
    ):
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
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_workers = num_workers
        self.compile = compile
        self.progress = progress
        self.on_error = on_error
        self.random_state = random_state
        self.cache = cache
        self.backend = backend

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone and its weights, and resolve the preprocessing.

        Nothing is learnt from ``X``; it is validated, so bad input fails here.

        Parameters
        ----------
        X : images
            See the class docstring for the supported formats.
        y : ignored

        Returns
        -------
        self : PretrainedCNNFeaturizer
        """
        self._check_image_params()
        source = self._image_source(X, reset=True)
        # A device this machine lacks, or a backend it cannot run, fails in fit.
        self._backend(resolve_device(self.device))
        seed = self._random_seed()
        args = (self.backbone, self.weights, self.layer, self.pooling, self.image_size)
        self._build_args = (*args, self._preprocessing(), seed)
        # With a cache, a run may find every row stored: then the network is never needed, so
        # building it waits for the first cache miss (backbone_), where the parameters allow.
        built = describe_embedder(*args, preprocessing=self._preprocessing()) if self.cache is not None else None
        if built is None:
            built = build_embedder(*args, seed=seed, preprocessing=self._preprocessing())
            self._backbone = _inference_backbone(built)
        else:
            self._backbone = None
        self._compiled = {}  # torch.compile graphs of this fit, per device (never pickled)
        self._set_backbone_attributes(built)
        self._layer_widths = built.layer_widths
        if self.precision == "int8":  # the one use of X: calibration of the quantized network
            self.calibration_images_ = calibration_sample(ImageDataset(source, ImageTransform(self.data_config_)))
        elif "calibration_images_" in self.__dict__:
            del self.calibration_images_
        # Hashing a state dict can take a fraction of a second: once per fit, only when caching.
        self._cache_fingerprint = featurizer_fingerprint(self) if self.cache is not None else None
        return self

    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : images
            See the class docstring for the supported formats.

        Returns
        -------
        X_embedded : ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self)
        source = self._image_source(X, reset=False)
        dataset = ImageDataset(source, ImageTransform(self.data_config_), on_error=self.on_error)
        store = as_embedding_cache(self.cache)
        device = resolve_device(self.device)
        backend = self._backend(device)
        calibration = self.__dict__.get("calibration_images_")
        if self.precision == "int8" and calibration is None:
            raise ValueError("precision='int8' calibrates on images seen in fit: fit again with precision='int8'.")

        def embed(images, on_batch=None):
            return forward_batches(
                self.backbone_,
                images,
                batch_size=self.batch_size,
                device=device,
                precision=self.precision,
                num_workers=self.num_workers,
                progress=self.progress,
                n_features=self.n_features_out_,
                compile=self.compile,
                compiled_modules=self.__dict__.get("_compiled"),
                on_batch=on_batch,
                backend=backend,
                calibration=calibration,
            )

        if store is None:
            return embed(dataset)
        # cache set after fit (set_params): identify the fitted module itself, without storing it
        static = getattr(self, "_cache_fingerprint", None) or featurizer_fingerprint(self, exact=True)
        fingerprint = runtime_fingerprint(
            static,
            device,
            resolve_precision(self.precision, device, backend),
            backend_key(backend, self.precision, calibration),
        )
        keyed = ImageDataset(source, dataset.transform, on_error=self.on_error, keyed=True)
        return store.embed(
            source,
            lambda indices: torch.utils.data.Subset(keyed, indices),
            fingerprint,
            self.n_features_out_,
            embed,
        )

    def _backend(self, device) -> str:
        user_module = isinstance(self.backbone, torch.nn.Module)
        return resolve_backend(self.backend, device, self.precision, self.compile, user_module)

    @property
    def backbone_(self):
        """The embedding module: normalisation, trunk (BatchNorms folded), pooling."""
        if self.__dict__.get("_backbone") is None:
            if "_build_args" not in self.__dict__:
                raise AttributeError("'PretrainedCNNFeaturizer' object has no attribute 'backbone_' (not fitted)")
            with _BUILD_LOCK:  # threads sharing a lazily built featurizer build it once
                if self.__dict__.get("_backbone") is None:
                    *args, preprocessing, seed = self._build_args  # fit's parameters, whatever set_params did since
                    built = build_embedder(*args, seed=seed, preprocessing=preprocessing)
                    if built.weights.sha256 != self.weights_sha256_:
                        raise ValueError(
                            f"The weights file of {self.weights_!r} changed since fit (sha256 "
                            f"{self.weights_sha256_} then, {built.weights.sha256} now); fit again."
                        )
                    self._backbone = _inference_backbone(built)
        return self._backbone

    def _built_backbone(self):
        """``backbone_`` if it exists already, else None (never builds)."""
        return self.__dict__.get("_backbone")

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def get_feature_names_out(self, input_features=None):
        """Output feature names: ``pretrainedcnnfeaturizer<i>``, or ``<layer>_<pooling>_<i>`` with ``layer``.

        Parameters
        ----------
        input_features : ignored
            Validated against the names seen in ``fit``, as scikit-learn does.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        names = super().get_feature_names_out(input_features)
        widths = self.__dict__.get("_layer_widths")
        if widths is None:
            return names
        return np.asarray(layer_feature_names(widths, self._build_args[3]), dtype=object)

    __module__ = "sklearn_tl"  # pickles and skops files name the public class, wherever it is defined

    def __getstate__(self):
        return featurizer_state(self, super().__getstate__())  # data: see _state.py

    def __setstate__(self, state):
        if is_data_state(state):  # else a pickle of sklearn_tl 0.1, holding the module itself
            state = restore_featurizer(self, state)
        super().__setstate__(state)
        if "_build_args" in self.__dict__:
            self._compiled = {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.input_tags.positive_only = True  # pixel values are never negative
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags
