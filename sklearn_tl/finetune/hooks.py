"""How the fine-tuner trains on images: skorch's data, label, device, precision and optimizer hooks.

:class:`ImageTrainingMixin` overrides the skorch ``NeuralNet`` methods that
decide where and how a batch is trained: the image dataset (augmented for
training only), loaders that never leave a BatchNorm a last batch of one,
autocast with a gradient scaler whose gradients are unscaled before callbacks
see them, BatchNorm statistics of frozen layers kept, and the pretrained
layers' own learning rate; inference on the device ``device`` names at call time, and
pickles that load on a machine without the training device. What it needs from the
estimator is stated as data (``hook_parameters``, ``hook_resolved``,
``hook_methods``) and checked where training and inference start.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
from skorch.dataset import ValidSplit, unpack_data
from skorch.utils import is_dataset, to_tensor
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from ..data.dataset import ImageDataset, collate_images, with_transform
from ..data.transforms import ImageTransform
from ..runtime.device import autocast_context, resolve_batch_size, resolve_device, to_model_input
from ..runtime.forward import make_loader
from .callbacks import unwrapped_module
from .freeze import BACKBONE_PREFIX

__all__ = ["AUTO_MAX_STEPS", "AUTO_MIN_VALID", "ImageTrainingMixin"]

#: ``train_split="auto"`` holds images out of runs with fewer optimisation steps than this.
AUTO_MAX_STEPS = 50
#: The fewest validation images ``train_split="auto"`` holds out; with fewer, none.
AUTO_MIN_VALID = 10


class ImageTrainingMixin:
    """skorch ``NeuralNet`` hooks for training an image network (mixed in before the net class)."""

    #: The estimator's parameters these hooks read.
    hook_parameters = (
        "augment",
        "backbone_lr_scale",
        "batchnorm_stats",
        "early_stopping",
        "num_workers",
        "validation_fraction",
        "weights",
    )
    #: What the estimator resolves in ``initialize()``, before any hook runs.
    hook_resolved = ("autocast_dtype_", "data_config_", "device_", "grad_scaler_", "lr_")
    #: The estimator's own methods these hooks call.
    hook_methods = ("_image_source", "_stratified_split")

    def _check_hook_attributes(self) -> None:
        """Fail with the missing names when the estimator lacks what these hooks read."""
        stated = (*self.hook_parameters, *self.hook_resolved, *self.hook_methods)
        missing = [name for name in stated if not hasattr(self, name)]
        if missing:
            raise AttributeError(
                f"{type(self).__name__} mixes in ImageTrainingMixin but has no {', '.join(missing)}: the hooks "
                f"need the parameters {self.hook_parameters}, {self.hook_resolved} resolved in initialize(), "
                f"and the methods {self.hook_methods}."
            )

    def _make_grad_scaler(self):
        if self.device_.type == "cuda" and self.autocast_dtype_ == torch.float16:
            return torch.amp.GradScaler("cuda")
        return None

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
        modules = [unwrapped_module(self)] + [getattr(self, name + "_") for name in self._criteria]
        for module in modules:
            for name, param in getattr(module, "named_parameters", lambda: [])():
                if param not in seen:
                    seen.add(param)
                    yield name, param

    def get_params_for_optimizer(self, prefix, named_parameters):
        """skorch's parameter groups, plus the pretrained layers at ``lr * backbone_lr_scale``."""
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer" and kwargs.get("lr") == "auto":
            kwargs["lr"] = self.lr_  # lr="auto": the range test's rate (a placeholder until it has run)
        if prefix != "optimizer" or self.backbone_lr_scale == 1:
            return args, kwargs
        groups = args[0]
        if groups and set(groups[-1]) == {"params"}:
            rest = groups.pop()  # skorch's group of the parameters no user group claimed
            network = unwrapped_module(self)
            backbone_ids = {id(p) for n, p in network.named_parameters() if n.startswith(BACKBONE_PREFIX)}
            pretrained = [p for p in rest["params"] if id(p) in backbone_ids]
            others = [p for p in rest["params"] if id(p) not in backbone_ids]
            if pretrained:
                groups.append({"params": pretrained, "lr": kwargs["lr"] * self.backbone_lr_scale})
            if others:
                groups.append({"params": others})
        return args, kwargs

    def get_dataset(self, X, y=None):
        if is_dataset(X):
            return X
        return ImageDataset(self._image_source(X, reset=False), ImageTransform(self.data_config_), targets=y)

    def _train_transform(self):
        return ImageTransform(self.data_config_, augment=self.augment)

    def _resolved_train_split(self, y=None, n_samples=None):
        """skorch's split: ``train_split`` itself, or a ``validation_fraction`` hold-out.

        The hold-out is made for ``early_stopping`` when ``train_split`` is
        None, and for ``train_split="auto"`` when :meth:`_holds_out` says the
        data allow one (else no image is held out).
        """
        auto = isinstance(self.train_split, str)
        if not auto and (self.train_split is not None or not self.early_stopping):
            return self.train_split
        if auto and not self.early_stopping and not self._holds_out(y, n_samples):
            return None
        seed = getattr(self, "_fit_seed", None)
        return ValidSplit(self.validation_fraction, stratified=self._stratified_split, random_state=seed)

    def _holds_out(self, y, n_samples) -> bool:
        """``train_split="auto"``: hold out images in a short ``fit`` only, and only when the split can be made.

        Short: fewer than ``AUTO_MAX_STEPS`` optimisation steps in the run
        (``max_epochs`` times the training batches of all ``n_samples``),
        where training was measured to end below its probe head. At least
        ``AUTO_MIN_VALID`` validation images, and, stratified, one of each
        class in both parts (every class twice in ``y``).
        """
        if not getattr(self, "_fit_auto_split", False) or y is None or not n_samples:
            return False
        batch_size = self._loader_batch_size(self.get_params_for("iterator_train"), n_samples)
        if self.max_epochs * math.ceil(n_samples / batch_size) >= AUTO_MAX_STEPS:
            return False
        n_valid = math.ceil(self.validation_fraction * n_samples)
        if n_valid < AUTO_MIN_VALID or n_samples - n_valid < 1:
            return False
        if self._stratified_split:
            counts = np.unique(np.asarray(y), return_counts=True)[1]
            return n_valid >= len(counts) and n_samples - n_valid >= len(counts) and counts.min() >= 2
        return True

    def get_split_datasets(self, X, y=None, **fit_params):
        self._check_hook_attributes()
        pending = self.__dict__.pop("_fit_split", None)
        if pending is not None:
            return pending  # this fit's split, already made (the head fit and LR test used it)
        dataset = self.get_dataset(X, y)
        split = self._resolved_train_split(y, len(dataset))
        if split:
            dataset_train, dataset_valid = (
                split(dataset, y, **fit_params) if y is not None else split(dataset, **fit_params)
            )
        else:
            dataset_train, dataset_valid = dataset, None
        return with_transform(dataset_train, self._train_transform()), dataset_valid

    def _loader_batch_size(self, kwargs: dict, n: int) -> int:
        batch_size = kwargs.pop("batch_size", self.batch_size)
        return n if batch_size == -1 else resolve_batch_size(batch_size, self.device_)

    def _drops_last(self, kwargs: dict, n: int, batch_size: int) -> bool:
        # A last batch of one image breaks BatchNorm in training mode.
        return kwargs.get("drop_last", n > batch_size and n % batch_size == 1)

    def get_iterator(self, dataset, training=False):
        self._check_hook_attributes()
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

    def infer(self, x, **fit_params):
        if isinstance(x, dict):  # {"image", "sample_weight"}: the weights are for get_loss
            x = x["image"]
        x = to_model_input(x, self.device_, channels_last=True)
        with autocast_context(self.device_, self.autocast_dtype_):
            return self.module_(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        if not isinstance(X, dict):
            y_pred, y_true = self._loss_inputs(y_pred, y_true)
            return self.criterion_(y_pred, y_true)
        # Weighted (class_weight / sample_weight): the mean of the weighted per-sample losses.
        return self.image_losses(y_pred, y_true, X=X).mean()

    def _loss_inputs(self, y_pred, y_true):
        y_pred = y_pred.float()
        if isinstance(self.criterion_, nn.NLLLoss):
            y_pred = torch.log_softmax(y_pred, dim=1)
        return y_pred, to_tensor(y_true, device=self.device_)

    def image_losses(self, y_pred, y_true, X=None):
        """One loss per image (weighted when ``X`` carries weights); None for a criterion without ``reduction``."""
        if not hasattr(self.criterion_, "reduction"):
            return None
        y_pred, y_true = self._loss_inputs(y_pred, y_true)
        criterion = copy.copy(self.criterion_)  # the fitted criterion is not changed
        criterion.reduction = "none"
        losses = criterion(y_pred, y_true)
        losses = losses.reshape(len(losses), -1).mean(dim=1)  # one loss per image, also for several outputs
        if isinstance(X, dict):
            losses = losses * X["sample_weight"].to(losses.device)
        return losses

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if self.grad_scaler_ is None:
            loss.backward()
        else:
            self.grad_scaler_.scale(loss).backward()
            for name in self._optimizers:  # before on_grad_computed: callbacks (clipping) see true gradients
                self.grad_scaler_.unscale_(getattr(self, name + "_"))
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
        network = unwrapped_module(self)
        backbone_frozen = not any(p.requires_grad for p in network.embedder.parameters())
        pretrained = {id(m) for m in network.embedder.modules()} if self._batchnorm_frozen() else set()
        for module in network.modules():
            if isinstance(module, _BatchNorm) and id(module) in pretrained:
                module.eval()  # normalise with the pretrained statistics, as the head was fitted on them
            elif isinstance(module, _BatchNorm):
                params = list(module.parameters(recurse=False))
                if (params and not any(p.requires_grad for p in params)) or (not params and backbone_frozen):
                    module.eval()  # frozen: keep the pretrained running statistics

    def _batchnorm_frozen(self) -> bool:
        """``batchnorm_stats`` resolved: "auto" keeps pretrained statistics, and random init has none to keep."""
        if self.batchnorm_stats == "auto":
            return self.weights is not None
        return self.batchnorm_stats == "frozen"

    def check_data(self, X, y):
        pass  # validated in fit; skorch's version would overwrite classes_ with codes

    # -- devices ---------------------------------------------------------------

    def _inference_device(self) -> torch.device:
        """The device ``device`` names now (not the training one), or the CPU for a loaded model's missing one."""
        if "_missing_device" in self.__dict__ and self.device == self._missing_device:
            return torch.device("cpu")
        return resolve_device(self.device)

    def _device_on_load(self, requested, fitted: bool) -> tuple[torch.device, bool]:
        """``(device to load onto, whether the requested one is missing)`` for a model being loaded."""
        if not fitted:
            return torch.device("cpu"), False
        try:
            return resolve_device(requested), False
        except ValueError:
            warnings.warn(
                f"This model asks for device={requested!r}, which this machine lacks; it runs on the CPU.",
                UserWarning,
                stacklevel=3,
            )
            return torch.device("cpu"), True

    def _set_loaded_device(self, requested, target: torch.device, missing: bool, fitted: bool) -> None:
        self.device = requested  # the user's parameter, untouched
        if missing:
            self._missing_device = requested  # inference falls back to the CPU while device is this
        if fitted:
            self.device_ = target
            self.grad_scaler_ = self._make_grad_scaler()

    def _restore_device(self, requested, fitted: bool) -> None:
        """After a data state is set: the device (and grad scaler) the loaded model runs on."""
        self._set_loaded_device(requested, *self._device_on_load(requested, fitted), fitted)

    def __setstate__(self, state):
        # The pickles of sklearn_tl 0.1 (skorch's state); newer files hold data (see _state.py).
        requested = state["device"]
        fitted = "device_" in state
        target, missing = self._device_on_load(requested, fitted)
        state["device"] = str(target)  # what skorch maps the tensors to
        super().__setstate__(state)
        self._set_loaded_device(requested, target, missing, fitted)
