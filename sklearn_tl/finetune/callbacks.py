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
    pretrained backbone; the weights before the call for ``partial_fit``) and
    every epoch are scored on the validation split, one loss per image (the
    net's criterion without reduction; a criterion without a ``reduction``
    setting is scored by its mean). The epoch with the lowest mean loss is
    kept only if it beats the start by more than ``margin`` standard errors
    of the paired per-image differences; otherwise the start is kept. So
    training never ends worse, on the validation images, than where it
    started, and a handful of validation images cannot trade a good start
    for a noisy one. The weights are kept in memory (never on disk) and
    loaded back at ``on_train_end``, like skorch's
    ``Checkpoint(load_best=True)`` with the start as a candidate. The
    optimizer's state is not restored.

    Without a validation split it does nothing and the last epoch is kept.

    Parameters
    ----------
    margin : float, default=1.0
        Standard errors by which the best epoch's mean validation loss must
        be below the start's (paired, per image); 0 keeps the lowest mean.

    The kept epoch is in ``net.best_epoch_`` (an int: the epoch number in
    the history, or the number of the last epoch before this call, 0 for
    the start of ``fit``) and, with a split, in the last history row as
    ``best_epoch``.
    """

    def __init__(self, margin=1.0):
        self.margin = margin

    def on_train_begin(self, net, **kwargs):
        self._start = len(net.history)  # epochs before this call: the starting point's number
        self._first = self._best = None
        self._epoch = []

    @staticmethod
    def _state(net) -> dict:
        return {k: v.detach().clone() for k, v in unwrapped_module(net).state_dict().items()}

    @staticmethod
    def _batch_losses(net, y_pred, batch) -> np.ndarray:
        """One validation loss per image of a batch (the batch's mean for a criterion that cannot give them)."""
        per_image = getattr(net, "image_losses", None)
        values = None if per_image is None else per_image(y_pred, batch[1], X=batch[0])
        if values is None:
            loss = float(net.get_loss(y_pred, batch[1], X=batch[0], training=False))
            values = torch.full((len(batch[1]),), loss)
        return values.detach().float().cpu().numpy().reshape(-1)

    def _losses(self, net, dataset_valid) -> np.ndarray:
        """The starting point's validation losses: a pass of its own, before the first batch."""
        # Scoring must not move torch's random stream (the loader draws a seed): the fit is the fit without it.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            losses = [self._batch_losses(net, net.evaluation_step(batch, training=False), batch)
                      for batch in net.get_iterator(dataset_valid, training=False)]
        return np.concatenate(losses) if losses else np.empty(0)

    def _consider(self, net, epoch: int, losses: np.ndarray):
        loss = float(losses.mean()) if len(losses) else math.nan
        if not math.isfinite(loss):
            return
        if epoch == self._start:
            self._first = (epoch, loss, self._state(net), losses)
        elif self._best is None or loss < self._best[1]:
            self._best = (epoch, loss, self._state(net), losses)

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        self._epoch = []
        if dataset_valid is not None and len(net.history) == self._start + 1:  # the first epoch: score the start
            self._consider(net, self._start, self._losses(net, dataset_valid))

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        if not training and y_pred is not None:  # the epoch's own validation pass, image by image
            self._epoch.append(self._batch_losses(net, y_pred, batch))

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        if dataset_valid is not None and self._epoch:
            self._consider(net, len(net.history), np.concatenate(self._epoch))
        self._epoch = []

    def _beats_start(self, best, first) -> bool:
        if best is None:
            return False
        if first is None:
            return True
        if len(best[3]) != len(first[3]):  # not the same images: compare the means
            return best[1] < first[1]
        diff = best[3] - first[3]
        if diff.mean() >= 0:
            return False
        spread = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
        return float(diff.mean()) + self.margin * spread < 0

    def on_train_end(self, net, **kwargs):
        first, best, self._first, self._best, self._epoch = self._first, self._best, None, None, []  # not pickled
        kept = best if self._beats_start(best, first) else first
        net.best_epoch_ = len(net.history) if kept is None else int(kept[0])
        if kept is None:
            return
        if kept[0] != len(net.history):
            unwrapped_module(net).load_state_dict(kept[2])
        net.history.record("best_epoch", int(kept[0]))


def valid_accuracy(net, X, y):
    """Accuracy on the encoded validation targets, subset accuracy for multilabel ones (works with skorch's caching)."""
    logits = net.forward(X)
    y = np.asarray(y if not isinstance(y, torch.Tensor) else y.cpu().numpy())
    if y.ndim == 2:  # multilabel: the share of images with every label right (sklearn's accuracy_score)
        return float(np.mean(((logits > 0).cpu().numpy() == (y > 0.5)).all(axis=1)))
    return float(np.mean(logits.argmax(1).cpu().numpy() == y.reshape(-1)))
