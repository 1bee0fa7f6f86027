"""This module contains the decoding of image files and PIL images into ``(C, H, W)`` tensors.

Errors name the file and its index (:class:`~sklearn_tl.ImageReadError`);
large JPEGs are decoded at reduced scale; EXIF orientation is applied.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..exceptions import ImageReadError

SUPPORTED_CHANNELS = (1, 3, 4)


def _hwc_to_chw(image: torch.Tensor, what) -> torch.Tensor:
    if image.ndim == 2:
        image = image.unsqueeze(-1)
    if image.ndim != 3:
        raise ValueError(f"{what} has {image.ndim} dimensions; an image is (H, W) or (H, W, C).")
    return _drop_alpha(image.permute(2, 0, 1), what)


def _drop_alpha(chw: torch.Tensor, what) -> torch.Tensor:
    channels = chw.shape[0]
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"{what} has {channels} channels; supported: 1 (gray), 3 (RGB), 4 (RGBA).")
    if min(chw.shape[1:]) == 0:
        raise ValueError(f"{what} has an empty side: shape {tuple(chw.shape)}.")
    return chw[:3] if channels == 4 else chw


def pil_to_tensor(image: Image.Image, what="image") -> torch.Tensor:
    """A PIL image as a ``(C, H, W)`` tensor, with EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit: keep the precision, as float in [0, 1].
        array = np.asarray(image, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.clip(array, 0.0, 1.0)).unsqueeze(0)
    if mode == "F":
        raise ValueError(f"{what} is a 32-bit float PIL image (mode 'F'); pass it as a float array in [0, 1].")
    if mode in ("1", "LA", "La"):
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa, ...
    return _hwc_to_chw(torch.from_numpy(np.array(image)), what)


def _shrink_for(image: Image.Image, min_side) -> Image.Image:
    """Reduce a much larger image by an integer factor, keeping its shorter side >= 2 * min_side.

    The final antialiased resize still sees at least twice the pixels it keeps,
    so quality is unchanged; memory and time are not spent on the excess.
    """
    if not min_side:
        return image
    factor = min(image.size) // (2 * int(min_side))
    return image.reduce(factor) if factor >= 2 else image


QUOTE_LIMIT = 80  # characters of user data a message quotes
PATH_QUOTE_LIMIT = 400  # a real path is named whole (the user must find the file); pasted data is not
SIGNATURE_BYTES = 8  # leading bytes an encoded image's description shows


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def short_repr(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters: messages quoting user data stay short."""
    return _cut(repr(value), limit)


def describe_encoded(data) -> str:
    """What encoded bytes are, briefly: their length and leading signature in hex."""
    head = bytes(data[:SIGNATURE_BYTES]).hex(" ")
    return f"{len(data):,} bytes" + (f" starting {head}" if head else "")


def _where(path, index, data=None) -> str:
    if path is None:
        item = "an encoded image" if index is None else f"X[{index}], an encoded image"
        return f"{item} of {describe_encoded(data)}"
    return f"image file {short_repr(str(path), PATH_QUOTE_LIMIT)}" + (f" (index {index})" if index is not None else "")


def _read_error(exc, path, index, data=None) -> ImageReadError:
    if isinstance(exc, FileNotFoundError):
        reason = "not found"
    elif isinstance(exc, UnidentifiedImageError):
        reason = "not a recognised image format"  # Pillow's own message repeats the path or a stream repr
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        reason = f"{type(exc).__name__}: {exc.strerror}"  # str(exc) would repeat the path
    else:
        reason = f"{type(exc).__name__}: {_cut(str(exc), 200)}"
    if path is not None and len(str(path)) > 255:  # longer than a file name can be: content passed as a str?
        reason += "; str items are file paths: pass encoded images as bytes (e.g. base64.b64decode(text))"
    return ImageReadError(
        f"Cannot {'decode' if path is None else 'read'} {_where(path, index, data)}: {reason}",
        index=index,
        path=None if path is None else str(path),
    )


def read_file_bytes(path, index=None) -> bytes:
    """The bytes of an image file; a missing or unreadable file raises :class:`ImageReadError`."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise _read_error(exc, path, index) from exc


def read_image_file(path, index=None, min_side=None, data: bytes | None = None) -> torch.Tensor:
    """Decode one image file (or its ``data``, already read); errors name the file and its index.

    ``path=None`` with ``data``: encoded bytes that come from no file, decoded
    the same way; errors describe them (length, leading bytes).

    ``min_side`` (the length the shorter side will be resized to) lets large
    images be decoded at reduced scale: JPEG's DCT scaling through ``draft``,
    an integer ``reduce`` for other formats. Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) stays in force.
    """
    where = _where(path, index, data)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            if min_side and image.format == "JPEG":
                side = 2 * int(min_side)
                scale = min(image.size) / side
                if scale >= 2:
                    image.draft(image.mode, (int(image.size[0] / scale), int(image.size[1] / scale)))
            image.load()
            return pil_to_tensor(_shrink_for(image, min_side), where)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError,
            EOFError, struct.error) as exc:  # what Pillow and pil_to_tensor raise for a bad file
        raise _read_error(exc, path, index, data) from exc
