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


def _as_pil(item) -> Image.Image:
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ValueError(f"array images must be uint8 (H, W) or (H, W, 3); got {item.dtype}.")
        image = Image.fromarray(item)
    else:
        image = Image.open(item)
        image.load()
    image = ImageOps.exif_transpose(image)  # the orientation a photo viewer shows
    return image.convert("RGB")


def prepare_images(images, crop_size: int, resize_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``(N, crop_size, crop_size, 3)``: each image's shorter side resized to ``resize_size``, centre-cropped.

    ``images``: paths, PIL images or uint8 arrays ``(H, W)`` / ``(H, W, 3)``.
    """
    out = np.empty((len(images), crop_size, crop_size, 3), dtype=np.uint8)
    for i, item in enumerate(images):
        image = _as_pil(item)
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
