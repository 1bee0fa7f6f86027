"""LP-FT's first step: fit the new head on frozen embeddings (Kumar et al., ICLR 2022).

A randomly initialised head pushes large, meaningless gradients into the
pretrained layers when they are unfrozen, and distorts the features that made
them worth reusing. Fitting the head first, to convergence, on the frozen
embeddings costs one forward pass of the data (no backward through the
backbone) plus a small convex fit, and then fine-tuning starts from a head
that already agrees with the features.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fit_head"]


def fit_head(
    head: nn.Module,
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    class_weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    C: float = 1.0,
    max_iter: int = 200,
) -> float:
    """Fit ``head`` in place by L-BFGS on ``(embeddings, targets)``; returns the final loss.

    The objective is scikit-learn's ``LogisticRegression`` one divided by
    ``C n``: the (class- and sample-weighted) cross-entropy summed over samples
    plus ``||W||^2 / (2 C)`` on the weight matrices (not the biases), over
    ``n``; so ``C`` and the weights mean what they mean there.
    Dropout is off during the fit (the head is in eval mode, then restored).
    Classes without a sample (``partial_fit(classes=...)``, a ``classes``
    superset) are left out of the softmax: their outputs get no push towards
    minus infinity, only the penalty on their weights.
    """
    device = next(head.parameters()).device
    embeddings = embeddings.detach().float().to(device)
    targets = targets.detach().long().to(device)
    n = len(targets)
    weights = torch.ones(n, device=device) if sample_weight is None else sample_weight.detach().float().to(device)
    if class_weight is not None:
        weights = weights * class_weight.float().to(device)[targets]
    matrices = [p for name, p in head.named_parameters() if p.ndim > 1 and p.requires_grad]
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    was_training = head.training
    head.eval()
    with torch.no_grad():
        n_classes = head(embeddings[:1]).shape[1]
    absent = torch.bincount(targets, minlength=n_classes) == 0

    def objective():
        optimizer.zero_grad()
        logits = head(embeddings)
        if absent.any():  # a class with no sample: out of the softmax, so its bias is not driven to -inf
            logits = logits.masked_fill(absent, float("-inf"))
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        loss = ((losses * weights).sum() + sum((m**2).sum() for m in matrices) / (2 * C)) / n
        loss.backward()
        return loss

    try:
        with torch.enable_grad():
            optimizer.step(objective)
            final = float(objective().detach())
    finally:
        head.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return final
