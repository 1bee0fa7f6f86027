"""Preprocessing: one resolver decides it, one transform applies it.

Precedence (as timm's ``resolve_data_config``): explicit arguments, then the
weights' own metadata (torchvision ``Weights.transforms``, timm
``pretrained_cfg``), then ImageNet defaults. No estimator hard-codes a mean, a
std or a size.

The transform is geometric only (resize the shorter side, centre crop, or a
training augmentation policy from :mod:`sklearn_tl.data.augment`); it keeps uint8 images uint8, so
batches are small to move. Normalisation with the mean and std happens on the
device, inside :class:`sklearn_tl.models.embedder.ImageEmbedder`.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from .augment import CropPolicy, resolve_augment
from .config import DataConfig

__all__ = ["ImageTransform", "ViewTransform", "tta_views", "tta_policy"]


class ImageTransform:
    """Geometric preprocessing of one ``(C, H, W)`` image tensor.

    Evaluation (``augment=None``): resize the shorter side to ``resize_size``,
    centre crop ``crop_size``. Training: ``augment`` is anything
    :func:`~sklearn_tl.data.augment.resolve_augment` takes (``"auto"``,
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


def tta_policy(augment, final_estimator) -> CropPolicy:
    """The crop preset ``tta=True`` takes its views from (checked in ``fit`` and at prediction)."""
    policy = resolve_augment(augment)
    if not isinstance(policy, CropPolicy):
        raise ValueError(
            "tta=True takes its views from a crop preset: augment='auto', 'light', 'standard' or a "
            f"(min, max) range, not augment={augment!r}."
        )
    if final_estimator is not None:
        raise ValueError("tta=True averages the network's own outputs; it does not apply with a final_estimator.")
    return policy
