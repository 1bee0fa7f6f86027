"""sklearn_tl: transfer learning for images with scikit-learn estimators.

``PretrainedCNNFeaturizer`` turns images into embeddings of a pretrained CNN
inside any scikit-learn Pipeline; ``FineTuneClassifier`` and
``FineTuneRegressor`` tune the network on your labels or targets (skorch).
"""

from ._backbones import BackboneSpec, get_backbone_spec, list_backbones, register_backbone
from ._cache import EmbeddingCache, EmbeddingCacheWarning
from ._callbacks import FreezeSchedule, PhaseCosineLR
from ._dask import featurize_dask
from ._datasets import IMAGE_EXTENSIONS, load_image_folder, load_textures
from ._engine import ImageReadWarning
from ._export import export_onnx
from ._featurizer import PretrainedCNNFeaturizer
from ._finetune import FineTuneClassifier
from ._finetune_regressor import FineTuneRegressor
from ._images import ImageReadError
from ._onnx import OnnxFallbackWarning
from ._persistence import ModelFileError, ModelVersionWarning, load_model, save_model
from ._preprocess import DataConfig
from ._weights import WeightsNotFoundError, weights_search_dirs

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "DataConfig",
    "EmbeddingCache",
    "EmbeddingCacheWarning",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "FreezeSchedule",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageReadWarning",
    "ModelFileError",
    "ModelVersionWarning",
    "OnnxFallbackWarning",
    "PhaseCosineLR",
    "PretrainedCNNFeaturizer",
    "WeightsNotFoundError",
    "__version__",
    "export_onnx",
    "featurize_dask",
    "get_backbone_spec",
    "list_backbones",
    "load_image_folder",
    "load_model",
    "load_textures",
    "register_backbone",
    "save_model",
    "weights_search_dirs",
]
