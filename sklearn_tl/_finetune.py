"""FineTuneClassifier: tune a pretrained CNN on your labels (skorch).

The network is the featurizer's :class:`~sklearn_tl._model.ImageEmbedder`
(same registry, weights, preprocessing and input formats) with a new
classifier head. What trains when is data: a *freeze spec* selects the layers
that stay fixed, :class:`FreezeSchedule` keeps the whole backbone frozen for
the first ``unfreeze_after`` epochs, :class:`PhaseCosineLR` gives each phase a
warm-up and cosine decay, and the pretrained layers learn at
``lr * backbone_lr_scale`` through an optimizer parameter group.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
import os
import warnings
from enum import Enum
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.utils import TransformerTags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from skorch import NeuralNet, NeuralNetClassifier
from skorch.callbacks import Callback, EarlyStopping, EpochScoring
from skorch.dataset import ValidSplit, unpack_data
from skorch.utils import is_dataset, to_tensor
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Subset

from ._backbones import TimmTrunk
from ._engine import (
    PRECISIONS,
    autocast_context,
    forward_batches,
    make_loader,
    resolve_batch_size,
    resolve_device,
    resolve_precision,
    to_model_input,
)
from ._images import ImageDataset, as_image_source, collate_images
from ._model import POOLINGS, build_embedder, network_root
from ._preprocess import ImageTransform

__all__ = [
    "FineTuneClassifier",
    "FineTuneNetwork",
    "FreezeSchedule",
    "PhaseCosineLR",
    "backbone_blocks",
    "build_head",
    "resolve_freeze",
]

FREEZE_HELP = (
    "freeze must be None or 'none' (train everything), 'backbone' (train only the new head), "
    "an int N (the first N blocks), a float in [0, 1] (that fraction of the blocks, from the input), "
    "or a list of module-name patterns such as ['features.0*', 'layer1']"
)
BACKBONE_PREFIX = "embedder."
# Containers whose children are the network's stages (torchvision, timm).
_STAGE_CONTAINERS = ("features", "blocks", "stages", "layers")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_CONVS = (nn.Conv2d,)


# ---------------------------------------------------------------------------
# The network: embedder + new head.


class FineTuneNetwork(nn.Module):
    """``embedder`` (images in [0, 1] → embeddings) followed by ``head`` (→ logits)."""

    def __init__(self, embedder: nn.Module, head: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder(x))


def build_head(n_features: int, n_classes: int, head=None, dropout: float = 0.0) -> nn.Module:
    """The new classifier on top of an ``n_features`` embedding.

    ``head`` is None (one linear layer), an int or a sequence of ints (hidden
    widths, each followed by ReLU), a callable ``head(n_features, n_classes)``
    returning a module, or a module (copied). ``dropout`` is applied before
    every linear layer of a built head.
    """
    if isinstance(head, nn.Module):
        module = copy.deepcopy(head)
    elif callable(head):
        module = head(n_features, n_classes)
        if not isinstance(module, nn.Module):
            raise TypeError(f"head(n_features, n_classes) must return a torch.nn.Module; got {type(module).__name__}.")
    else:
        hidden = () if head is None else (head,) if isinstance(head, Integral) else tuple(head)
        if any(not isinstance(h, Integral) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"head must list positive hidden widths, e.g. (256,); got {head!r}.")
        layers, width = [], n_features
        for h in hidden:
            layers += [nn.Dropout(dropout)] if dropout else []
            layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
            width = int(h)
        layers += [nn.Dropout(dropout)] if dropout else []
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    with torch.no_grad():
        out = module.eval()(torch.zeros(2, n_features))
    if out.shape != (2, n_classes):
        raise ValueError(
            f"The head maps a ({2}, {n_features}) embedding to shape {tuple(out.shape)}; "
            f"it must give ({2}, {n_classes}) logits for the {n_classes} classes."
        )
    return module


# ---------------------------------------------------------------------------
# Freeze specs.


def _trunk_root(embedder: nn.Module) -> tuple[nn.Module, str]:
    """The module whose names are the original network's, and its parameter prefix."""
    root = network_root(embedder.trunk)
    return root, "trunk." if root is embedder.trunk else "trunk.network."


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def backbone_blocks(embedder: nn.Module) -> list[list[str]]:
    """The backbone's blocks in input-to-output order, as lists of module names.

    Names are those of the original network (``"features.3"``, ``"layer2"``).
    A single container holding everything (``features`` of MobileNet) is
    looked into; its children are the blocks. Consecutive leaf layers (a stem
    ``conv1``, ``bn1``, ``relu``, ``maxpool``) form one block, closed by a pool
    or by the next convolution.
    """
    root, _ = _trunk_root(embedder)
    node, prefix = root, ""
    while True:
        holders = [(n, c) for n, c in node.named_children() if _has_params(c)]
        if len(holders) == 1 and next(holders[0][1].children(), None) is not None:
            node, prefix = holders[0][1], f"{prefix}{holders[0][0]}."
            continue
        break
    blocks, group = [], []

    def close():
        if group and any(_has_params(node.get_submodule(n[len(prefix) :])) for n in group):
            blocks.append(list(group))
        group.clear()

    for name, child in node.named_children():
        if next(child.children(), None) is None:
            if isinstance(child, _CONVS) and any(
                isinstance(node.get_submodule(n[len(prefix) :]), _CONVS) for n in group
            ):
                close()  # a flat stack of layers (VGG): one block per convolution
            group.append(prefix + name)
            if isinstance(child, _POOLS):
                close()
            continue
        close()
        if name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks.extend([f"{prefix}{name}.{n}"] for n, c in child.named_children() if _has_params(c))
        elif _has_params(child):
            blocks.append([prefix + name])
    close()
    return blocks


def _check_freeze_syntax(freeze) -> None:
    if freeze is None or (isinstance(freeze, str) and freeze in ("none", "backbone")):
        return
    if isinstance(freeze, bool):
        raise ValueError(f"Unknown freeze spec {freeze!r}: {FREEZE_HELP}.")
    if isinstance(freeze, Integral):
        if freeze < 0:
            raise ValueError(f"Unknown freeze spec {freeze!r}: a number of blocks is >= 0. {FREEZE_HELP}.")
        return
    if isinstance(freeze, Real):
        if not 0.0 <= float(freeze) <= 1.0:
            raise ValueError(f"Unknown freeze spec {freeze!r}: a fraction is in [0, 1]. {FREEZE_HELP}.")
        return
    if isinstance(freeze, (list, tuple)) and freeze and all(isinstance(p, str) for p in freeze):
        return
    hint = ""
    if isinstance(freeze, str):
        hint = f" (for a module-name pattern pass a list: freeze=[{freeze!r}])"
    raise ValueError(f"Unknown freeze spec {freeze!r}{hint}: {FREEZE_HELP}.")


def resolve_freeze(freeze, network: FineTuneNetwork) -> list[str]:
    """Names of ``network``'s parameters that ``freeze`` keeps fixed."""
    _check_freeze_syntax(freeze)
    names = [n for n, _ in network.named_parameters()]
    backbone = [n for n in names if n.startswith(BACKBONE_PREFIX)]
    if freeze is None or freeze == "none":
        return []
    if freeze == "backbone":
        return backbone
    root, root_prefix = _trunk_root(network.embedder)
    full_prefix = BACKBONE_PREFIX + root_prefix
    if isinstance(freeze, (list, tuple)):
        frozen = set()
        for pattern in freeze:
            matched = {
                n
                for n in names
                if any(
                    fnmatch.fnmatchcase(candidate, p)
                    for candidate in (n, n[len(full_prefix) :] if n.startswith(full_prefix) else None)
                    if candidate is not None
                    for p in (pattern, pattern + ".*")
                )
            }
            if not matched:
                shown = ", ".join(" + ".join(b) for b in backbone_blocks(network.embedder))
                raise ValueError(
                    f"Unknown freeze spec: pattern {pattern!r} matches no parameter of the network. "
                    f"Its blocks are: {shown}."
                )
            frozen |= matched
        return [n for n in names if n in frozen]
    blocks = backbone_blocks(network.embedder)
    if isinstance(freeze, Integral):
        if freeze > len(blocks):
            raise ValueError(
                f"Unknown freeze spec: freeze={freeze} blocks, but this backbone has {len(blocks)} "
                f"(use freeze='backbone' to freeze all of it)."
            )
        count = int(freeze)
    else:
        count = int(math.floor(float(freeze) * len(blocks) + 1e-9))
    modules = [full_prefix + m for block in blocks[:count] for m in block]
    return [n for n in backbone if any(n.startswith(m + ".") for m in modules)]


# ---------------------------------------------------------------------------
# Callbacks: what trains when, and at which learning rate.


def _network(net) -> nn.Module:
    """The net's module, looking through ``torch.compile``."""
    return getattr(net.module_, "_orig_mod", net.module_)


class FreezeSchedule(Callback):
    """Freeze the net's frozen layers; for the first ``net.unfreeze_after`` epochs, the whole backbone.

    Reads the layers from ``net.frozen_params_`` at the start of every
    epoch, so ``partial_fit`` continues where ``fit`` stopped. Records the
    number of trainable parameters in the history as ``trainable``.
    """

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history)  # 1-based: the row of this epoch exists
        network = _network(net)
        if epoch <= net.unfreeze_after:
            frozen = {n for n, _ in network.named_parameters() if n.startswith(BACKBONE_PREFIX)}
        else:
            frozen = set(net.frozen_params_)
        trainable = 0
        for name, param in network.named_parameters():
            param.requires_grad_(name not in frozen)
            trainable += 0 if name in frozen else param.numel()
        net.history.record("trainable", trainable)


class PhaseCosineLR(Callback):
    """Per-batch learning rate: linear warm-up, then cosine decay, in each phase.

    The phases are the head-only epochs (``net.unfreeze_after``) and the rest
    of the call to ``fit`` / ``partial_fit``; each gets its own cycle, so the
    newly unfrozen layers start with a warm-up. Every parameter group is
    scaled from its own base learning rate, which keeps discriminative rates.

    Parameters
    ----------
    warmup_fraction : float, default=0.1
        Fraction of each phase's steps spent warming up linearly.
    final_factor : float, default=0.01
        The learning rate at the end of a phase, relative to the base.
    """

    BASE_KEY = "sklearn_tl_base_lr"

    def __init__(self, warmup_fraction=0.1, final_factor=0.01):
        self.warmup_fraction = warmup_fraction
        self.final_factor = final_factor

    def _groups(self, net):
        for name in net._optimizers:
            yield from getattr(net, name + "_").param_groups

    def on_train_begin(self, net, **kwargs):
        self.first_epoch_ = len(net.history) + 1
        self.last_epoch_ = self.first_epoch_ + net.max_epochs - 1
        for group in self._groups(net):
            group.setdefault(self.BASE_KEY, group["lr"])

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        epoch = len(net.history)
        per_epoch = max(1, net._n_train_batches(dataset_train))
        boundary = net.unfreeze_after
        if epoch <= boundary:
            start, end = self.first_epoch_, min(boundary, self.last_epoch_)
        else:
            start, end = max(self.first_epoch_, boundary + 1), self.last_epoch_
        end = max(end, epoch)
        self.steps_ = (end - start + 1) * per_epoch
        self.step_ = (epoch - start) * per_epoch

    def factor(self, step: int, total: int) -> float:
        warmup = int(round(self.warmup_fraction * total)) if self.warmup_fraction > 0 else 0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup + 1) / max(1, total - warmup))  # the last step ends at final_factor
        return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_batch_begin(self, net, training=False, **kwargs):
        if not training:
            return
        scale = self.factor(self.step_, self.steps_)
        self.step_ += 1
        for group in self._groups(net):
            group["lr"] = group[self.BASE_KEY] * scale

    def on_epoch_end(self, net, **kwargs):
        net.history.record("lr", list(self._groups(net))[-1]["lr"])  # the head's group


def _valid_accuracy(net, X, y):
    """Accuracy on the encoded validation targets (works with skorch's caching)."""
    logits = net.forward(X)
    y = np.asarray(y if not isinstance(y, torch.Tensor) else y.cpu().numpy())
    return float(np.mean(logits.argmax(1).cpu().numpy() == y.reshape(-1)))


# ---------------------------------------------------------------------------
# The estimator.


def _augmented(dataset, transform):
    """``dataset`` with the training transform, if it is one of ours."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, ImageDataset):
        inner = dataset.dataset
        return Subset(ImageDataset(inner.source, transform, inner.targets), dataset.indices)
    if isinstance(dataset, ImageDataset):
        return ImageDataset(dataset.source, transform, dataset.targets)
    return dataset


def _has_nan_label(y: np.ndarray) -> bool:
    if y.dtype.kind == "f":
        return bool(np.isnan(y).any())
    if y.dtype.kind == "O":
        return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in y)
    return False


class FineTuneClassifier(NeuralNetClassifier):
    """Fine-tune a pretrained CNN on your labels, inside scikit-learn.

    The original ImageNet classifier is removed; a new ``head`` is trained on
    the pooled embedding. By default the head first trains alone for
    ``unfreeze_after`` epochs, then the whole network trains, the pretrained
    layers at a tenth of the learning rate, with a warm-up and cosine decay in
    each phase, random resized crops and flips. After ``fit``, ``transform``
    gives the tuned embeddings and ``final_estimator`` (e.g. ``SVC()``) can
    make the predictions from them (hybrid mode).

    This is a skorch ``NeuralNetClassifier``: ``history``, ``partial_fit``,
    ``callbacks=[...]``, and the prefixes ``optimizer__*``, ``criterion__*``,
    ``iterator_train__*``, ``iterator_valid__*`` and ``callbacks__<name>__*``
    work as in skorch.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="mobilenet_v2"
        As for :class:`PretrainedCNNFeaturizer`: a registered, torchvision or
        timm name, or a module (copied, never modified).
    weights : str, path, torchvision WeightsEnum or None, default="DEFAULT"
        As for :class:`PretrainedCNNFeaturizer`; None is random initialisation.
    pooling : {"avg", "max", "gem"}, default="avg"
        Global pooling of the last feature map.
    image_size : int or None, default=None
        Side of the square crop fed to the network; None uses the weights'
        native size. Smaller is faster.
    image_shape : tuple or None, default=None
        ``(H, W)`` or ``(H, W, C)`` of flattened rows, for 2-D ``X``.
    freeze : None, "none", "backbone", int, float or list of str, default=None
        What stays fixed for the whole training: nothing (full fine-tune),
        the whole backbone (only the head trains), the first N blocks, a
        fraction of the blocks from the input, or the modules / parameters
        whose names match any of the fnmatch patterns (names as in the
        original network, e.g. ``["features.0*", "features.1.*"]``). Frozen
        BatchNorm layers keep their running statistics.
    unfreeze_after : int, default=1
        Two-phase training: the whole backbone stays frozen for this many
        epochs (the head trains alone), then the layers not selected by
        ``freeze`` are unfrozen. 0 trains them from the start.
    head : None, int, sequence of int, callable or torch.nn.Module, default=None
        The new classifier: None is one linear layer; ints are hidden widths
        (each followed by ReLU); a callable ``head(n_features, n_classes)``
        or a module mapping ``(N, n_features)`` to ``(N, n_classes)`` logits.
    dropout : float, default=0.2
        Dropout before each linear layer of a built head.
    backbone_lr_scale : float, default=0.1
        The pretrained layers learn at ``lr * backbone_lr_scale``
        (discriminative learning rates); the head learns at ``lr``. Groups
        given in ``optimizer__param_groups`` take precedence.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: :class:`PhaseCosineLR` (callback ``lr_schedule``);
        ``"constant"``: no schedule (add your own ``LRScheduler`` callback).
    augment : bool or tuple of float, default=True
        Random resized crop and horizontal flip when training (never when
        predicting); a tuple ``(min, max)`` sets the crop's area range.
    early_stopping : bool or int, default=False
        Stop when the validation loss has not improved for this many epochs
        (True is 5) and restore the best weights. Uses ``train_split``, or a
        stratified ``validation_fraction`` of the data when that is None.
    validation_fraction : float, default=0.1
        Validation share for early stopping when ``train_split`` is None.
    final_estimator : estimator or None, default=None
        If set, a clone is fitted on the tuned embeddings of the training
        images and makes the predictions (hybrid mode). Its parameters are
        settable as ``final_estimator__<name>``.
    random_state : int or None, default=None
        Seeds head initialisation, shuffling, augmentation and the
        validation split for reproducible fits. Torch's global random state
        is restored after ``fit``.
    num_workers : int, default=0
        DataLoader workers for training and prediction (override for
        training alone with ``iterator_train__num_workers``).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype, as for the featurizer: fp16 (with a gradient scaler
        when training) on CUDA, bf16 on CPUs with native bf16, else fp32.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
        Resolved in ``fit`` and again when a pickle is loaded, so a model
        fitted on a GPU predicts on a CPU-only machine.
    criterion : torch criterion class, default=torch.nn.CrossEntropyLoss
    optimizer : torch optimizer class, default=torch.optim.AdamW
    lr : float, default=1e-3
        Learning rate of the head.
    max_epochs : int, default=10
    batch_size : int or "auto", default="auto"
        32 on CPU, 256 on CUDA.
    train_split : callable or None, default=None
        skorch's internal validation split (e.g. ``ValidSplit(0.2)``).
    callbacks : list, "disable" or None, default=None
        Extra skorch callbacks, added to the defaults (``freeze``,
        ``lr_schedule``, ``early_stopping``, timers, scores, log).
    verbose : int, default=0
        1 prints skorch's epoch table.
    **kwargs
        Any other skorch ``NeuralNet`` parameter or prefixed parameter.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, in the order of the network's outputs.
    module_ : FineTuneNetwork
        The tuned network: ``module_.embedder`` and ``module_.head``.
    backbone_ : torch.nn.Module
        The tuned embedding module (``module_.embedder``).
    data_config_ : DataConfig
        Resolved preprocessing.
    n_features_out_ : int
        Embedding width (what ``transform`` returns).
    weights_, weights_sha256_ : str or None
        The weights loaded, and the sha256 of their file.
    blocks_ : list of str
        The backbone's blocks, from the input, that an int ``freeze`` counts.
    frozen_params_ : list of str
        Parameters kept fixed after the head-only phase.
    device_ : torch.device
        The device the network runs on.
    final_estimator_ : estimator
        The fitted ``final_estimator``, if one was given.
    history_ : skorch History
        Per-epoch losses, scores, ``lr`` and ``trainable`` parameter count.

    See Also
    --------
    PretrainedCNNFeaturizer : frozen embeddings for any sklearn estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_tl import FineTuneClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
    >>> y = np.array(["cat", "dog"] * 4)
    >>> clf = FineTuneClassifier("resnet18", weights=None, image_size=32, max_epochs=2,
    ...                          freeze=2, head=(16,), random_state=0)
    >>> clf.fit(X, y).predict(X[:3]).shape
    (3,)
    >>> clf.transform(X).shape
    (8, 512)
    """

    _finetune_constraints: dict = {
        "backbone": [str, nn.Module],
        "weights": [str, os.PathLike, Enum, None],
        "pooling": [StrOptions(set(POOLINGS))],
        "image_size": [Interval(Integral, 1, None, closed="left"), None],
        "image_shape": [tuple, list, None],
        "unfreeze_after": [Interval(Integral, 0, None, closed="left")],
        "head": [None, Interval(Integral, 1, None, closed="left"), list, tuple, nn.Module, callable],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "augment": ["boolean", tuple, list],
        "early_stopping": ["boolean", Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "final_estimator": [HasMethods(["fit", "predict"]), None],
        "random_state": [Interval(Integral, 0, None, closed="left"), None],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "precision": [StrOptions({"auto", *PRECISIONS})],
        "device": [str, torch.device],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    }
    # Parameters that may hold a torch module but are settings, not components.
    _plain_params = ("backbone", "head")

    def __init__(
        self,
        backbone="mobilenet_v2",
        *,
        weights="DEFAULT",
        pooling="avg",
        image_size=None,
        image_shape=None,
        freeze=None,
        unfreeze_after=1,
        head=None,
        dropout=0.2,
        backbone_lr_scale=0.1,
        lr_schedule="cosine",
        augment=True,
        early_stopping=False,
        validation_fraction=0.1,
        final_estimator=None,
        random_state=None,
        num_workers=0,
        precision="auto",
        device="auto",
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        max_epochs=10,
        batch_size="auto",
        train_split=None,
        callbacks=None,
        verbose=0,
        **kwargs,
    ):
        # Set before skorch's __init__, which makes later module attributes components.
        self.backbone = backbone
        self.weights = weights
        self.pooling = pooling
        self.image_size = image_size
        self.image_shape = image_shape
        self.freeze = freeze
        self.unfreeze_after = unfreeze_after
        self.head = head
        self.dropout = dropout
        self.backbone_lr_scale = backbone_lr_scale
        self.lr_schedule = lr_schedule
        self.augment = augment
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.final_estimator = final_estimator
        self.random_state = random_state
        self.num_workers = num_workers
        self.precision = precision
        super().__init__(
            FineTuneNetwork,
            criterion=criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            callbacks=callbacks,
            verbose=verbose,
            device=device,
            **kwargs,
        )

    # -- sklearn / skorch parameter plumbing --------------------------------

    def __setattr__(self, name, value):
        if name in self._plain_params:
            object.__setattr__(self, name, value)  # a backbone module is a setting, not a component
        else:
            super().__setattr__(name, value)

    def _get_param_names(self):
        return [name for name in super()._get_param_names() if not name.startswith("_") and name != "module"]

    def set_params(self, **params):
        nested = {
            k[len("final_estimator__") :]: params.pop(k) for k in list(params) if k.startswith("final_estimator__")
        }
        super().set_params(**params)
        if nested:
            if self.final_estimator is None:
                raise ValueError(f"Cannot set {sorted(nested)} on final_estimator=None.")
            self.final_estimator.set_params(**nested)
        return self

    def _check_finetune_params(self):
        values = {name: getattr(self, name) for name in self._finetune_constraints}
        validate_parameter_constraints(self._finetune_constraints, values, caller_name=type(self).__name__)
        _check_freeze_syntax(self.freeze)
        if isinstance(self.augment, (tuple, list)):
            scale = tuple(self.augment)
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(
                    f"augment=(min, max) is the crop's area range, 0 < min <= max <= 1; got {self.augment!r}."
                )

    @property
    def _default_callbacks(self):
        callbacks = [cb for cb in super()._default_callbacks if cb[0] != "valid_acc"]
        extra = [("valid_acc", EpochScoring(_valid_accuracy, name="valid_acc", lower_is_better=False))]
        extra.append(("freeze", FreezeSchedule()))
        if self.lr_schedule == "cosine":
            extra.append(("lr_schedule", PhaseCosineLR()))
        if self.early_stopping:
            patience = 5 if self.early_stopping is True else self.early_stopping
            extra.append(("early_stopping", EarlyStopping(monitor="valid_loss", patience=patience, load_best=True)))
        return callbacks[:-1] + extra + callbacks[-1:]  # print_log stays last

    # -- initialisation ------------------------------------------------------

    def initialize(self):
        """Check the parameters, resolve device and precision, build the network."""
        self._check_finetune_params()
        self.device_ = resolve_device(self.device)
        self.autocast_dtype_ = resolve_precision(self.precision, self.device_)
        self.grad_scaler_ = self._make_grad_scaler()
        return super().initialize()

    def _make_grad_scaler(self):
        if self.device_.type == "cuda" and self.autocast_dtype_ == torch.float16:
            return torch.amp.GradScaler("cuda")
        return None

    def initialize_module(self):
        classes = getattr(self, "classes_inferred_", None) if self.classes is None else self.classes
        if classes is None or len(classes) < 2:
            raise ValueError("FineTuneClassifier needs the classes before building its head: call fit(X, y).")
        built = build_embedder(self.backbone, self.weights, None, self.pooling, self.image_size)
        embedder = built.module
        if isinstance(embedder.trunk, TimmTrunk) and hasattr(embedder.trunk.network, "reset_classifier"):
            embedder.trunk.network.reset_classifier(0)  # the ImageNet classifier is not used
        head = build_head(built.n_features, len(classes), self.head, self.dropout)
        module = self.module(embedder, head, **self.get_params_for("module"))
        module = module.to(self.device_).to(memory_format=torch.channels_last)
        self.frozen_params_ = resolve_freeze(self.freeze, module)
        self.blocks_ = [" + ".join(block) for block in backbone_blocks(embedder)]
        self.data_config_ = built.data_config
        self.n_features_out_ = built.n_features
        self.weights_ = built.weights.name
        self.weights_sha256_ = built.weights.sha256
        self.module_ = module
        return self

    def _initialize_module(self, reason=None):
        # skorch's version moves the module to ``self.device``, which may be "auto".
        with self._current_init_context("module"):
            if reason and self.initialized_ and self.verbose:
                print(reason)
            self.initialize_module()
            self.module_ = self.torch_compile(self.module_, name="module")
        return self

    def _initialize_criterion(self, reason=None):
        with self._current_init_context("criterion"):
            if reason and self.initialized_ and self.verbose:
                print(reason)
            self.initialize_criterion()
            if isinstance(self.criterion_, nn.Module):
                self.criterion_ = self.criterion_.to(self.device_)
        return self

    def get_all_learnable_params(self):
        seen = set()
        modules = [_network(self)] + [getattr(self, name + "_") for name in self._criteria]
        for module in modules:
            for name, param in getattr(module, "named_parameters", lambda: [])():
                if param not in seen:
                    seen.add(param)
                    yield name, param

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's parameter groups, plus the pretrained layers at ``lr * backbone_lr_scale``."""
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer" or self.backbone_lr_scale == 1:
            return args, kwargs
        groups = args[0]
        if groups and set(groups[-1]) == {"params"}:
            rest = groups.pop()  # skorch's group of the parameters no user group claimed
            backbone_ids = {id(p) for n, p in _network(self).named_parameters() if n.startswith(BACKBONE_PREFIX)}
            pretrained = [p for p in rest["params"] if id(p) in backbone_ids]
            others = [p for p in rest["params"] if id(p) not in backbone_ids]
            if pretrained:
                groups.append({"params": pretrained, "lr": kwargs["lr"] * self.backbone_lr_scale})
            if others:
                groups.append({"params": others})
        return args, kwargs

    # -- data ----------------------------------------------------------------

    def _image_source(self, X, reset: bool):
        if isinstance(X, np.ndarray) and X.ndim == 2 and self.image_shape is not None:
            X = validate_data(self, X, reset=reset, dtype=None, ensure_min_features=1)
        elif reset and hasattr(self, "n_features_in_"):
            del self.n_features_in_
        return as_image_source(X, self.image_shape)

    def _check_labels(self, y, reset: bool, classes=None) -> np.ndarray:
        """``y`` as a 1-D array of classification labels, checked before ``X``."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        y = column_or_1d(y, warn=True)
        if y.size == 0:
            raise ValueError("y is empty: at least one labelled image is required.")
        if _has_nan_label(y):
            raise ValueError("y contains NaN or None labels; every image needs a label.")
        check_classification_targets(y)
        if reset and self.classes is None and classes is None and len(np.unique(y)) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 classes to learn from; y has only one class: {y[0]!r}."
            )
        return y

    def _encode_labels(self, y: np.ndarray, n_samples: int, reset: bool, classes=None) -> np.ndarray:
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} images but y has {len(y)} labels; they must match.")
        if reset:
            given = self.classes if self.classes is not None else classes
            known = np.unique(y) if given is None else np.asarray(given)
            if len(known) < 2:
                raise ValueError(
                    f"FineTuneClassifier needs at least 2 classes to learn from; y has only one class: {known[0]!r}."
                )
            self.classes_inferred_ = np.unique(known) if self.classes is None else known
        known = self.classes_
        order = np.argsort(known, kind="stable")
        positions = np.clip(np.searchsorted(known[order], y), 0, len(known) - 1)
        encoded = order[positions]
        unseen = known[encoded] != y
        if unseen.any():
            raise ValueError(
                f"y contains labels not among classes_ {known.tolist()!r}: {sorted(set(y[unseen].tolist()))!r}."
            )
        return encoded.astype(np.int64)

    def check_data(self, X, y):
        pass  # validated in fit; skorch's version would overwrite classes_ with codes

    def get_dataset(self, X, y=None):
        if is_dataset(X):
            return X
        return ImageDataset(self._image_source(X, reset=False), ImageTransform(self.data_config_), targets=y)

    def _train_transform(self):
        if self.augment is False:
            return ImageTransform(self.data_config_)
        scale = (0.35, 1.0) if self.augment is True else tuple(self.augment)
        return ImageTransform(self.data_config_, augment=True, scale=scale)

    def _resolved_train_split(self):
        if self.train_split is not None or not self.early_stopping:
            return self.train_split
        return ValidSplit(self.validation_fraction, stratified=True, random_state=self.random_state)

    def get_split_datasets(self, X, y=None, **fit_params):
        dataset = self.get_dataset(X, y)
        split = self._resolved_train_split()
        if split:
            dataset_train, dataset_valid = (
                split(dataset, y, **fit_params) if y is not None else split(dataset, **fit_params)
            )
        else:
            dataset_train, dataset_valid = dataset, None
        return _augmented(dataset_train, self._train_transform()), dataset_valid

    def _loader_batch_size(self, kwargs: dict, n: int) -> int:
        batch_size = kwargs.pop("batch_size", self.batch_size)
        return n if batch_size == -1 else resolve_batch_size(batch_size, self.device_)

    def _drops_last(self, kwargs: dict, n: int, batch_size: int) -> bool:
        # A last batch of one image breaks BatchNorm in training mode.
        return kwargs.get("drop_last", n > batch_size and n % batch_size == 1)

    def _n_train_batches(self, dataset) -> int:
        kwargs = self.get_params_for("iterator_train")
        n = len(dataset)
        batch_size = self._loader_batch_size(kwargs, n)
        return n // batch_size if self._drops_last(kwargs, n, batch_size) else math.ceil(n / batch_size)

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        iterator = getattr(self, prefix)
        n = len(dataset)
        batch_size = self._loader_batch_size(kwargs, n)
        if training:
            kwargs["drop_last"] = self._drops_last(kwargs, n, batch_size)
        num_workers = kwargs.pop("num_workers", self.num_workers)
        shuffle = kwargs.pop("shuffle", training)
        if iterator is DataLoader:
            return make_loader(dataset, batch_size, self.device_, num_workers, shuffle=shuffle, **kwargs)
        kwargs.setdefault("collate_fn", collate_images)
        return iterator(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle, **kwargs)

    # -- training step -------------------------------------------------------

    def infer(self, x, **fit_params):
        x = to_model_input(x, self.device_, channels_last=True)
        with autocast_context(self.device_, self.autocast_dtype_):
            return self.module_(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_pred = y_pred.float()
        if isinstance(self.criterion_, nn.NLLLoss):
            y_pred = torch.log_softmax(y_pred, dim=1)
        return self.criterion_(y_pred, to_tensor(y_true, device=self.device_))

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        (loss if self.grad_scaler_ is None else self.grad_scaler_.scale(loss)).backward()
        return {"loss": loss, "y_pred": y_pred}

    def _step_optimizer(self, step_fn):
        if self.grad_scaler_ is None:
            return super()._step_optimizer(step_fn)
        step_fn()
        for name in self._optimizers:
            self.grad_scaler_.step(getattr(self, name + "_"))
        self.grad_scaler_.update()

    def _set_training(self, training=True):
        super()._set_training(training)
        if not training:
            return
        network = _network(self)
        backbone_frozen = not any(p.requires_grad for p in network.embedder.parameters())
        for module in network.modules():
            if isinstance(module, _BatchNorm):
                params = list(module.parameters(recurse=False))
                if (params and not any(p.requires_grad for p in params)) or (not params and backbone_frozen):
                    module.eval()  # frozen: keep the pretrained running statistics

    # -- fit -----------------------------------------------------------------

    @contextlib.contextmanager
    def _fit_scope(self):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        seeded = self.random_state is not None
        benchmark = torch.backends.cudnn.benchmark
        with torch.random.fork_rng(devices=devices, enabled=seeded):
            if seeded:
                torch.manual_seed(int(self.random_state))
            torch.backends.cudnn.benchmark = torch.cuda.is_available()
            try:
                yield
            finally:
                torch.backends.cudnn.benchmark = benchmark

    def _prepare_fit(self, X, y, reset: bool, classes=None):
        if reset:
            self._check_finetune_params()
        if is_dataset(X) and y is None:
            return X, None  # a Dataset that yields encoded targets itself
        y = self._check_labels(y, reset, classes)
        source = X if is_dataset(X) else self._image_source(X, reset=reset)
        return source, self._encode_labels(y, len(source), reset, classes)

    def fit(self, X, y, **fit_params):
        """Build the network, train it, and fit ``final_estimator`` if set.

        Parameters
        ----------
        X : images
            Any format :class:`PretrainedCNNFeaturizer` accepts, or a torch
            ``Dataset`` yielding ``(image, encoded_label)``.
        y : array-like of shape (n_samples,)
            Labels of any sklearn kind (ints, strings).
        **fit_params : dict
            Passed on to skorch.

        Returns
        -------
        self : FineTuneClassifier
        """
        warm = self.warm_start and self.initialized_
        with self._fit_scope():
            source, y_encoded = self._prepare_fit(X, y, reset=not warm)
            if not warm:
                self.initialize()
            NeuralNet.partial_fit(self, source, y_encoded, _routing_method="fit", **fit_params)
            self._fit_final_estimator(source, y)
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train for ``max_epochs`` more epochs without re-initialising.

        ``classes`` fixes the label set on the first call; later calls must
        use labels from it.
        """
        with self._fit_scope():
            source, y_encoded = self._prepare_fit(X, y, reset=not self.initialized_, classes=classes)
            if not self.initialized_:
                self.initialize()
            NeuralNet.partial_fit(self, source, y_encoded, **fit_params)
            self._fit_final_estimator(source, y)
        return self

    def fit_transform(self, X, y, **fit_params):
        """``fit(X, y)``, then the tuned embeddings of ``X``."""
        return self.fit(X, y, **fit_params).transform(X)

    def _fit_final_estimator(self, source, y):
        if self.final_estimator is None:
            if "final_estimator_" in vars(self):
                del self.final_estimator_
            return
        self.final_estimator_ = clone(self.final_estimator).fit(self.transform(source), np.asarray(y))

    # -- inference -----------------------------------------------------------

    def _forward_source(self, module, X):
        source = self._image_source(X, reset=False)
        dataset = ImageDataset(source, ImageTransform(self.data_config_))
        return forward_batches(
            module,
            dataset,
            batch_size=self.batch_size,
            device=self.device_,
            precision=self.precision,
            num_workers=self.num_workers,
        )

    def transform(self, X):
        """Embeddings of ``X`` from the tuned backbone (hybrid mode).

        Parameters
        ----------
        X : images

        Returns
        -------
        X_embedded : ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self)
        return self._forward_source(_network(self).embedder, X)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : images

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict_proba(self.transform(X))
        if is_dataset(X):
            return super().predict_proba(X)
        logits = torch.from_numpy(self._forward_source(self.module_, X))
        return self._get_predict_nonlinearity()(logits).numpy()

    def predict(self, X):
        """Predicted labels (of the type of ``y``).

        Parameters
        ----------
        X : images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if getattr(self, "final_estimator_", None) is not None:
            return self.final_estimator_.predict(self.transform(X))
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @property
    def backbone_(self):
        return _network(self).embedder

    # -- pickling ------------------------------------------------------------

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("grad_scaler_", None)  # rebuilt for the loading machine's device
        return state

    def __setstate__(self, state):
        requested = state["device"]
        target = torch.device("cpu")
        if "device_" in state:
            try:
                target = resolve_device(requested)
            except ValueError:
                warnings.warn(
                    f"This model asks for device={requested!r}, which this machine lacks; it runs on the CPU.",
                    UserWarning,
                    stacklevel=2,
                )
        state["device"] = str(target)  # what skorch maps the tensors to
        super().__setstate__(state)
        self.device = requested  # the user's parameter, untouched
        if "device_" in state:
            self.device_ = target
            self.grad_scaler_ = self._make_grad_scaler()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        tags.classifier_tags.multi_label = False
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])  # transform(): embeddings
        tags.non_deterministic = self.random_state is None
        return tags
