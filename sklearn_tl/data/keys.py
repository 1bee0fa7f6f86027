"""This module contains the content digests the embedding cache keys a row on.

A key is computed from exactly the data that is decoded (see
:meth:`~sklearn_tl.data.inputs.ImageSource.load_keyed`).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


# Content digests: what the embedding cache keys a row on. They live beside the
# sources so that a key is computed from exactly what is decoded (see load_keyed).


def blake2b_digest(*parts: bytes, size: int = 20) -> bytes:
    """The blake2b digest (``size`` bytes) of ``parts``, one after the other."""
    digest = hashlib.blake2b(digest_size=size)
    for part in parts:
        digest.update(part)
    return digest.digest()


def file_digest(data: bytes) -> bytes:
    return blake2b_digest(b"file|", data)


def array_digest(array: np.ndarray, tag: str) -> bytes:
    array = np.ascontiguousarray(array)
    return blake2b_digest(f"{tag}|{array.dtype.str}|{array.shape}|".encode(), memoryview(array).cast("B"))


def tensor_digest(tensor: torch.Tensor, tag: str) -> bytes:
    tensor = tensor.detach().cpu().contiguous()
    header = f"{tag}|{tensor.dtype}|{tuple(tensor.shape)}|".encode()
    # A uint8 view serialises any dtype (bfloat16 included) without conversion.
    return blake2b_digest(header, tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
