"""This module contains :class:`ImageDataset`, the torch Dataset over an image source, and collation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Subset

from ..exceptions import ImageReadError
from .inputs import ImageSource

__all__ = ["ImageDataset", "KeyedBatch", "LoadFailure", "PartialBatch", "collate_images"]

ON_ERROR = ("raise", "warn")


class LoadFailure(NamedTuple):
    """Stands in a batch for an image that could not be read (``on_error="warn"``)."""

    index: int
    message: str


class PartialBatch(NamedTuple):
    """A batch with unreadable images: ``images`` holds only the readable ones."""

    images: torch.Tensor | None
    valid: torch.Tensor  # bool mask over the batch positions
    failures: list


class KeyedImage(NamedTuple):
    """An item of a keyed :class:`ImageDataset`: the image (or its LoadFailure) and its content key."""

    image: object
    key: bytes | None


class KeyedBatch(NamedTuple):
    """A collated batch of keyed items: ``images`` (a tensor or PartialBatch) and one key per item."""

    images: object
    keys: list


class ImageDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` over an :class:`ImageSource`: preprocessed RGB images.

    Items are ``image`` or ``(image, target)`` when ``targets`` is given, and
    ``({"image": image, "sample_weight": w}, target)`` when ``weights`` is
    given too (skorch's convention for sample weights: they travel with X). With
    ``on_error="warn"``, an unreadable file gives a :class:`LoadFailure` instead
    of raising, so one bad file does not stop a long run. ``keyed=True`` makes
    each item a :class:`KeyedImage` carrying the content key of exactly the
    data that was decoded (the embedding cache stores rows under it).
    """

    def __init__(self, source: ImageSource, transform, targets=None, on_error="raise", keyed=False, weights=None):
        self.source = source
        self.transform = transform
        self.targets = targets
        self.weights = weights
        self.on_error = on_error
        self.keyed = keyed
        config = getattr(transform, "config", None)
        self._min_side = getattr(config, "resize_size", None)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        key = None
        try:
            if self.keyed:
                image, key = self.source.load_keyed(index, self._min_side)
            else:
                image = self.source.load(index, self._min_side)
            image = self.transform(image)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise
            failure = LoadFailure(index, str(exc))
            return KeyedImage(failure, None) if self.keyed else failure
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if self.keyed:
            return KeyedImage(image, key)
        if self.targets is None:
            return image
        if self.weights is not None:
            return {"image": image, "sample_weight": float(self.weights[index])}, self.targets[index]
        return image, self.targets[index]


def _stack(images):
    if any(image.dtype != torch.uint8 for image in images):
        images = [image.float() / 255.0 if image.dtype == torch.uint8 else image for image in images]
    return torch.stack(images)


def collate_images(batch):
    """Stack images (and targets); mixed uint8/float batches become float.

    A batch holding :class:`LoadFailure` items becomes a :class:`PartialBatch`;
    one of :class:`KeyedImage` items a :class:`KeyedBatch`.
    """
    if isinstance(batch[0], KeyedImage):
        return KeyedBatch(collate_images([item.image for item in batch]), [item.key for item in batch])
    if isinstance(batch[0], tuple) and not isinstance(batch[0], LoadFailure):
        images, targets = zip(*batch)
        targets = torch.as_tensor(np.asarray(targets))
        if isinstance(images[0], dict):
            weights = torch.tensor([item["sample_weight"] for item in images], dtype=torch.float32)
            return {"image": collate_images([item["image"] for item in images]), "sample_weight": weights}, targets
        return collate_images(list(images)), targets
    failures = [item for item in batch if isinstance(item, LoadFailure)]
    if not failures:
        return _stack(batch)
    valid = torch.tensor([not isinstance(item, LoadFailure) for item in batch])
    images = [item for item in batch if not isinstance(item, LoadFailure)]
    return PartialBatch(_stack(images) if images else None, valid, failures)


def with_transform(dataset, transform):
    """``dataset`` (one of ours, or a ``Subset`` of one) with another transform; others as they are."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, ImageDataset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    if isinstance(dataset, ImageDataset):
        return ImageDataset(dataset.source, transform, dataset.targets, weights=dataset.weights)
    return dataset
