"""LP-FT's first step: fit the new head on frozen embeddings (Kumar et al., ICLR 2022).

A randomly initialised head pushes large, meaningless gradients into the
pretrained layers when they are unfrozen, and distorts the features that made
them worth reusing. Fitting the head first, to convergence, on the frozen
embeddings costs one forward pass of the data (no backward through the
backbone) plus a small convex fit, and then fine-tuning starts from a head
that already agrees with the features.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.dataset import ImageDataset, KeyedImage, with_transform
from ..data.transforms import ImageTransform
from ..models.build import _probe_widths
from ..runtime.forward import forward_batches

__all__ = ["LOSSES", "fit_head", "frozen_embeddings"]

LOSSES = ("cross_entropy", "binary_cross_entropy", "squared_error")


def fit_head(
    head: nn.Module,
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "cross_entropy",
    class_weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    C: float = 1.0,
    alpha: float = 1.0,
    max_iter: int = 200,
) -> float:
    """Fit ``head`` in place by L-BFGS on ``(embeddings, targets)``; returns the final loss.

    The objective is scikit-learn's, divided by the number of samples ``n``
    (which moves no minimum), with the penalty on the weight matrices only
    (not the biases), so ``C``, ``alpha`` and the weights mean what they mean
    there:

    - ``"cross_entropy"`` (class indices): ``LogisticRegression(C)``'s
      multinomial objective, the (class- and sample-weighted) cross-entropy
      summed over samples plus ``||W||^2 / (2 C)``.
    - ``"binary_cross_entropy"`` (a 0/1 indicator matrix): one
      ``LogisticRegression(C)`` per label column, as ``OneVsRestClassifier``
      fits them (for a linear head the sum separates into those fits); a
      label's positives weigh ``pos_weight``, its negatives 1.
    - ``"squared_error"`` (continuous targets, one column per output):
      ``Ridge(alpha)``, the weighted squared error plus ``alpha ||W||^2``.

    Dropout is off during the fit (the head is in eval mode, then restored).
    Classes without a sample (``partial_fit(classes=...)``, a ``classes``
    superset) are left out of the softmax: their outputs get no push towards
    minus infinity, only the penalty on their weights.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}.")
    device = next(head.parameters()).device
    embeddings = embeddings.detach().float().to(device)
    targets = targets.detach().to(device)
    targets = targets.long() if loss == "cross_entropy" else targets.float().reshape(len(targets), -1)
    n = len(targets)
    weights = torch.ones(n, device=device) if sample_weight is None else sample_weight.detach().float().to(device)
    if class_weight is not None:
        weights = weights * class_weight.float().to(device)[targets]
    if pos_weight is not None:
        pos_weight = pos_weight.float().to(device)
    strength = alpha if loss == "squared_error" else 1 / (2 * C)  # of the penalty on ||W||^2
    matrices = [p for name, p in head.named_parameters() if p.ndim > 1 and p.requires_grad]
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    was_training = head.training
    head.eval()
    absent = None
    if loss == "cross_entropy":
        with torch.no_grad():
            n_classes = head(embeddings[:1]).shape[1]
        absent = torch.bincount(targets, minlength=n_classes) == 0

    def per_sample(outputs):
        if loss == "squared_error":
            return ((outputs - targets) ** 2).sum(dim=1)
        if loss == "binary_cross_entropy":
            return nn.functional.binary_cross_entropy_with_logits(
                outputs, targets, pos_weight=pos_weight, reduction="none"
            ).sum(dim=1)
        if absent.any():  # a class with no sample: out of the softmax, so its bias is not driven to -inf
            outputs = outputs.masked_fill(absent, float("-inf"))
        return nn.functional.cross_entropy(outputs, targets, reduction="none")

    def objective():
        optimizer.zero_grad()
        losses = per_sample(head(embeddings))
        value = ((losses * weights).sum() + strength * sum((m**2).sum() for m in matrices)) / n
        value.backward()
        return value

    try:
        with torch.enable_grad():
            optimizer.step(objective)
            final = float(objective().detach())
    finally:
        head.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return final


def _image_dataset_parts(dataset):
    """``(ImageDataset, indices)`` of one of ours or a ``Subset`` of one; None for other datasets."""
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, ImageDataset):
        if dataset.dataset.targets is not None:
            return dataset.dataset, np.asarray(dataset.indices)
    if isinstance(dataset, ImageDataset) and dataset.targets is not None:
        return dataset, np.arange(len(dataset))
    return None


class _Labelled(torch.utils.data.Dataset):
    """The images of an ``(image, target)`` dataset, each keyed by its ``(target, weight)``.

    The key comes back with the image's row from :func:`forward_batches`, also
    through DataLoader workers, so the head fit gets targets in row order
    without loading any image twice.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, target = self.dataset[index]
        weight = 1.0
        if isinstance(image, dict):
            image, weight = image["image"], image["sample_weight"]
        return KeyedImage(image, (np.asarray(target), float(weight)))


def frozen_embeddings(embedder, dataset_train, data_config, *, batch_size, device, precision, num_workers,
                      store=None, fingerprint=None, backbone=None):
    """``(embeddings, targets, weights)`` of a training dataset, for the head fit: one forward pass, no grad.

    Parameters
    ----------
    embedder : ImageEmbedder
    dataset_train : Dataset
        ``(image, target)`` items (an :class:`ImageDataset`, a ``Subset`` of one, or any other).
    data_config : DataConfig
        The evaluation transform replaces the training augmentation.
    batch_size : callable
        ``n_images -> batch size`` of the forward pass.
    device, precision, num_workers :
        As :func:`~sklearn_tl.runtime.forward.forward_batches` takes them.
    store : EmbeddingCache or None
        With an :class:`ImageDataset` (or a Subset of one), rows of its whole
        source are looked up and stored, so other folds and fits reuse them.
    fingerprint : callable
        ``width -> runtime fingerprint`` of ``embedder`` (with ``store``).
    backbone :
        Named in the error of a backbone that fails on a probe image.
    """
    plain = with_transform(dataset_train, ImageTransform(data_config))

    def embed(images, on_batch=None):
        return forward_batches(embedder, images, batch_size=batch_size(len(images)), device=device,
                               precision=precision, num_workers=num_workers, on_batch=on_batch)

    parts = _image_dataset_parts(plain)
    if store is not None and parts is not None:
        dataset, indices = parts  # rows of the whole source, so other folds and fits reuse them
        keyed = ImageDataset(dataset.source, dataset.transform, keyed=True)
        width = sum(_probe_widths(embedder, data_config, backbone))
        rows = store.embed(dataset.source, lambda todo: torch.utils.data.Subset(keyed, todo), fingerprint(width),
                           width, embed)
        embeddings = rows[indices]
        targets = torch.as_tensor(np.asarray(dataset.targets)[indices])
        weights = None if dataset.weights is None else torch.as_tensor(dataset.weights[indices])
    else:
        labels = []
        embeddings = embed(_Labelled(plain), on_batch=lambda positions, rows, keys: labels.extend(keys))
        targets, weights = (torch.as_tensor(np.stack(column)) for column in zip(*labels))
    return torch.from_numpy(embeddings), targets, weights
