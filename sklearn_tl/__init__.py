"""sklearn_tl: transfer learning for images with scikit-learn estimators.

``PretrainedCNNFeaturizer`` turns images into embeddings of a pretrained CNN
inside any scikit-learn Pipeline; ``FineTuneClassifier`` tunes the network on
your labels (skorch).
"""

from ._backbones import BackboneSpec, get_backbone_spec, list_backbones, register_backbone
from ._featurizer import PretrainedCNNFeaturizer
from ._images import ImageReadError
from ._preprocess import DataConfig
from ._weights import WeightsNotFoundError, weights_search_dirs

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "DataConfig",
    "ImageReadError",
    "PretrainedCNNFeaturizer",
    "WeightsNotFoundError",
    "__version__",
    "get_backbone_spec",
    "list_backbones",
    "register_backbone",
    "weights_search_dirs",
]
