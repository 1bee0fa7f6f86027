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
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["LRFinderResult", "lr_range_test"]


@dataclass
class LRFinderResult:
    """The curve of an LR range test and its suggestion."""

    lrs: list = field(default_factory=list)
    losses: list = field(default_factory=list)  # smoothed
    suggestion: float | None = None

    def as_dict(self) -> dict:
        return {"lrs": list(self.lrs), "losses": list(self.losses), "suggestion": self.suggestion}


def suggest_lr(lrs, losses, descent: float = 0.25, rise: float = 1.5) -> float | None:
    """The rate to train at, from a range test's curve (the smoothed losses).

    The first tenth of the points is skipped (the smoothed loss of a few
    batches is noise). Where the loss then falls by more than ``descent`` of
    its starting level (the median of the next five points) before its
    minimum: the rate of steepest descent (in log-lr), fastai's rule for a new
    head. Where it does not (a head already fitted on the features, so that
    small rates change little): a tenth of the rate at which the loss first
    exceeds ``rise`` times its best so far (the edge of divergence, Smith's
    rule), or a tenth of the largest rate tried if it never does. None for a
    curve of fewer than 3 points or with no finite loss.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) < 3 or not np.isfinite(losses).any():
        return None
    skip = max(1, len(lrs) // 10)
    lrs, losses = lrs[skip:], losses[skip:]
    finite = np.where(np.isfinite(losses), losses, np.inf)
    best = int(np.argmin(finite))
    if best >= 2 and finite[best] < (1 - descent) * np.median(finite[:5]):
        slopes = np.gradient(losses[: best + 1], np.log(lrs[: best + 1]))
        return float(lrs[int(np.argmin(slopes))])
    diverged = np.flatnonzero(finite > rise * np.minimum.accumulate(finite))
    edge = lrs[diverged[0]] if len(diverged) else lrs[-1]
    return float(edge / 10)


def lr_range_test(net, dataset, *, start_lr=1e-6, end_lr=1.0, num_iter=50, smoothing=0.05, diverge=4.0):
    """Run the test on an initialised skorch ``net`` over batches of ``dataset``.

    Each optimizer parameter group keeps its ratio to the net's learning
    rate (``net.lr_`` where the net resolves one, else ``net.lr``), so a
    backbone group at ``lr * backbone_lr_scale`` stays at that scale. Stops
    early when the smoothed loss exceeds ``diverge`` times its best.
    Returns an :class:`LRFinderResult` whose ``suggestion`` is for that rate.
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
    return result
