"""A learning-rate range test (Smith 2017; fastai's ``lr_find``) for skorch nets.

The learning rate grows geometrically from ``start_lr`` to ``end_lr`` over a
few training batches; the loss against the learning rate shows where training
is fastest before it diverges. Everything the test touches is put back: the
module's parameters and buffers (BatchNorm statistics), the optimizer's state
and learning rates, the gradient scaler's state (fp16 on CUDA), the module's
train/eval mode, and torch's random state, so a fit that runs it is the same
fit as one started at the suggested rate.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..exceptions import LRFinderWarning

__all__ = ["LRFinderResult", "lr_range_test", "suggest_lr", "lr_range_test_training"]


@dataclass
class LRFinderResult:
    """The curve of an LR range test and its suggestion.

    ``fallback`` is True where the curve showed no signal and ``suggestion``
    is the default rate the test was given.
    """

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)  # smoothed
    suggestion: float | None = None
    fallback: bool = False

    def as_dict(self) -> dict:
        return {"lrs": list(self.lrs), "losses": list(self.losses), "suggestion": self.suggestion,
                "fallback": self.fallback}


def suggest_lr(
    lrs, losses, *, min_drop: float = 0.2, min_delta: float = 0.01, rise: float = 1.5
) -> float | None:
    """The rate to train at, from a range test's curve (the smoothed losses), or None where it shows nothing.

    The first tenth of the points is skipped (the smoothed loss of a few
    batches is noise), and the curve is cut at its first non-finite loss.
    A change of the loss counts as signal only when it is at least
    ``min_drop`` of the starting level (the median of the next five points)
    and at least ``min_delta`` in absolute terms: a loss already near zero
    (a head that fits the training images) or flat shows nothing to choose
    from, and the noise of such curves picked rates far below any that train.

    Where the loss falls by that much before its minimum: the rate of
    steepest descent (in log-lr) on the way down, fastai's rule for a new
    head. Where it does not but then rises (a head already fitted on the
    features: small rates change little): a tenth of the rate at which the
    loss first exceeds ``rise`` times its best so far and that best plus
    ``min_delta`` (the edge of divergence, Smith's rule). Otherwise, and for
    a curve of fewer than 3 points, None. The result always lies within the
    rates the curve swept.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    bad = np.flatnonzero(~np.isfinite(losses))
    swept = (lrs[0], lrs[-1]) if len(lrs) else None
    end = bad[0] if len(bad) else len(losses)  # a non-finite loss: the divergence edge, at the latest
    skip = max(1, len(lrs) // 10)
    if end - skip < 3:
        return None
    curve, rates = losses[skip:end], lrs[skip:end]
    start = float(np.median(curve[:5]))
    margin = max(min_drop * abs(start), min_delta)
    best = int(np.argmin(curve))
    if best >= 2 and curve[best] < start - margin:
        slopes = np.gradient(curve[: best + 1], np.log(rates[: best + 1]))
        return float(rates[int(np.argmin(slopes))])
    running = np.minimum.accumulate(curve)
    risen = (curve > rise * running) & (curve > running + np.maximum(min_delta, min_drop * np.abs(running)))
    if risen.any():
        edge = rates[int(np.argmax(risen))]
    elif len(bad):
        edge = lrs[bad[0]]
    else:
        return None
    return float(np.clip(edge / 10, *swept))


def lr_range_test(
    net, dataset, *, start_lr=1e-6, end_lr=1.0, num_iter=50, smoothing=0.05, diverge=4.0, default_lr=None
):
    """Run the test on an initialised skorch ``net`` over batches of ``dataset``.

    Each optimizer parameter group keeps its ratio to the net's learning
    rate (``net.lr_`` where the net resolves one, else ``net.lr``), so a
    backbone group at ``lr * backbone_lr_scale`` stays at that scale. Stops
    early when the smoothed loss exceeds ``diverge`` times its best.
    Returns an :class:`LRFinderResult` whose ``suggestion`` (see
    :func:`suggest_lr`) is for that rate. Where the curve shows no signal,
    the suggestion is ``default_lr`` (kept within ``[start_lr, end_lr]``)
    with one :class:`LRFinderWarning`, or None if ``default_lr`` is None.
    """
    module, optimizer = net.module_, net.optimizer_
    saved_module = copy.deepcopy(module.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    scaler = getattr(net, "grad_scaler_", None)  # fp16 on CUDA: diverging steps lower its scale
    saved_scaler = None if scaler is None else copy.deepcopy(scaler.state_dict())
    saved_training = {name: m.training for name, m in module.named_modules()}
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved_rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)
    base_lr = getattr(net, "lr_", net.lr)
    ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
    result = LRFinderResult()
    factor = (end_lr / start_lr) ** (1.0 / max(1, num_iter - 1))
    average, best, step = 0.0, math.inf, 0
    try:
        while step < num_iter:
            for batch in net.get_iterator(dataset, training=True):
                lr = start_lr * factor**step
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = lr * ratio
                loss = float(net.train_step(batch)["loss"].detach())
                average = smoothing * loss + (1 - smoothing) * average
                smoothed = average / (1 - (1 - smoothing) ** (step + 1))  # bias-corrected
                result.lrs.append(lr)
                result.losses.append(smoothed)
                best = min(best, smoothed)
                step += 1
                if step >= num_iter or not math.isfinite(smoothed) or smoothed > diverge * best:
                    step = num_iter
                    break
    finally:
        module.load_state_dict(saved_module)
        optimizer.load_state_dict(saved_optimizer)
        if saved_scaler is not None:
            scaler.load_state_dict(saved_scaler)
        for name, submodule in module.named_modules():
            submodule.train(saved_training[name])
        torch.set_rng_state(saved_rng[0])
        if saved_rng[1] is not None:
            torch.cuda.set_rng_state_all(saved_rng[1])
        optimizer.zero_grad(set_to_none=True)
    result.suggestion = suggest_lr(result.lrs, result.losses)
    if result.suggestion is None and default_lr is not None:
        low, high = min(start_lr, end_lr), max(start_lr, end_lr)
        result.suggestion, result.fallback = float(np.clip(default_lr, low, high)), True
        losses = [loss for loss in result.losses if math.isfinite(loss)]
        seen = f"smoothed losses {min(losses):.3g} to {max(losses):.3g}" if losses else "no finite loss"
        warnings.warn(
            f"The LR range test ({len(result.lrs)} batches, lr {start_lr:g} to {end_lr:g}, {seen}) shows no "
            f"clear fall or rise of the loss (flat, or already near zero): using the default "
            f"lr={result.suggestion:g}. Pass a number as lr to choose it yourself.",
            LRFinderWarning,
            stacklevel=3,
        )
    return result


def lr_range_test_training(net, dataset, frozen: set, **kwargs) -> LRFinderResult:
    """:func:`lr_range_test` with exactly the parameters not in ``frozen`` trainable; the flags are put back."""
    network = getattr(net.module_, "_orig_mod", net.module_)  # through torch.compile
    flags = {name: p.requires_grad for name, p in network.named_parameters()}
    try:
        for name, param in network.named_parameters():
            param.requires_grad_(name not in frozen)
        return lr_range_test(net, dataset, **kwargs)
    finally:
        for name, param in network.named_parameters():
            param.requires_grad_(flags[name])
