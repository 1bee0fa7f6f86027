"""This module contains the model fingerprint: the model's part of every cache key.

It is computed from explicit fields (the backbone's identity, layer, pooling,
preprocessing, image shape, width) that the estimators hand it; it reads no
estimator attribute.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import torch

from .._old_paths import old_path_of
from .._version import package_version
from ..data.keys import blake2b_digest


__all__ = ["backbone_identity", "identified_by_name", "model_fingerprint", "runtime_fingerprint"]


# ---------------------------------------------------------------- model fingerprint


def _state_dict_digest(module: torch.nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def identified_by_name(backbone, weights_sha256) -> bool:
    """Whether a backbone name and its weights' sha256 identify the network (else: the module itself)."""
    return not isinstance(backbone, torch.nn.Module) and weights_sha256 is not None


def backbone_identity(backbone, weights_sha256=None, module=None) -> dict:
    """The network's part of a key: its name and weights sha256, or (``module`` given) the module itself.

    A module has no other identity than its class, structure and state dict.
    The package's own classes are named by their 0.1 paths, so the cache rows
    stored before the 0.2 layout stay valid.
    """
    if module is None:
        return {"name": str(backbone).lower(), "weights_sha256": weights_sha256}
    cls = type(backbone) if isinstance(backbone, torch.nn.Module) else type(module)
    return {
        "module": old_path_of(f"{cls.__module__}.{cls.__qualname__}"),
        "structure": repr(module),
        "state": _state_dict_digest(module),
    }


def model_fingerprint(backbone: dict, *, layer, pooling, data_config: dict, image_shape, n_features: int) -> str:
    """The device-independent part of the keys of one model, from the fields that decide its output.

    Hashing a state dict costs a fraction of a second for large networks, so
    an estimator computes this once per fit; it is combined with the device
    type and autocast dtype at each call (:func:`runtime_fingerprint`).

    Parameters
    ----------
    backbone : dict
        :func:`backbone_identity`.
    layer, pooling :
        What the fitted module does (its cut and pooling), not what the parameters say now.
    data_config : dict
        ``DataConfig.as_dict()``.
    image_shape : tuple or None
    n_features : int
    """
    import PIL
    import torchvision

    fields = {
        "format": 1,
        "sklearn_tl": package_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        # Decoding (Pillow) and timm models can change between versions.
        "pillow": PIL.__version__,
        "timm": _version_of("timm"),
        "backbone": backbone,
        "layer": layer,
        "pooling": pooling,
        "data_config": data_config,
        "image_shape": None if image_shape is None else [int(s) for s in image_shape],
        "n_features": int(n_features),
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def runtime_fingerprint(static: str, device: torch.device, autocast_dtype, backend: str = "torch") -> bytes:
    """``static`` plus what the transform-time choices change (device, dtype, backend)."""
    dtype = "float32" if autocast_dtype is None else str(autocast_dtype).replace("torch.", "")
    suffix = "" if backend == "torch" else f"|{backend}"  # torch keys stay as they were
    return blake2b_digest(f"{static}|{device.type}|{dtype}{suffix}".encode())
