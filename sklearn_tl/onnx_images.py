"""Images → the input of a model written by :func:`sklearn_tl.export_onnx`, without torch.

This file needs only numpy and Pillow (and onnxruntime to read a model's
preprocessing): copy it next to the ``.onnx`` file on a machine without torch
or sklearn_tl. It resizes the shorter side and centre-crops as the fitted
featurizer does (to within a grey level or two of torchvision's antialiased
resize; exact for images whose shorter side already has the resize length).

Example (on the serving machine)::

    import onnxruntime
    from onnx_images import prepare_images, preprocessing_of

    session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    batch = prepare_images(["cat.jpg", "dog.png"], **preprocessing_of(session))
    labels = session.run(None, {"images": batch})[0]
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
from PIL import Image, ImageOps

__all__ = ["prepare_images", "preprocessing_of", "METADATA_PREFIX"]

METADATA_PREFIX = "sklearn_tl."
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def preprocessing_of(session) -> dict:
    """``crop_size``, ``resize_size`` and ``interpolation`` stored in an exported model."""
    meta = session.get_modelmeta().custom_metadata_map
    return {
        "crop_size": int(meta[METADATA_PREFIX + "crop_size"]),
        "resize_size": int(meta[METADATA_PREFIX + "resize_size"]),
        "interpolation": meta[METADATA_PREFIX + "interpolation"],
    }


_ENCODED = (bytes, bytearray, memoryview)


def _open(item) -> Image.Image:
    """Decode a path, encoded bytes, a binary file object (put back at its position) or an image row."""
    if isinstance(item, dict) and ("bytes" in item or "path" in item):  # Hugging Face datasets' Image(decode=False)
        item = item.get("path") if item.get("bytes") is None else item["bytes"]
        if item is None:
            raise ValueError('an image row with neither "bytes" nor "path"')
    if isinstance(item, _ENCODED):
        item = io.BytesIO(item.tobytes() if isinstance(item, memoryview) else item)
    position = None
    if callable(getattr(item, "read", None)):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            position = item.tell()
    try:
        image = Image.open(item)  # Pillow reads a file object from its start
        image.load()
        return image
    finally:
        if position is not None:
            with contextlib.suppress(OSError, ValueError):
                item.seek(position)


def _as_pil(item, index) -> Image.Image:
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray) and item.dtype != object:
        if item.dtype != np.uint8:
            raise ValueError(f"array images must be uint8 (H, W) or (H, W, 3); got {item.dtype}.")
        image = Image.fromarray(item)
    else:
        try:
            image = _open(item)
        except (OSError, ValueError, TypeError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            what = f"{len(item):,} bytes starting {bytes(item[:8]).hex(' ')}" if isinstance(item, _ENCODED) \
                else f"a {type(item).__name__}" if not isinstance(item, (str, os.PathLike)) else _short(item)
            raise ValueError(f"Cannot read images[{index}] ({what}): {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from exc
    image = ImageOps.exif_transpose(image)  # the orientation a photo viewer shows
    return image.convert("RGB")


def _short(path) -> str:
    text = repr(os.fspath(path))
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text):,} characters)"


def _as_items(images):
    """A list of images from a list, a 1-D object array, a pandas Series or a one-column DataFrame."""
    if isinstance(images, (str, os.PathLike, Image.Image, dict, *_ENCODED)) or callable(getattr(images, "read", None)):
        raise TypeError(f"images is a single {type(images).__name__}; pass a list of images: [image].")
    if hasattr(images, "to_numpy"):
        images = images.to_numpy()  # pandas Series, or the one column ColumnTransformer passes
    if isinstance(images, np.ndarray):
        if images.dtype == object and images.ndim == 2 and images.shape[1] == 1:
            images = images[:, 0]
        elif images.dtype != object and images.ndim == 3 and images.shape[-1] in (3, 4):
            raise ValueError(
                f"images has shape {images.shape}, which looks like one image (H, W, C); pass it as "
                "images[None] or [image], and n grayscale images as (n, H, W, 1) or a list."
            )
    return list(images)


def prepare_images(images, crop_size: int, resize_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``(N, crop_size, crop_size, 3)``: each image's shorter side resized to ``resize_size``, centre-cropped.

    ``images``: a list (or 1-D object array, pandas Series, one-column
    DataFrame) of paths, PIL images, uint8 arrays ``(H, W)`` / ``(H, W, 3)``,
    or encoded images: ``bytes``, ``bytearray``, ``memoryview``, binary file
    objects (read from their start, put back at their position) and Hugging
    Face ``datasets`` image rows ``{"bytes": ..., "path": ...}``. Bytes give
    exactly what the same bytes read from a file give.
    """
    images = _as_items(images)
    out = np.empty((len(images), crop_size, crop_size, 3), dtype=np.uint8)
    for i, item in enumerate(images):
        image = _as_pil(item, i)
        width, height = image.size
        if min(width, height) != resize_size:
            # torchvision's rule: the shorter side becomes resize_size, the longer is truncated.
            if width <= height:
                size = (resize_size, int(resize_size * height / width))
            else:
                size = (int(resize_size * width / height), resize_size)
            image = image.resize(size, _RESAMPLE[interpolation])
            width, height = image.size
        top, left = int(round((height - crop_size) / 2.0)), int(round((width - crop_size) / 2.0))
        out[i] = np.asarray(image.crop((left, top, left + crop_size, top + crop_size)))
    return out
