"""This module contains the docstring parts the fine-tuners share."""

from __future__ import annotations

from .base import shared_docs

__all__ = ["finetune_docs"]

_FINETUNE_DOCS = {
    "training_params": """\
    freeze : None, "none", "backbone", int, float or list of str, default=None
        What stays fixed for the whole training: nothing (full fine-tune),
        the whole backbone (only the head trains), the first N blocks, a
        fraction of the blocks from the input, or the modules / parameters
        whose names match any of the fnmatch patterns (names as in the
        original network, e.g. ``["features.0*", "features.1.*"]``). Frozen
        BatchNorm layers keep their running statistics.
    unfreeze_after : int, default=0
        The whole backbone stays frozen for this many epochs (the head trains
        alone by gradient descent), then the layers not selected by
        ``freeze`` are unfrozen. 0 trains them from the first epoch, the
        LP-FT recipe once ``head_init="probe"`` has fitted the head.
        ``head_init="random", unfreeze_after=1`` is the recipe of v1.
    head_init : {"probe", "random"}, default="probe"
        ``"probe"``: before the first epoch, fit the new head by L-BFGS on
        the frozen embeddings of the training images, with scikit-learn's
        objective of the task (``LogisticRegression(C=1)``, one-vs-rest for
        multilabel ``y``; ``Ridge(alpha=1)`` for the regressor), weighted by
        ``class_weight`` and ``sample_weight``; it costs one featurization and a linear fit,
        and fine-tuning then starts from a head that agrees with the
        features instead of pushing random gradients into them. With
        ``max_epochs=0`` the fitted model is that linear probe. ``"random"``:
        the head's random initialisation.
    batchnorm_stats : {"auto", "frozen", "update"}, default="auto"
        ``"frozen"``: BatchNorm layers normalise with their pretrained running
        statistics while training too (their scale and shift still learn),
        Keras's advice for fine-tuning and what keeps the features the head
        was fitted on: in training mode, batch statistics of images far from
        ImageNet shift every feature at the first step (measured on upscaled
        digits: a first-epoch loss of 4.4 against 1.0, and 0.79 against 0.93
        test accuracy after 4 epochs). Frozen statistics want the small
        backbone rate of the default ``backbone_lr_scale``: at the head's
        rate the network diverges. ``"update"``: training-mode batch
        statistics and updated running statistics in the layers that train
        (v1); frozen layers keep theirs either way. ``"auto"``: ``"frozen"``
        with pretrained weights, ``"update"`` with ``weights=None`` (random
        initialisation has no statistics worth keeping).
    head : None, int, sequence of int, callable or torch.nn.Module, default=None
        The new head: None is one linear layer; ints are hidden widths
        (each followed by ReLU); a callable ``head(n_features, n_outputs)``
        or a module mapping ``(N, n_features)`` to ``(N, n_outputs)`` (class
        logits, or standardised targets for the regressor).
    dropout : float, default=0.2
        Dropout before each linear layer of a built head.
    backbone_lr_scale : float, default=0.1
        The pretrained layers learn at ``lr * backbone_lr_scale``
        (discriminative learning rates); the head learns at ``lr``. Groups
        given in ``optimizer__param_groups`` take precedence.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"``: :class:`PhaseCosineLR` (callback ``lr_schedule``);
        ``"constant"``: no schedule (add your own ``LRScheduler`` callback).
    augment : {"auto", "light", "standard"}, bool, tuple of float or callable, default="auto"
        Training augmentation (never when predicting). ``"auto"``: random
        crops keeping 70-100 % of the image's area (aspect 0.9-1.1) and no
        flip, safe for small, low-resolution and orientation-sensitive images
        (digits, text, scans); ``"light"``: 85-100 %, no flip;
        ``"standard"`` (or True): the ImageNet recipe, crops down to 35 % of
        the area and a horizontal flip, for natural photos; ``(min, max)``:
        that crop-area range, with a flip; False: none. A callable (any
        torchvision transform) takes and returns a ``(C, H, W)`` tensor; its
        output is then resized and centre-cropped to the network's input
        unless it already has that size.
    tta : bool, default=False
        Test-time augmentation: ``predict_proba`` and ``predict`` average
        the probabilities (or predictions) of each image's evaluation view and four
        corner crops at the ``augment`` preset's mean crop area (and their
        mirror images where the preset flips): 5 (or 10) forward passes,
        deterministic. Needs a crop preset in ``augment`` and no
        ``final_estimator``; ``transform`` is never augmented.
""",
    "runtime_params": """\
    cache : str, path-like, joblib.Memory, EmbeddingCache or None, default=None
        Stores the head fit's frozen embeddings on disk, keyed as the
        featurizer's cache is (image content, backbone and weights, pooling,
        preprocessing, device type, precision, versions), so the folds and
        candidates of a ``GridSearchCV`` or ``cross_val_score`` embed each
        image once for their head fits. Training itself is never cached.
    early_stopping : bool or int, default=False
        Stop when the validation loss has not improved for this many epochs
        (True is 5) and restore the best weights. Uses ``train_split``'s
        validation images, or a ``validation_fraction`` (stratified for
        single-label classes) of the data when ``train_split`` is None.
    validation_fraction : float, default=0.1
        The share of the images ``train_split="auto"`` holds out in a short
        run (and early stopping without a split in any run).
    final_estimator : estimator or None, default=None
        If set, a clone is fitted on the tuned embeddings of the training
        images and makes the predictions (hybrid mode). Its parameters are
        settable as ``final_estimator__<name>``.
    random_state : int, RandomState instance or None, default=None
        Seeds head initialisation, shuffling, augmentation and the
        validation split for reproducible fits. Torch's global random state
        is restored after ``fit``.
    num_workers : int, default=0
        DataLoader workers for training and prediction (override for
        training alone with ``iterator_train__num_workers``).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype, as for the featurizer: fp16 (with a gradient scaler
        when training; callbacks see unscaled gradients) on CUDA, float32 on
        the CPU (bf16 only when asked for).
    backend : {"auto", "torch", "onnxruntime"}, default="auto"
        What runs ``predict``, ``predict_proba`` and ``transform`` (training is
        always torch), as for the featurizer: ``"auto"`` is ONNX Runtime on
        the CPU (the tuned network exported at the first such call, checked
        against torch, re-exported after further training) and torch on
        CUDA/MPS, or with a user's own ``torch.nn.Module`` backbone.
    device : str or torch.device, default="auto"
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
        Resolved in ``fit`` for training and at every ``predict``,
        ``predict_proba`` and ``transform``, so ``set_params(device="cpu")``
        or a CPU-only machine runs a model fitted on a GPU.
""",
    "optimizer_params": """\
    optimizer : torch optimizer class, default=torch.optim.AdamW
    lr : float or "auto", default=1e-3
        Learning rate of the head. ``"auto"``: an LR range test (Smith 2017,
        fastai's ``lr_find``) of 40 training batches at the start of ``fit``,
        after the head fit, picks the rate (steepest descent where the loss
        falls, else a tenth of where it diverges, always within the swept
        1e-6 to 1: ``suggest_lr``); model, optimizer and random state are
        restored after it. A flat or near-zero curve shows nothing: then
        1e-3 with one :class:`LRFinderWarning`. The curve is in
        ``lr_finder_``; :meth:`lr_find` runs the test alone.
    max_epochs : int, default=10
    batch_size : int or "auto", default="auto"
        32 on CPU, 256 on CUDA.
    train_split : "auto", callable or None, default="auto"
        skorch's internal validation split. ``"auto"``: a ``fit`` of fewer
        than 50 optimisation steps (``max_epochs`` times the training
        batches) holds out ``validation_fraction`` of the images
        (stratified by class for single-label targets), when that gives at
        least 10 validation images and, stratified, every class in both
        parts; a longer run, ``max_epochs=0``, ``partial_fit`` and a
        ``warm_start`` fit hold out none (every image trains, the last
        epoch is kept). A callable (e.g. ``ValidSplit(0.2,
        stratified=True)``) is used as skorch uses it; None holds out
        nothing. With validation images the fit keeps the best of {the
        starting point, each epoch} (callback ``keep_best``,
        :class:`KeepBestEpoch`): an epoch replaces the start only if its
        validation loss is lower by more than one standard error of the
        paired per-image differences (``callbacks__keep_best__margin``).
        When ``"auto"`` went back to the LP-FT probe head, the head is
        fitted again on every image, held-out ones too, so a budget too
        short to help ends at the probe itself.
        ``callbacks__keep_best=None`` keeps the last epoch.
    callbacks : list, "disable" or None, default=None
        Extra skorch callbacks, added to the defaults (``freeze``,
        ``lr_schedule``, ``early_stopping``, timers, scores, log).
    verbose : int, default=0
        1 prints skorch's epoch table.
    **kwargs
        Any other skorch ``NeuralNet`` parameter or prefixed parameter.

""",
    "finetune_attributes": """\
    module_ : FineTuneNetwork
        The tuned network: ``module_.embedder`` and ``module_.head``.
    backbone_ : torch.nn.Module
        The tuned embedding module (``module_.embedder``).
    {backbone_attributes}
    blocks_ : list of str
        The backbone's blocks, from the input, that an int ``freeze`` counts.
    frozen_params_ : list of str
        Parameters kept fixed after the head-only phase.
    device_ : torch.device
        The device the network trains on.
    final_estimator_ : estimator
        The fitted ``final_estimator``, if one was given.
    history_ : skorch History
        Per-epoch losses, scores, ``lr`` and ``trainable`` parameter count.
    lr_ : float
        The head's learning rate: ``lr``, or the one the range test found.
    best_epoch_ : int
        The epoch whose weights the last ``fit`` / ``partial_fit`` kept
        (0: the head fit, before any epoch; after ``train_split="auto"``
        went back to it, the head fitted again on every image); the last
        epoch without a validation split.
    lr_finder_ : LRFinderResult
        With ``lr="auto"``: the range test's ``lrs``, smoothed ``losses`` and
        ``suggestion``.
    layer_ : str, tuple of str or None
        The ``layer`` of the last initialisation (``set_params(layer=...)``
        takes effect at the next ``fit``).
    layer_widths_ : tuple of (str, int)
        With ``layer``: each layer and its width in ``transform``'s output.

""",
}


def finetune_docs(cls):
    """Fill ``{training_params}``-style lines of a fine-tuner's docstring, then the shared ones."""
    for key, text in _FINETUNE_DOCS.items():
        cls.__doc__ = cls.__doc__.replace("    {" + key + "}\n", text)
    return shared_docs(cls)
