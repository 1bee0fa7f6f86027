"""Fitted estimators as data: what their pickles and skops files hold.

A fitted :class:`~sklearn_tl.PretrainedCNNFeaturizer` or
:class:`~sklearn_tl.FineTuneClassifier` is stored as its ``__dict__`` with
every torch object replaced by data: the network as ``{name: ndarray}`` (its
state dict, on the CPU), the optimizer state likewise, ``data_config_`` as a
dict, the skorch history as lists of dicts, devices and dtypes as strings, and
parameters that are classes (``optimizer=torch.optim.AdamW``) as a dotted name
(see :func:`encode_value`). On load the network is rebuilt from the registry
(backbone name, ``pretrained`` flag, layer cut, head shape, ``data_config_``),
with no weights lookup, and the saved arrays are loaded into it. So a pickle
names no private module of this package beyond the estimator classes (which
live under the public name ``sklearn_tl``), and skops can store the estimators
trusting only their own types (:func:`skops_trusted_types`).

A class parameter is stored by name only if it is a torch or skorch
optimizer, module, loader or dataset class; loading imports that (installed)
torch/skorch module, checks the class's kind and calls nothing, so a file
cannot name an arbitrary callable. Other objects (callbacks, a ``train_split``
object, functions) stay objects: pickles carry them, and skops lists their
types as untrusted.

A user's own ``torch.nn.Module`` (``backbone=`` or ``head=``) cannot be
rebuilt from data: pickles (joblib, cloudpickle, ``copy``) carry it as an
object, and a skops file (``skops.io.dump``, MLflow's default, ``save_model``'s
default) is refused with :class:`SafeFormatError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib
import sys
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import PurePath

import numpy as np
import torch
from torch import nn

from ..exceptions import SafeFormatError

__all__ = [
    "encode_value",
    "featurizer_state",
    "finetuner_state",
    "is_data_state",
    "restore_featurizer",
    "restore_finetuner",
    "skops_trusted_types",
]

#: The key that marks a data state; its value is the layout version of that state.
MARK = "__sklearn_tl_state__"
STATE_VERSION = 1

# Markers of encoded values (dicts with one of these keys).
_CLASS, _PATH, _WEIGHTS, _MEMORY, _CACHE = "__class_ref__", "__path__", "__weights__", "__memory__", "__cache__"

# A class parameter is stored by name only if it lives here and is one of these kinds: loading
# imports that torch/skorch module and checks the class's kind, so a file cannot name any callable.
_CLASS_PREFIXES = ("torch.", "skorch.")
_CLASS_KINDS = (torch.optim.Optimizer, nn.Module, torch.utils.data.DataLoader, torch.utils.data.Dataset)

_SAFE = contextvars.ContextVar("sklearn_tl_safe_format", default=False)
_WITHOUT_OPTIMIZER = contextvars.ContextVar("sklearn_tl_without_optimizer", default=False)


def _skops_is_asking() -> bool:
    """Whether skops (directly, or through MLflow) called the ``__getstate__`` running now."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("skops."):
            return True
        if not (name.startswith("sklearn_tl") or name == "copyreg"):
            return False  # a pickle, copy.deepcopy or a direct call: objects are welcome
        frame = frame.f_back
    return False


def _refuse(owner, name: str, value) -> None:
    """Raise :class:`SafeFormatError` when a safe (skops) file is being written; pickles carry ``value``."""
    if not (_SAFE.get() or _skops_is_asking()):
        return
    raise SafeFormatError(
        f"{type(owner).__name__}({name}=<{type(value).__name__}>) holds your own torch.nn.Module, which a "
        "safe (skops) file cannot rebuild: it stores data, never code. Save it as a pickle instead, "
        "save_model(model, path, format='joblib') or joblib.dump, and load that file only if you trust it."
    )


@contextlib.contextmanager
def safe_format():
    """Within: estimators are being written to a safe file (``save_model(format="skops")``)."""
    token = _SAFE.set(True)
    try:
        yield
    finally:
        _SAFE.reset(token)


# -- values ---------------------------------------------------------------------


def encode_value(value, owner=None, name: str = ""):
    """``value`` as data where it is an object skops would not trust; other values as they are."""
    from joblib import Memory

    from ..cache.store import EmbeddingCache

    if isinstance(value, type):
        module = getattr(value, "__module__", "")
        if module.startswith(_CLASS_PREFIXES) and issubclass(value, _CLASS_KINDS):
            return {_CLASS: f"{module}:{value.__qualname__}"}
        return value
    if isinstance(value, nn.Module):
        _refuse(owner, name, value)
        return value
    if isinstance(value, PurePath):
        return {_PATH: str(value)}
    if isinstance(value, Enum) and type(value).__module__.startswith("torchvision."):
        return {_WEIGHTS: f"{type(value).__name__}.{value.name}"}
    if isinstance(value, EmbeddingCache):
        return {_CACHE: [value.location, value.extra_key]}
    if isinstance(value, Memory):
        return {_MEMORY: value.location}
    if isinstance(value, torch.device):
        return str(value)
    return value


def _load_error(message: str):
    from ..exceptions import ModelFileError

    return ModelFileError(message)


def decode_value(value):
    """The inverse of :func:`encode_value`."""
    if not (isinstance(value, dict) and len(value) == 1):
        return value
    (key, content), = value.items()
    if key == _CLASS:
        module, _, qualname = str(content).partition(":")
        if not module.startswith(_CLASS_PREFIXES) or not qualname.isidentifier():
            raise _load_error(f"The model names class {content!r}; only torch and skorch classes are allowed.")
        found = getattr(importlib.import_module(module), qualname, None)
        if not (isinstance(found, type) and issubclass(found, _CLASS_KINDS)):
            raise _load_error(f"The model names {content!r}, which is no optimizer, module, loader or dataset class.")
        return found
    if key == _PATH:
        from pathlib import Path

        return Path(content)
    if key == _WEIGHTS:
        from torchvision.models import get_weight

        return get_weight(content)
    if key == _CACHE:
        from ..cache.store import EmbeddingCache

        return EmbeddingCache(content[0], extra_key=content[1])
    if key == _MEMORY:
        from joblib import Memory

        return Memory(content, verbose=0)
    return value


def _plain(value):
    """Containers of numbers and strings as builtins (numpy scalars to Python ones)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().numpy()
    return value


def _arrays(state_dict) -> dict:
    """A state dict as ``{name: ndarray}`` on the CPU (a copy: later training must not change it)."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in state_dict.items()}


def _tensors(arrays: dict) -> dict:
    return {name: torch.from_numpy(np.asarray(array)) for name, array in arrays.items()}


def is_data_state(state) -> bool:
    return isinstance(state, dict) and MARK in state


def _check_version(state) -> None:
    if state[MARK] != STATE_VERSION:
        raise _load_error(
            f"The model's state has layout {state[MARK]!r}; this sklearn_tl reads layout {STATE_VERSION}: "
            "install the sklearn_tl that wrote it."
        )


def _encode_params(owner, state: dict, names) -> None:
    for name in names:
        if name in state:
            state[name] = encode_value(state[name], owner, name)


def _decode_params(state: dict, names) -> None:
    for name in names:
        if name in state:
            state[name] = decode_value(state[name])


# -- networks ---------------------------------------------------------------------


def _skeleton(backbone, pretrained: bool) -> nn.Module:
    """The network ``backbone`` names, with weights to be overwritten (no weights lookup)."""
    from ..models.registry import source_for

    source, described = source_for(backbone)
    if isinstance(described, nn.Module):
        return copy.deepcopy(described)  # the user's module: its class is its architecture
    with torch.device("meta"):  # no random initialisation: the saved arrays overwrite every tensor
        network = source.build_network(described, pretrained=pretrained)
    persistent = set(network.state_dict())
    if any(name not in persistent for name, _ in network.named_buffers()):
        return source.build_network(described, pretrained=pretrained)  # non-persistent buffers need their init
    network = network.to_empty(device="cpu")
    with torch.no_grad():  # defined values for the probe pass of a layer cut
        for tensor in [*network.parameters(), *network.buffers()]:
            tensor.zero_()
    return network


def rebuild_embedder(backbone, pretrained: bool, layer, pooling: str, config, for_training: bool = False):
    """The :class:`~sklearn_tl.models.embedder.ImageEmbedder` that ``build_embedder`` built, weights not loaded."""
    from ..models.build import _probe, as_layers
    from ..models.embedder import ImageEmbedder
    from ..models.registry import source_for
    from ..models.sources.timm import TimmTrunk

    source, described = source_for(backbone)
    trunk = source.make_trunk(described, _skeleton(backbone, pretrained)).eval()
    layers = as_layers(layer)
    if layers is not None:
        trunk = source.cut(trunk, layers, _probe(config))
    if for_training and isinstance(trunk, TimmTrunk) and hasattr(trunk.network, "reset_classifier"):
        trunk.network.reset_classifier(0)  # as the fine-tuner's initialize_module does
    return ImageEmbedder(trunk, config.mean, config.std, pooling=pooling, layer=layer).eval()


def _fold_like(module: nn.Module, saved: dict) -> None:
    """Fold, structurally, the conv/BatchNorm pairs that were folded in the saved module (its BN is gone)."""
    from ..models.build import _foldable_pairs

    names = {id(m): name for name, m in module.named_modules()}
    for parent, first, conv, second, _norm in _foldable_pairs(module):
        prefix = f"{names[id(parent)]}." if names[id(parent)] else ""
        if f"{prefix}{second}.running_mean" in saved:
            continue
        fused = copy.deepcopy(conv)
        if fused.bias is None:
            fused.bias = nn.Parameter(torch.zeros(conv.out_channels))
        parent._modules[first] = fused
        parent._modules[second] = nn.Identity()


def _data_config(fields: dict):
    from ..data.config import DataConfig

    return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _load_arrays(module: nn.Module, arrays: dict, label: str) -> None:
    try:
        module.load_state_dict(_tensors(arrays), strict=True)
    except RuntimeError as exc:
        expected, given = set(module.state_dict()), set(arrays)
        detail = f"missing {sorted(expected - given)[:5]}, unexpected {sorted(given - expected)[:5]}"
        raise _load_error(f"The saved weights do not fit the rebuilt {label} ({detail}).") from exc


# -- the featurizer -----------------------------------------------------------------

_FEATURIZER_PARAMS = ("backbone", "weights", "cache", "device")


def featurizer_state(featurizer, state: dict) -> dict:
    """``state`` (the estimator's ``__dict__`` as pickled) with its torch objects as data."""
    state = dict(state)
    state[MARK] = STATE_VERSION
    state.pop("_compiled", None)  # compiled graphs are rebuilt where the model runs
    _encode_params(featurizer, state, _FEATURIZER_PARAMS)
    if "_build_args" in state:
        backbone = featurizer.backbone_  # built now if lazy: the weights are part of a stored model
        args = list(state["_build_args"])
        args[0], args[1] = (encode_value(v, featurizer, "backbone") for v in args[:2])
        state["_build_args"] = args
        state["_backbone"] = _arrays(backbone.state_dict())
        state["data_config_"] = state["data_config_"].as_dict()
    return state


def restore_featurizer(featurizer, state: dict) -> dict:
    """The ``__dict__`` a data state stands for, its network rebuilt (returned for ``__setstate__``)."""
    from ..runtime.device import for_inference

    _check_version(state)
    state = dict(state)
    del state[MARK]
    _decode_params(state, _FEATURIZER_PARAMS)
    if "_build_args" in state:
        args = list(state["_build_args"])
        args[0], args[1] = (decode_value(v) for v in args[:2])
        backbone, _weights, layer, pooling = args[:4]
        state["_build_args"] = tuple(args)
        config = state["data_config_"] = _data_config(state["data_config_"])
        arrays = state["_backbone"]
        record = tuple(layer) if isinstance(layer, list) else layer
        module = rebuild_embedder(backbone, state["weights_sha256_"] is not None or state["weights_"] is not None,
                                  record, pooling, config)
        _fold_like(module, arrays)
        _load_arrays(module, arrays, f"backbone {state['weights_']!r}")
        state["_backbone"] = for_inference(module)
        state["_compiled"] = {}
    return state


# -- the fine-tuner -------------------------------------------------------------------

_FINETUNER_DROPPED = ("module", "virtual_params_", "callbacks_", "grad_scaler_", "_missing_device")


def finetuner_state(net, state: dict) -> dict:
    """``state`` (the fine-tuner's ``__dict__``) with network, optimizer, history and classes as data."""
    from ..finetune.callbacks import unwrapped_module

    state = dict(state)
    state[MARK] = STATE_VERSION
    for key in _FINETUNER_DROPPED + tuple(net.cuda_dependent_attributes_):
        state.pop(key, None)
    for name, value in list(state.items()):
        if name.endswith("_") or name.startswith("_"):
            continue
        state[name] = encode_value(value, net, name)  # parameters: classes by name, modules refused
    if isinstance(state.get("callbacks"), list):
        for item in state["callbacks"]:
            if isinstance(item, nn.Module):
                _refuse(net, "callbacks", item)
    if not state.get("initialized_"):
        return state
    network = unwrapped_module(net)
    state["_network"] = _arrays(network.state_dict())
    state["_head_shape"] = _head_shape(net, network)
    optimizer = getattr(net, "optimizer_", None)
    if optimizer is not None and not _WITHOUT_OPTIMIZER.get():
        saved = optimizer.state_dict()
        state["_optimizer"] = {
            "state": {str(k): {n: _array(v) if torch.is_tensor(v) else _plain(v) for n, v in s.items()}
                      for k, s in saved["state"].items()},
            "param_groups": [_plain(group) for group in saved["param_groups"]],
        }
    criterion = getattr(net, "criterion_", None)
    state["_criterion"] = _arrays(criterion.state_dict()) if isinstance(criterion, nn.Module) else {}
    state["history_"] = _plain(list(state["history_"])) if state.get("history_") is not None else None
    state["data_config_"] = state["data_config_"].as_dict()
    state["device_"] = str(state["device_"])
    dtype = state.get("autocast_dtype_")
    state["autocast_dtype_"] = None if dtype is None else str(dtype).replace("torch.", "")
    if state.get("lr_finder_") is not None and is_dataclass(state["lr_finder_"]):
        state["lr_finder_"] = _plain(asdict(state["lr_finder_"]))
    return state


def _array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _head_shape(net, network) -> list:
    """``[inputs, outputs]`` of the head: the embedding width and the number of outputs."""
    from ..models.build import _probe_widths

    linears = [m for m in network.head.modules() if isinstance(m, nn.Linear)]
    if linears:  # a built head: no forward pass needed
        return [int(linears[0].in_features), int(linears[-1].out_features)]
    inputs = sum(_probe_widths(network.embedder, net.data_config_, net.backbone))
    with torch.no_grad():
        outputs = copy.deepcopy(network.head).cpu().float().eval()(torch.zeros(2, inputs)).shape[1]
    return [int(inputs), int(outputs)]


def restore_finetuner(net, state: dict) -> None:
    """Set ``net`` from a data state: parameters, fitted attributes, the rebuilt network and optimizer."""
    from skorch.history import History

    from ..finetune.network import FineTuneNetwork, build_head

    _check_version(state)
    state = dict(state)
    del state[MARK]
    network, head_shape = state.pop("_network", None), state.pop("_head_shape", None)
    optimizer, criterion = state.pop("_optimizer", None), state.pop("_criterion", None)
    for name, value in list(state.items()):
        if not (name.endswith("_") or name.startswith("_")):
            state[name] = decode_value(value)
    requested = state["device"]
    initialized = bool(state.get("initialized_"))
    state["initialized_"] = False  # skorch's initializers below print nothing and re-register nothing
    vars(net).update(state)
    net.module = FineTuneNetwork
    net._restore_device(requested, initialized)
    net._initialize_virtual_params()
    if not initialized:
        return
    net.data_config_ = _data_config(state["data_config_"])
    dtype = state.get("autocast_dtype_")
    net.autocast_dtype_ = None if dtype is None else getattr(torch, dtype)
    net.history_ = History(state["history_"] or [])
    if isinstance(state.get("lr_finder_"), dict):
        from ..finetune.lr_finder import LRFinderResult

        net.lr_finder_ = LRFinderResult(**state["lr_finder_"])
    pretrained = state.get("weights_sha256_") is not None or state.get("weights_") is not None
    embedder = rebuild_embedder(net.backbone, pretrained, None, net.pooling, net.data_config_, for_training=True)
    head = build_head(head_shape[0], head_shape[1], net.head, net.dropout)
    module = FineTuneNetwork(embedder, head, **net.get_params_for("module"))
    _load_arrays(module, network, "fine-tuned network")
    net.module_ = net.torch_compile(module.to(net.device_).to(memory_format=torch.channels_last), name="module")
    net._initialize_criterion()
    if criterion and isinstance(net.criterion_, nn.Module):
        net.criterion_.load_state_dict(_tensors(criterion))
    net._initialize_optimizer()
    if optimizer is not None:
        net.optimizer_.load_state_dict({
            "state": {int(k): {n: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for n, v in s.items()}
                      for k, s in optimizer["state"].items()},
            "param_groups": [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
                             for g in optimizer["param_groups"]],
        })
    net._initialize_callbacks()
    net.initialized_ = True
    net._set_training(False)


# -- trusted types -------------------------------------------------------------------


def skops_trusted_types() -> list[str]:
    """The types to trust when loading a skops file of sklearn_tl estimators.

    Pass them to ``skops.io.load(path, trusted=...)`` or to MLflow's
    ``mlflow.sklearn.load_model(..., skops_trusted_types=...)``. They are the
    estimator classes only: their state is numpy arrays and builtins, which
    skops trusts itself, and their networks are rebuilt from the registry.
    """
    return ["sklearn_tl.FineTuneClassifier", "sklearn_tl.FineTuneRegressor", "sklearn_tl.PretrainedCNNFeaturizer"]


@contextlib.contextmanager
def without_optimizer(drop: bool = True):
    """Within (if ``drop``): fine-tuners are stored without their optimizer state (``save_model``)."""
    token = _WITHOUT_OPTIMIZER.set(drop)
    try:
        yield
    finally:
        _WITHOUT_OPTIMIZER.reset(token)
