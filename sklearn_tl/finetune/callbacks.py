"""Training callbacks: what trains when, at which learning rate, and which epoch's weights are kept.

They are ordinary skorch callbacks whose settings are constructor arguments,
so they work on any skorch net; :class:`~sklearn_tl.FineTuneClassifier`
creates them from its ``freeze``, ``unfreeze_after`` and ``lr_schedule``
parameters in ``initialize()``, and always adds :class:`KeepBestEpoch`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skorch.callbacks import Callback
from torch import nn

from .freeze import resolve_freeze

__all__ = ["FreezeSchedule", "KeepBestEpoch", "PhaseCosineLR", "unwrapped_module"]


def unwrapped_module(net) -> nn.Module:
    """The net's module, looking through ``torch.compile``."""
    return getattr(net.module_, "_orig_mod", net.module_)


class FreezeSchedule(Callback):
    """Keep ``frozen`` fixed; for the first ``unfreeze_after`` epochs, also every ``prefix`` parameter.

    Sets ``requires_grad`` at the start of every epoch from the epoch's
    number in the history, so ``partial_fit`` continues where ``fit``
    stopped. Records the number of trainable parameters in the history as
    ``trainable``.

    Parameters
    ----------
    frozen : sequence of str, default=()
        Names of the module's parameters that never train (besides those ``freeze`` selects).
    unfreeze_after : int, default=0
        Number of first epochs in which every parameter whose name starts
        with ``prefix`` is frozen too (head-only training).
    prefix : str, default="embedder."
        The parameters frozen during the first phase (the backbone's).
    freeze : None, "none", "backbone", int, float or list of str, default=None
        A freeze spec (:func:`~sklearn_tl.finetune.freeze.resolve_freeze`) of a
        :class:`~sklearn_tl.finetune.network.FineTuneNetwork`, resolved against
        the net's module each time it is used (as skorch's ``Freezer`` resolves
        its patterns), so the callback needs nothing from the net's start-up.
    """

    def __init__(self, frozen=(), unfreeze_after=0, prefix="embedder.", freeze=None):
        self.frozen = frozen
        self.freeze = freeze
        self.unfreeze_after = unfreeze_after
        self.prefix = prefix

    def frozen_in(self, network: nn.Module, epoch: int) -> set:
        """Names of the parameters of ``network`` that epoch ``epoch`` (1-based) keeps fixed."""
        if epoch <= self.unfreeze_after:
            return {n for n, _ in network.named_parameters() if n.startswith(self.prefix)}
        # Callbacks pickled by 0.1 have no ``freeze``: their ``frozen`` holds the resolved names.
        return set(self.frozen) | set(resolve_freeze(getattr(self, "freeze", None), network))

    def on_epoch_begin(self, net, **kwargs):
        network = unwrapped_module(net)
        frozen = self.frozen_in(network, len(net.history))  # 1-based: the row of this epoch exists
        trainable = 0
        for name, param in network.named_parameters():
            param.requires_grad_(name not in frozen)
            trainable += 0 if name in frozen else param.numel()
        net.history.record("trainable", trainable)


class PhaseCosineLR(Callback):
    """Per-batch learning rate: linear warm-up, then cosine decay, in each phase.

    The phases are the first ``phase_epochs`` epochs (head-only training)
    and the rest of the call to ``fit`` / ``partial_fit``; each gets its own
    cycle, so newly unfrozen layers start with a warm-up. Every parameter
    group is scaled from its own base learning rate, which keeps
    discriminative rates. The steps per epoch are the batches of the net's
    training iterator.

    Parameters
    ----------
    warmup_fraction : float, default=0.1
        Fraction of each phase's steps spent warming up linearly.
    final_factor : float, default=0.01
        The learning rate at the end of a phase, relative to the base.
    phase_epochs : int, default=0
        Length of the first phase in epochs; 0 is one phase.
    """

    BASE_KEY = "sklearn_tl_base_lr"

    def __init__(self, warmup_fraction=0.1, final_factor=0.01, phase_epochs=0):
        self.warmup_fraction = warmup_fraction
        self.final_factor = final_factor
        self.phase_epochs = phase_epochs

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
        per_epoch = max(1, len(net.get_iterator(dataset_train, training=True)))
        boundary = self.phase_epochs
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


class KeepBestEpoch(Callback):
    """With a validation split: keep the weights of the best of {the starting point, each epoch}.

    The starting point (epoch 0 of ``fit``: the LP-FT probe head on the
    pretrained backbone; the weights before the call for ``partial_fit``) is
    scored on the validation split before the first batch, every epoch by
    its ``valid_loss``, and the module's parameters and buffers of the best
    one are kept in memory (never on disk) and loaded back at
    ``on_train_end``, like skorch's ``Checkpoint(load_best=True)`` with the
    start as a candidate. So training never ends worse, on the validation
    images, than where it started. The optimizer's state is not restored.

    Without a validation split (``train_split=None``) it does nothing and the
    last epoch is kept: scored on the training images themselves, the probe
    head (fitted to convergence on exactly those images) stays ahead of
    epochs that generalise far better, and augmented views of them keep
    epochs far below the probe (both measured: benchmarks/README.md).

    The kept epoch is in ``net.best_epoch_`` (an int: the epoch number in
    the history, or the number of the last epoch before this call, 0 for
    the start of ``fit``) and, with a split, in the last history row as
    ``best_epoch``.
    """

    def on_train_begin(self, net, **kwargs):
        self._start = len(net.history)  # epochs before this call: the starting point's number
        self._best = None

    def _consider(self, net, epoch: int, loss: float):
        if math.isfinite(loss) and (self._best is None or loss < self._best[1]):
            state = {k: v.detach().clone() for k, v in unwrapped_module(net).state_dict().items()}
            self._best = (epoch, loss, state)

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        if self._best is not None or dataset_valid is None or len(net.history) != self._start + 1:
            return
        # Scoring must not move torch's random stream (the loader draws a seed): the fit is the fit without it.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            total, count = 0.0, 0
            for batch in net.get_iterator(dataset_valid, training=False):
                y_pred = net.evaluation_step(batch, training=False)
                total += float(net.get_loss(y_pred, batch[1], X=batch[0], training=False)) * len(batch[1])
                count += len(batch[1])
        self._consider(net, self._start, total / max(1, count))

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        if dataset_valid is not None:
            self._consider(net, len(net.history), float(net.history[-1, "valid_loss"]))

    def on_train_end(self, net, **kwargs):
        best, self._best = self._best, None  # the kept weights are not pickled with the callback
        net.best_epoch_ = len(net.history) if best is None else int(best[0])
        if best is None:
            return
        if best[0] != len(net.history):
            unwrapped_module(net).load_state_dict(best[2])
        net.history.record("best_epoch", int(best[0]))


def valid_accuracy(net, X, y):
    """Accuracy on the encoded validation targets, subset accuracy for multilabel ones (works with skorch's caching)."""
    logits = net.forward(X)
    y = np.asarray(y if not isinstance(y, torch.Tensor) else y.cpu().numpy())
    if y.ndim == 2:  # multilabel: the share of images with every label right (sklearn's accuracy_score)
        return float(np.mean(((logits > 0).cpu().numpy() == (y > 0.5)).all(axis=1)))
    return float(np.mean(logits.argmax(1).cpu().numpy() == y.reshape(-1)))
