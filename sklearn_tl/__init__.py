"""sklearn_tl: transfer learning for images with scikit-learn estimators.

``PretrainedCNNFeaturizer`` turns images into embeddings of a pretrained CNN
inside any scikit-learn Pipeline; ``FineTuneClassifier`` and
``FineTuneRegressor`` tune the network on your labels or targets (skorch).

The public names are imported on first use (PEP 562), so ``import sklearn_tl``
and ``sklearn-tl --help`` load neither torch nor scikit-learn;
``from sklearn_tl import X`` works as usual.
"""

from __future__ import annotations

import importlib

from . import _old_paths
from ._version import __version__ as __version__  # re-exported

# Public name -> the module defining it: one place to add a name.
_PUBLIC = {
    "BackboneSpec": "models.spec",
    "get_backbone_spec": "models.registry",
    "list_backbones": "models.registry",
    "register_backbone": "models.registry",
    "EmbeddingCache": "cache.store",
    "EmbeddingCacheWarning": "exceptions",
    "FreezeSchedule": "finetune.callbacks",
    "KeepBestEpoch": "finetune.callbacks",
    "PhaseCosineLR": "finetune.callbacks",
    "featurize_dask": "deploy.dask",
    "IMAGE_EXTENSIONS": "data.folders",
    "load_image_folder": "data.folders",
    "load_textures": "data.folders",
    "ImageReadWarning": "exceptions",
    "export_onnx": "deploy.export",
    "PretrainedCNNFeaturizer": "estimators.featurizer",
    "FineTuneClassifier": "estimators.classifier",
    "FineTuneRegressor": "estimators.regressor",
    "ImageReadError": "exceptions",
    "LRFinderWarning": "exceptions",
    "OnnxFallbackWarning": "exceptions",
    "ModelFileError": "exceptions",
    "ModelVersionWarning": "exceptions",
    "load_model": "deploy.persistence",
    "save_model": "deploy.persistence",
    "DataConfig": "data.config",
    "SafeFormatError": "exceptions",
    "skops_trusted_types": "estimators.state",
    "WeightsNotFoundError": "exceptions",
    "weights_search_dirs": "models.weights",
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


_old_paths.install()  # files written by 0.1 keep loading
