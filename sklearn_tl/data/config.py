"""This module contains :class:`DataConfig`, how images are prepared for a backbone, and its resolver.

A data type that imports nothing of the package: the model sources fill it
from their weights' metadata; explicit arguments override it
(:func:`resolve_data_config`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["DataConfig", "resolve_data_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class DataConfig:
    """How images are prepared for a backbone.

    ``crop_size`` is the square input the network sees; ``resize_size`` the
    length the shorter side is resized to before the centre crop.
    """

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    min_size: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_data_config(
    native: DataConfig, image_size=None, mean=None, std=None, interpolation=None, crop_pct=None
) -> DataConfig:
    """Apply explicit arguments (None: keep the native value) over the native config.

    ``image_size`` sets the crop; ``crop_pct`` the crop's share of the resized
    side (timm's name), else the resize keeps the native crop fraction.
    """
    crop = native.crop_size if image_size is None else int(image_size)
    if crop_pct is not None:
        resize = int(math.floor(crop / float(crop_pct)))  # as timm
    elif image_size is None:
        resize = native.resize_size
    else:
        resize = int(round(crop / (native.crop_size / native.resize_size)))
    return DataConfig(
        crop_size=crop,
        resize_size=resize,
        interpolation=native.interpolation if interpolation is None else str(interpolation),
        mean=native.mean if mean is None else tuple(float(m) for m in mean),
        std=native.std if std is None else tuple(float(s) for s in std),
        min_size=native.min_size,
    )
