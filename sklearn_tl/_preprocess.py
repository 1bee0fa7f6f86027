"""Preprocessing: one resolver decides it, one transform applies it.

Precedence (as timm's ``resolve_data_config``): explicit arguments, then the
weights' own metadata (torchvision ``Weights.transforms``, timm
``pretrained_cfg``), then ImageNet defaults. No estimator hard-codes a mean, a
std or a size.

The transform is geometric only (resize the shorter side, centre crop, or a
training augmentation policy from :mod:`sklearn_tl._augment`); it keeps uint8 images uint8, so
batches are small to move. Normalisation with the mean and std happens on the
device, inside :class:`sklearn_tl._model.ImageEmbedder`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from ._augment import CropPolicy, resolve_augment

__all__ = ["DataConfig", "resolve_data_config", "ImageTransform", "ViewTransform", "tta_views"]

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


def native_data_config(spec, weights, network) -> DataConfig:
    """The architecture's own preprocessing, from the weights' metadata (its model source reads it)."""
    if spec is None:
        return DataConfig()
    from ._sources import get_source

    return get_source(spec.source).data_config(spec, weights, network)


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


class ImageTransform:
    """Geometric preprocessing of one ``(C, H, W)`` image tensor.

    Evaluation (``augment=None``): resize the shorter side to ``resize_size``,
    centre crop ``crop_size``. Training: ``augment`` is anything
    :func:`~sklearn_tl._augment.resolve_augment` takes (``"auto"``,
    ``"light"``, ``"standard"``, a crop-area range, a :class:`CropPolicy`, or a
    callable): a random resized crop (and a flip where the policy has one), or
    the callable followed by the evaluation resize and crop unless its output
    is already ``crop_size`` square. The dtype (uint8 or float in [0, 1]) is kept.
    """

    def __init__(self, config: DataConfig, augment=None):
        self.config = config
        self.augment = resolve_augment(augment)  # a CropPolicy, a callable, or None
        self._interpolation = InterpolationMode(config.interpolation)

    @property
    def scale(self):
        """The crop's area range (None without a crop policy)."""
        return self.augment.scale if isinstance(self.augment, CropPolicy) else None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        size = self.config.crop_size
        if isinstance(self.augment, CropPolicy):
            policy = self.augment
            top, left, height, width = RandomResizedCrop.get_params(image, list(policy.scale), list(policy.ratio))
            image = TF.resized_crop(
                image, top, left, height, width, [size, size], interpolation=self._interpolation, antialias=True
            )
            if policy.flip and torch.rand(()) < 0.5:
                image = TF.horizontal_flip(image)
            return image
        if self.augment is not None:
            image = self.augment(image)
            if not isinstance(image, torch.Tensor):
                raise TypeError(
                    f"The augment callable returned a {type(image).__name__}; it must return a tensor, (C, H, W)."
                )
            if tuple(image.shape[-2:]) == (size, size):
                return image
        if min(image.shape[-2:]) != self.config.resize_size:
            image = TF.resize(image, self.config.resize_size, interpolation=self._interpolation, antialias=True)
        return TF.center_crop(image, [size, size])


CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class ViewTransform:
    """One deterministic test-time view of a ``(C, H, W)`` image, at the network's input size.

    ``corner`` None: the evaluation view (resize, centre crop); else the
    square crop of that corner covering ``area`` of the image's area (capped
    at the shorter side), resized to ``crop_size``, so the aspect ratio is
    kept as in training. ``flip`` mirrors the view. No randomness: the same
    rows from any thread, in any order.
    """

    def __init__(self, config: DataConfig, corner=None, area: float = 1.0, flip: bool = False):
        if corner is not None and corner not in CORNERS:
            raise ValueError(f"corner must be None or one of {CORNERS}; got {corner!r}.")
        self.config = config
        self.corner = corner
        self.area = float(area)
        self.flip = bool(flip)
        self._eval = ImageTransform(config)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.corner is None:
            image = self._eval(image)
        else:
            height, width = image.shape[-2:]
            side = max(1, min(height, width, round(math.sqrt(self.area * height * width))))
            top = 0 if self.corner.startswith("top") else height - side
            left = 0 if self.corner.endswith("left") else width - side
            size = self.config.crop_size
            image = TF.resized_crop(
                image, top, left, side, side, [size, size], interpolation=self._eval._interpolation, antialias=True
            )
        return TF.horizontal_flip(image) if self.flip else image


def tta_views(config: DataConfig, policy: CropPolicy) -> list:
    """Test-time views from a training crop policy: the evaluation view and the four corner crops.

    The corner crops are squares of the policy's mean crop area (85 % under
    ``"auto"``); a policy that flips adds the mirror image of each of the five
    views.
    """
    area = sum(policy.scale) / 2
    views = [ViewTransform(config)] + [ViewTransform(config, corner, area) for corner in CORNERS]
    if policy.flip:
        views += [ViewTransform(view.config, view.corner, view.area, flip=True) for view in views]
    return views
