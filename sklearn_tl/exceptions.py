"""Every error and warning class of sklearn_tl, in one module (as scikit-learn and skorch do)."""

from __future__ import annotations

__all__ = [
    "EmbeddingCacheWarning",
    "ImageReadWarning",
    "ImageReadError",
    "LRFinderWarning",
    "OnnxFallbackWarning",
    "ModelFileError",
    "ModelVersionWarning",
    "SafeFormatError",
    "UnknownWeightsFileError",
    "WeightsNotFoundError",
]


class EmbeddingCacheWarning(UserWarning):
    """The embedding cache could not be written, or held corrupt entries."""


class ImageReadWarning(UserWarning):
    """Some images could not be read: their embedding rows are NaN, or they were left out of training."""


class ImageReadError(ValueError):
    """An image file or encoded image could not be read or decoded (``path`` is None for bytes)."""

    def __init__(self, message, index=None, path=None):
        super().__init__(message)
        self.index = index
        self.path = path


class LRFinderWarning(UserWarning):
    """The LR range test's curve showed no signal; training uses the default learning rate."""


class OnnxFallbackWarning(UserWarning):
    """The ONNX Runtime backend could not be used for a model; torch runs it instead."""


class ModelFileError(ValueError):
    """A model file cannot be read, is no sklearn_tl file, or is from an incompatible version."""


class ModelVersionWarning(UserWarning):
    """A model file was written by another (minor) version of sklearn_tl or its dependencies."""


class SafeFormatError(TypeError):
    """The estimator holds an object (a user's ``torch.nn.Module``) that a code-free file cannot rebuild."""


class WeightsNotFoundError(FileNotFoundError):
    """Named weights are neither on this machine nor downloadable."""


class UnknownWeightsFileError(ValueError):
    """A file to import does not carry the name of a torchvision weights file."""


class UserError(Exception):
    """A mistake in the command line or its inputs: printed in one line, exit 2."""
