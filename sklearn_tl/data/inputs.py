"""Input adaptation: any supported ``X`` becomes a sequence of RGB images.

Supported inputs
----------------
- numpy arrays ``(n, H, W)`` and ``(n, H, W, C)`` with ``C`` in {1, 3, 4};
- flattened images ``(n, H*W*C)`` together with ``image_shape``;
- torch tensors ``(n, C, H, W)`` or ``(n, H, W)``;
- lists of PIL images, of arrays ``(H, W[, C])`` or tensors ``(C, H, W)`` of
  any sizes, of file paths (``str`` / ``os.PathLike``), or of encoded images
  (``bytes``, ``bytearray``, ``memoryview``, binary file objects, Hugging Face
  ``datasets`` image rows ``{"bytes": ..., "path": ...}``), mixed as you like,
  also as a 1-D object array, a pandas Series or a one-column DataFrame /
  ``(n, 1)`` array.

A 3-D array whose last axis is 3 or 4 (a 3-D tensor whose first or last axis
is) looks like one colour image, not a batch of grayscale images, and is
refused: pass ``X[None]`` or ``[X]`` for one image, ``X[..., None]`` for n
grayscale images.

Encoded images are content, decoded exactly as the same bytes read from a file
(same rows, same content key, so a file and its bytes share a cache row); a
file object is read whole from its start, as Pillow reads it, and put back at
its position.

uint8 (and other integer) images must lie in [0, 255], float images in [0, 1],
unless ``value_range=(low, high)`` says the range of array values (then mapped
to [0, 1]).
Grayscale stays one channel until after resizing (then it is repeated),
RGBA drops its alpha channel. Files are decoded lazily, one at a time, with
EXIF orientation applied. Nothing the caller passes is modified: every image
is copied before it is touched.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..exceptions import ImageReadError
from .decode import (
    SUPPORTED_CHANNELS,
    _cut,
    _drop_alpha,
    _hwc_to_chw,
    describe_encoded,
    pil_to_tensor,
    read_file_bytes,
    read_image_file,
    short_repr,
)
from .keys import array_digest, file_digest, tensor_digest

__all__ = ["ImageSource", "as_image_source"]


def check_value_range(value_range):
    """``None`` or a ``(low, high)`` pair of finite numbers with low < high, as floats."""
    if value_range is None:
        return None
    try:
        low, high = value_range
        valid = not isinstance(low, bool) and not isinstance(high, bool)
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        valid = False
    if not valid or not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(
            f"value_range must be None or a (low, high) pair of numbers with low < high; got {short_repr(value_range)}."
        )
    return low, high


def _check_values(array, what, value_range=None):
    """Validate dtype and value range (``value_range``, or the uint8/float defaults)."""
    if array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype {array.dtype}.")
    if array.dtype == bool or array.dtype.kind not in "uif":
        raise ValueError(f"{what} has dtype {array.dtype}; images must be uint8 in [0, 255] or float in [0, 1].")
    if array.size == 0:
        return
    if value_range is not None:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or infinity.")
        low, high = float(array.min()), float(array.max())
        if low < value_range[0] or high > value_range[1]:
            raise ValueError(
                f"{what} has values in [{low:g}, {high:g}], outside value_range=({value_range[0]:g}, "
                f"{value_range[1]:g}); pass the range the data can take."
            )
        return
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or infinity.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0:
            raise ValueError(f"Negative values in data: {what} has minimum {low:g}; images must be in [0, 1].")
        if high > 1.0:
            raise ValueError(
                f"{what} is float with maximum {high:g}; float images must be in [0, 1] "
                "(divide by the maximum value, e.g. X / 255, or say the range: value_range=(0, 16) "
                "for load_digits)."
            )
    elif array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0:
            raise ValueError(f"Negative values in data: {what} has minimum {low}; images must be in [0, 255].")
        if high > 255:
            raise ValueError(
                f"{what} is {array.dtype} with maximum {high}; integer images must be in [0, 255] "
                "(pass 16-bit images as float: X / 65535)."
            )


def _to_tensor(array: np.ndarray, value_range=None) -> torch.Tensor:
    """A fresh (copied) tensor: uint8 stays uint8, the rest becomes float32; a value_range maps to [0, 1]."""
    if value_range is not None:
        low, high = value_range
        scaled = (np.asarray(array, dtype=np.float64) - low) / (high - low)
        return torch.tensor(np.clip(scaled, 0.0, 1.0), dtype=torch.float32)  # clip: float rounding only
    if array.dtype == np.uint8:
        return torch.tensor(array)
    if array.dtype.kind in "ui":
        return torch.tensor(array.astype(np.uint8))
    return torch.tensor(array, dtype=torch.float32)


class ImageSource:
    """Random access to the images of ``X`` as ``(C, H, W)`` tensors."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int, min_side=None) -> torch.Tensor:  # pragma: no cover - abstract
        """Image ``index`` as ``(C, H, W)``; ``min_side`` allows decoding at reduced scale."""
        raise NotImplementedError

    def path(self, index: int):
        return None

    def content_key(self, index: int) -> bytes | None:
        """A digest of image ``index`` that depends only on its content (None: cannot be keyed)."""
        try:
            return self.load_keyed(index)[1]
        except (ValueError, TypeError, OSError):
            return None  # unreadable: the forward pass reports the error

    def load_keyed(self, index: int, min_side=None) -> tuple[torch.Tensor, bytes | None]:
        """``(image, content key)``, the key computed from exactly what was decoded."""
        image = self.load(index, min_side)
        return image, tensor_digest(image, "decoded")


class ArraySource(ImageSource):
    """A numpy array ``(n, H, W[, C])`` or a tensor ``(n, C, H, W)``."""

    def __init__(self, array, channels_first: bool, value_range=None):
        self.array = array
        self.channels_first = channels_first
        self.value_range = value_range

    def __len__(self):
        return len(self.array)

    def load(self, index, min_side=None):
        item = self.array[index]
        if isinstance(item, torch.Tensor) and self.value_range is not None:
            image = _to_tensor(_tensor_to_numpy(item), self.value_range)
        elif isinstance(item, torch.Tensor):
            image = item.detach().to("cpu", copy=True)
            image = image.float() if image.is_floating_point() else image.to(torch.uint8)
        else:
            image = _to_tensor(np.asarray(item), self.value_range)
        if image.ndim == 2:
            image = image.unsqueeze(0 if self.channels_first else -1)
        return _drop_alpha(image, f"X[{index}]") if self.channels_first else _hwc_to_chw(image, f"X[{index}]")

    def _item_key(self, index):
        item = self.array[index]
        tag = _range_tag("array-chw" if self.channels_first else "array-hwc", self.value_range)
        return tensor_digest(item, tag) if isinstance(item, torch.Tensor) else array_digest(np.asarray(item), tag)

    def content_key(self, index):
        return self._item_key(index)

    def load_keyed(self, index, min_side=None):
        return self.load(index, min_side), self._item_key(index)


class ListSource(ImageSource):
    """A list of PIL images, arrays, tensors, paths or encoded images; each checked when loaded."""

    def __init__(self, items, value_range=None):
        # File objects are read here, once: a file object cannot be shared with loader threads or pickled.
        self.items = [_adapt_item(item, index) for index, item in enumerate(items)]
        self.value_range = value_range

    def __len__(self):
        return len(self.items)

    def path(self, index):
        item = self.items[index]
        return os.fspath(item) if _is_path(item) else None

    def content_key(self, index):
        item = self.items[index]
        if _is_encoded(item):
            return file_digest(_encoded_bytes(item))  # the key of a file holding these bytes
        if _is_path(item):
            try:
                return file_digest(read_file_bytes(os.fspath(item), index))
            except ImageReadError:
                return None  # unreadable: the forward pass reports the error
        if isinstance(item, np.ndarray):
            return array_digest(item, _range_tag("list-hwc", self.value_range))
        if isinstance(item, torch.Tensor):
            return tensor_digest(item, _range_tag("list-chw", self.value_range))
        if not isinstance(item, Image.Image):
            return None  # unreadable or not an image: the forward pass reports it
        return super().content_key(index)  # PIL: the decoded pixels (mode, palette, EXIF applied)

    def load_keyed(self, index, min_side=None):
        item = self.items[index]
        if _is_encoded(item):
            self._refuse_range(item, index)
            data = _encoded_bytes(item)
            return read_image_file(None, index, min_side, data=data), file_digest(data)
        if _is_path(item):
            self._refuse_range(item, index)
            # Read once, hash, decode those bytes: a file replaced meanwhile cannot
            # give one content's embedding under another content's key.
            path = os.fspath(item)
            data = read_file_bytes(path, index)
            return read_image_file(path, index, min_side, data=data), file_digest(data)
        if isinstance(item, (np.ndarray, torch.Tensor)):
            return self.load(index, min_side), self.content_key(index)
        return super().load_keyed(index, min_side)

    def _refuse_range(self, item, index):
        if self.value_range is not None and _is_decoded(item):
            # Decoded files and PIL images have a known range; never rescale them silently.
            kind = "path" if _is_path(item) else "PIL image" if isinstance(item, Image.Image) else "encoded image"
            raise ValueError(f"X[{index}] is a {kind}; value_range applies to arrays and tensors only.")

    def load(self, index, min_side=None):
        item = self.items[index]
        what = f"X[{index}]"
        self._refuse_range(item, index)
        if isinstance(item, _Unreadable):
            raise ImageReadError(item.message, index=index)
        if _is_encoded(item):
            return read_image_file(None, index, min_side, data=_encoded_bytes(item))
        if _is_path(item):
            return read_image_file(os.fspath(item), index, min_side)
        if isinstance(item, Image.Image):
            return pil_to_tensor(item, what)
        if isinstance(item, torch.Tensor):
            array = _tensor_to_numpy(item)
            _check_values(array, what, self.value_range)
            image = _to_tensor(array, self.value_range)
            if image.ndim == 2:
                image = image.unsqueeze(0)
            if image.ndim != 3:
                raise ValueError(f"{what} is a tensor with {image.ndim} dimensions; expected (C, H, W).")
            return _drop_alpha(image, what)
        if isinstance(item, np.ndarray):
            _check_values(item, what, self.value_range)
            return _hwc_to_chw(_to_tensor(item, self.value_range), what)
        if isinstance(item, dict):
            raise TypeError(
                f"{what} is a dict with keys {short_repr(sorted(map(str, item)))}; an image row is "
                '{"bytes": bytes or None, "path": str or None} with one of them set.'
            )
        raise TypeError(
            f"{what} is a {type(item).__name__}; list items must be PIL images, arrays (H, W[, C]), "
            "tensors (C, H, W), file paths, or encoded images (bytes, binary file objects)."
        )


def _range_tag(tag: str, value_range) -> str:
    """A content-key tag: the same array read with another value_range is another image."""
    return tag if value_range is None else f"{tag}|range={value_range[0]!r},{value_range[1]!r}"


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


ENCODED_TYPES = (bytes, bytearray, memoryview)


def _is_encoded(item) -> bool:
    return isinstance(item, ENCODED_TYPES)


def _encoded_bytes(item) -> bytes:
    """An encoded image as flat ``bytes``: exactly what a file holding it would."""
    return item if isinstance(item, bytes) else item.tobytes() if isinstance(item, memoryview) else bytes(item)


def _is_stream(item) -> bool:
    return callable(getattr(item, "read", None)) and not isinstance(item, (str, os.PathLike, Image.Image))


def _is_image_row(item) -> bool:
    """A Hugging Face ``datasets`` image row, ``Image(decode=False)``'s ``{"bytes": ..., "path": ...}``."""
    return isinstance(item, dict) and ("bytes" in item or "path" in item)


def _is_decoded(item) -> bool:
    """An item with a range of its own (decoded from a file, bytes or PIL), which value_range must not rescale."""
    return _is_path(item) or _is_encoded(item) or isinstance(item, (Image.Image, _Unreadable))


def _is_encoded_input(item) -> bool:
    return _is_encoded(item) or _is_stream(item) or _is_image_row(item)


class _Unreadable(NamedTuple):
    """Stands in a :class:`ListSource` for a file object that could not be read; loading it raises."""

    message: str


def _read_stream(stream, index):
    """All bytes of a binary file object, read from its start as Pillow does, its position put back."""
    if isinstance(stream, io.TextIOBase):
        raise TypeError(f"X[{index}] is a file object opened in text mode; open image files in binary mode ('rb').")
    try:
        position = stream.tell()
        stream.seek(0)
    except (AttributeError, OSError, ValueError):  # not seekable (a pipe, a socket): read from where it is
        position = None
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:  # closed, or a read error
        return _Unreadable(f"Cannot read X[{index}], a {type(stream).__name__}: {type(exc).__name__}: "
                           f"{_cut(str(exc), 200)}")
    finally:
        if position is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.seek(position)
    if not _is_encoded(data):
        raise TypeError(f"X[{index}] is a file object whose read() gave a {type(data).__name__}, not bytes.")
    return data


def _adapt_item(item, index):
    """File objects become their bytes, image rows their bytes (else their path); the rest is unchanged."""
    if _is_image_row(item):
        data, path = item.get("bytes"), item.get("path")
        if _is_encoded(data):
            return data
        if data is None and _is_path(path):
            return path
        return item  # neither usable: loading it names the problem
    if _is_stream(item):
        return _read_stream(item, index)
    return item


def as_image_source(X, image_shape=None, value_range=None) -> ImageSource:
    """Adapt ``X`` to an :class:`ImageSource`, validating what is cheap to check.

    Parameters
    ----------
    X : images
        See the module docstring. A one-column DataFrame or ``(n, 1)`` array
        of paths or encoded images (what ``ColumnTransformer`` passes for
        ``["path"]``) is a list of them.
    image_shape : tuple, default=None
        ``(H, W)`` or ``(H, W, C)`` of flattened 2-D ``X``.
    value_range : (low, high), default=None
        The range array values can take, mapped to [0, 1] as
        ``(x - low) / (high - low)``, e.g. ``(0, 16)`` for ``load_digits``.
        ``None``: integers in [0, 255], floats in [0, 1].

    Raises ``ValueError`` / ``TypeError`` naming the problem for empty input,
    wrong dimensions, unsupported channel counts, NaN/inf or out-of-range values.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X = load_digits().data  # floats 0..16, flattened 8x8
    >>> source = as_image_source(X, image_shape=(8, 8), value_range=(0, 16))
    >>> image = source.load(0)
    >>> tuple(image.shape), float(image.max())
    ((1, 8, 8), 0.9375)
    """
    value_range = check_value_range(value_range)
    if isinstance(X, ImageSource):
        return X
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"X is a single path {short_repr(os.fspath(X))}; pass a list of image paths "
            "(for a folder of class sub-folders use sklearn_tl.load_image_folder)."
        )
    if _is_encoded_input(X):
        what = describe_encoded(X) if _is_encoded(X) else f"a {type(X).__name__}"
        raise TypeError(f"X is a single encoded image ({what}); pass a list of images: [X].")
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("Sparse input is not supported: images must be dense arrays, tensors, PIL images or paths.")
    if hasattr(X, "to_numpy") and not isinstance(X, (np.ndarray, torch.Tensor)):
        X = X.to_numpy()  # pandas Series / DataFrame column of paths or bytes
    elif hasattr(X, "__array__") and not isinstance(X, (np.ndarray, torch.Tensor)):
        X = np.asarray(X)
    elif isinstance(X, Sequence) and not isinstance(X, (list, tuple)):
        X = list(X)  # another sequence, e.g. a Hugging Face datasets Column of image rows
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("X is empty: at least one image is required.")
        if value_range is not None and any(_is_decoded(x) or _is_encoded_input(x) for x in X):
            raise ValueError(
                "value_range applies to arrays and tensors only; image files, encoded images and PIL "
                "images are decoded to their own range: pass value_range=None."
            )
        return ListSource(list(X), value_range)
    if isinstance(X, torch.Tensor):
        return _tensor_source(X, value_range)
    if not isinstance(X, np.ndarray):
        raise TypeError(
            f"X is a {type(X).__name__}; expected a numpy array, a torch tensor, or a list of "
            "PIL images, arrays, file paths or encoded images."
        )
    if X.dtype.kind == "S":
        # numpy drops an "S" item's trailing zero bytes, which can cut an encoded image short.
        raise ValueError(
            f"X is a numpy bytes array (dtype {X.dtype}), which drops trailing zero bytes of encoded "
            "images; pass a list of bytes or an object array (np.array(items, dtype=object))."
        )
    if X.dtype.kind in "OU":
        if value_range is not None:
            raise ValueError(
                "value_range applies to arrays and tensors of numbers; X holds paths or encoded images: pass None."
            )
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]  # one column of paths or bytes, as ColumnTransformer passes ["path"]
        if X.ndim != 1:
            raise ValueError(
                f"X holds {X.dtype} values in shape {X.shape}; paths and encoded images are a list, "
                "a 1-D array or one column."
            )
        if X.size == 0:
            raise ValueError("X is empty: at least one image is required.")
        items = [str(x) if isinstance(x, np.str_) else x for x in X.tolist()]
        return ListSource(items, value_range)
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"X is empty: found 0 sample(s) (shape {X.shape}); at least one image is required.")
    if X.ndim == 3 and X.shape[-1] in (3, 4):  # 3-D from image_shape is reshaped below: declared a batch
        raise ValueError(_one_image_message(X.shape))
    _check_values(X, "X", value_range)
    if X.ndim == 2:
        if image_shape is None:
            raise ValueError(
                f"X is 2-D {X.shape}: for flattened images pass image_shape=(H, W) or (H, W, C); "
                "otherwise pass images as (n, H, W) or (n, H, W, C)."
            )
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (2, 3) or int(np.prod(shape)) != X.shape[1]:
            raise ValueError(
                f"image_shape={tuple(image_shape)} does not match {X.shape[1]} features per row of X."
            )
        X = X.reshape((X.shape[0],) + shape)  # a view; the data is copied per image later
    if X.ndim == 4 and X.shape[-1] not in SUPPORTED_CHANNELS:
        hint = " (channels-first numpy input? use X.transpose(0, 2, 3, 1))" if X.shape[1] in SUPPORTED_CHANNELS else ""
        raise ValueError(
            f"X has shape {X.shape}: the last axis ({X.shape[-1]}) must be the channels, "
            f"1, 3 or 4{hint}."
        )
    if X.ndim not in (3, 4):
        raise ValueError(
            f"X has {X.ndim} dimension(s) {X.shape}; expected (n, H, W), (n, H, W, C), "
            "flattened (n, H*W*C) with image_shape, or a list of images or paths."
        )
    return ArraySource(X, channels_first=False, value_range=value_range)


def _one_image_message(shape, tensor: bool = False) -> str:
    """Why a 3-D array or tensor with 3 or 4 channels is refused as a batch, and what to pass instead."""
    shape = tuple(int(s) for s in shape)
    if tensor and shape[0] in (3, 4):
        layout, one = "(C, H, W)", "X[None] (shape (1, C, H, W)) or [X]"
    elif tensor:
        layout, one = "(H, W, C)", "X.permute(2, 0, 1)[None] (tensors are channels-first: (1, C, H, W))"
    else:
        layout, one = "(H, W, C)", "X[None] (shape (1, H, W, C)) or [X]"
    gray = "X[:, None] (shape (n, 1, H, W))" if tensor else "X[..., None] (shape (n, H, W, 1))"
    return (
        f"X is a {'tensor' if tensor else 'numpy array'} of shape {shape}, which looks like one image {layout}, "
        f"not a batch of {shape[0]} grayscale images {shape[1]} x {shape[2]} px. Pass one image as {one}; "
        f"pass n grayscale images as {gray} or a list of 2-D images."
    )


def _tensor_source(X: torch.Tensor, value_range=None) -> ArraySource:
    if X.ndim not in (3, 4):
        raise ValueError(f"X is a tensor of shape {tuple(X.shape)}; expected (n, C, H, W) or (n, H, W).")
    if X.shape[0] == 0:
        raise ValueError("X is empty: at least one image is required.")
    if X.ndim == 3 and (X.shape[0] in (3, 4) or X.shape[-1] in (3, 4)):
        raise ValueError(_one_image_message(X.shape, tensor=True))
    if X.ndim == 4 and X.shape[1] not in SUPPORTED_CHANNELS:
        raise ValueError(
            f"X is a tensor of shape {tuple(X.shape)}; channels (axis 1) must be 1, 3 or 4 (N, C, H, W)."
        )
    _check_values(_tensor_to_numpy(X), "X", value_range)
    return ArraySource(X, channels_first=True, value_range=value_range)


def _tensor_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()  # numpy has no bfloat16
    return tensor.numpy()
