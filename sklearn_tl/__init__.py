"""sklearn_tl: transfer learning for images with scikit-learn estimators.

``PretrainedCNNFeaturizer`` turns images into embeddings of a pretrained CNN
inside any scikit-learn Pipeline; ``FineTuneClassifier`` and
``FineTuneRegressor`` tune the network on your labels or targets (skorch).

The public names are imported on first use (PEP 562), so ``import sklearn_tl``
and ``sklearn-tl --help`` load neither torch nor scikit-learn;
``from sklearn_tl import X`` works as usual.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the private module defining it: one place to add a name.
_PUBLIC = {
    "BackboneSpec": "_backbones",
    "get_backbone_spec": "_backbones",
    "list_backbones": "_backbones",
    "register_backbone": "_backbones",
    "EmbeddingCache": "_cache",
    "EmbeddingCacheWarning": "_cache",
    "FreezeSchedule": "_callbacks",
    "KeepBestEpoch": "_callbacks",
    "PhaseCosineLR": "_callbacks",
    "featurize_dask": "_dask",
    "IMAGE_EXTENSIONS": "_datasets",
    "load_image_folder": "_datasets",
    "load_textures": "_datasets",
    "ImageReadWarning": "_engine",
    "export_onnx": "_export",
    "PretrainedCNNFeaturizer": "_featurizer",
    "FineTuneClassifier": "_finetune",
    "FineTuneRegressor": "_finetune_regressor",
    "ImageReadError": "_images",
    "LRFinderWarning": "_lr_find",
    "OnnxFallbackWarning": "_onnx",
    "ModelFileError": "_persistence",
    "ModelVersionWarning": "_persistence",
    "load_model": "_persistence",
    "save_model": "_persistence",
    "DataConfig": "_preprocess",
    "SafeFormatError": "_state",
    "skops_trusted_types": "_state",
    "WeightsNotFoundError": "_weights",
    "weights_search_dirs": "_weights",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted({*globals(), *__all__})
