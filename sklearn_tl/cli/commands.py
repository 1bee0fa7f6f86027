"""The ``sklearn-tl`` command (also ``python -m sklearn_tl``).

Subcommands: ``demo``, ``backbones``, ``featurize``, ``train``, ``predict`` and
``weights``. A mistake in the command line or its inputs (a missing folder, an
empty class, an unreadable model or weights file) prints one line,
``sklearn-tl <command>: error: <message>``, and exits with status 2; the
``--debug`` option shows the traceback instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..exceptions import UserError


def _progress(args) -> bool:
    return not args.quiet


# ---------------------------------------------------------------- demo, backbones


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(n_per_class=args.per_class, image_size=args.image_size)
    return 0


def _cmd_backbones(args) -> int:
    from ..models.registry import get_backbone_spec, list_backbones, native_data_config
    from ..models.weights import ResolvedWeights, local_weight_names, weights_enum_for, weights_search_dirs

    dirs = weights_search_dirs()
    names = list_backbones(args.include)
    if not names:
        raise UserError(f"No registered backbone matches {args.include!r}.")
    print(f"{'backbone':<22}{'family':<14}{'width':>6}{'input':>7}  weights on this machine")
    for name in names:
        spec = get_backbone_spec(name)
        if spec.source == "timm":
            print(f"{name:<22}{spec.family:<14}{spec.n_features:>6}{'':>7}  (timm)")
            continue
        config = native_data_config(spec, ResolvedWeights(None, None, None), None)
        local = local_weight_names(weights_enum_for(name), dirs)
        print(f"{name:<22}{spec.family:<14}{spec.n_features:>6}{config.crop_size:>7}  {', '.join(local) or '-'}")
    return 0


# ---------------------------------------------------------------- featurize


def _check_output(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise UserError(f"Output {str(path)!r} must end in {' or '.join(allowed)}.")
    if not path.parent.is_dir():
        raise UserError(f"Output folder {str(path.parent)!r} does not exist.")
    return suffix


def _require_pyarrow():
    try:
        import pandas
        import pyarrow
    except ImportError:
        raise UserError("Writing .parquet needs pandas and pyarrow: pip install pyarrow pandas") from None


def _cmd_featurize(args) -> int:
    output = Path(args.output)
    suffix = _check_output(output, (".npy", ".parquet"))
    if suffix == ".parquet":
        _require_pyarrow()  # before the slow part
    from ..data.folders import collect_images

    paths, labels = collect_images(args.inputs)

    import numpy as np

    from ..estimators.featurizer import PretrainedCNNFeaturizer

    featurizer = PretrainedCNNFeaturizer(
        args.backbone,
        weights=args.weights,
        layer=args.layer,
        pooling=args.pooling,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        on_error="warn" if args.skip_unreadable else "raise",
        progress=_progress(args),
        random_state=0,
    )
    embeddings = featurizer.fit_transform(paths)
    if suffix == ".npy":
        np.save(output, embeddings.astype(np.float32, copy=False))
        listing = output.with_suffix(".paths.txt")
        listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
        where = f"{output} and the image list {listing}"
    else:
        import pandas as pd

        columns = {"path": paths}
        if labels is not None:
            columns["label"] = labels
        frame = pd.DataFrame(columns)
        features = pd.DataFrame(embeddings, columns=[f"f{i}" for i in range(embeddings.shape[1])])
        pd.concat([frame, features], axis=1).to_parquet(output, index=False)
        where = str(output)
    print(
        f"{embeddings.shape[0]} images -> {embeddings.shape[1]} features "
        f"({args.backbone}, weights {featurizer.weights_ or 'random init'}, "
        f"{featurizer.data_config_.crop_size} px): {where}"
    )
    return 0


# ---------------------------------------------------------------- train


def _format_confusion(matrix, names) -> str:
    width = max(6, *(len(n) for n in names)) + 2
    lines = [" " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"{int(c):>{width}}" for c in row))
    return "\n".join(lines)


def _format_label_scores(scores, names) -> str:
    """Per-label precision, recall, F1 and number of images (``precision_recall_fscore_support``)."""
    width = max(6, *(len(n) for n in names)) + 2
    lines = [f"{'label':<{width}}{'precision':>11}{'recall':>9}{'F1':>7}{'images':>8}"]
    for name, p, r, f, n in zip(names, *scores):
        lines.append(f"{name:<{width}}{p:>11.3f}{r:>9.3f}{f:>7.3f}{int(n):>8}")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    output = Path(args.output)
    _check_output(output, (".joblib", ".pkl", ".skops"))
    if args.report is not None:
        _check_output(Path(args.report), (".html", ".htm", ".png"))
        if args.cv == 0:
            raise UserError("--report shows cross-validated predictions: use --cv 2 or more, not 0.")
        from .report import _import_pyplot

        try:
            _import_pyplot()
        except ImportError as exc:
            raise UserError(str(exc)) from None
    from .training import load_labelled_csv, load_labelled_folder, n_folds, train_classifier

    if (args.folder is None) == (args.labels is None):
        raise UserError("give either DIR (one sub-folder per class) or --labels FILE.csv (several labels per image).")
    data = load_labelled_folder(args.folder) if args.labels is None else load_labelled_csv(args.labels)
    skipped = []
    if args.skip_unreadable:
        from .training import readable_images

        data, skipped = readable_images(data)
    n_splits = n_folds(data, args.cv)
    names = data.class_names
    kind = "labels" if data.multilabel else "classes"
    print(f"{len(data.paths)} images {'with' if data.multilabel else 'in'} {len(names)} {kind}: "
          + ", ".join(f"{n} ({c})" for n, c in zip(names, data.counts))
          + (f"; {len(skipped)} unreadable image(s) skipped" if skipped else ""))
    if args.mode != "features":
        try:
            from ..estimators.classifier import FineTuneClassifier  # noqa: F401
        except ImportError as exc:
            raise UserError(f"--mode {args.mode} needs FineTuneClassifier, which cannot be imported: {exc}") from None
    result = train_classifier(
        data.paths, data.y, mode=args.mode, backbone=args.backbone, weights=args.weights,
        image_size=args.image_size, batch_size=args.batch_size, device=args.device, progress=_progress(args),
        cache=args.cache, C=args.C, max_epochs=args.max_epochs, lr=args.lr, freeze=args.freeze,
        n_splits=n_splits, random_state=args.random_state, label_names=names if data.multilabel else None,
    )
    scores = result.fold_scores
    if scores is not None and data.multilabel:
        from sklearn.metrics import precision_recall_fscore_support

        print(f"cross-validated samples-F1: {scores.mean():.3f} ± {scores.std():.3f} "
              f"({n_splits}-fold; folds: {' '.join(f'{s:.3f}' for s in scores)})")
        print(_format_label_scores(precision_recall_fscore_support(data.y, result.predicted, zero_division=0.0), names))
    elif scores is not None:
        from sklearn.metrics import confusion_matrix

        print(
            f"cross-validated accuracy: {scores.mean():.3f} ± {scores.std():.3f} "
            f"({n_splits}-fold stratified; folds: {' '.join(f'{s:.3f}' for s in scores)})"
        )
        print("confusion matrix (rows: true class, columns: predicted class):")
        print(_format_confusion(confusion_matrix(data.y, result.predicted, labels=names), names))
    rate = _learning_rate_line(result.model)
    if rate:
        print(rate)
        kept = _kept_epoch_line(result.model)
        if kept is not None:
            print(kept)
            rate = f"{rate}; {kept}"
    from ..deploy.persistence import save_model

    header = save_model(result.model, output)
    steps = header["preprocessing"]
    weights = next(iter(steps.values()))["weights"] if steps else None
    print(f"saved {output} ({args.mode}: {args.backbone}, weights {weights or 'random init'}, {len(names)} {kind})")
    if args.report is not None:
        from .report import write_report

        title = f"{Path(args.folder or args.labels).name}: {args.mode}, {args.backbone}"
        metric = "samples-F1" if data.multilabel else "accuracy"
        summary = [f"{len(data.paths)} images, {len(names)} {kind}, {n_splits}-fold cross-validated {metric} "
                   f"{scores.mean():.3f} ± {scores.std():.3f}", f"model: {output}"] + ([rate] if rate else [])
        title += f", lr {result.model.lr_:.3g}" if rate else ""
        finder = getattr(result.model, "lr_finder_", None)
        write_report(args.report, data.y, result.predicted, names, paths=data.paths, confidence=result.confidence,
                     title=title, summary=summary, lr_finder=None if finder is None else finder.as_dict())
        print(f"report: {args.report}")
    return 0


def _learning_rate_line(model) -> str | None:
    """The rate a fine-tuned model trained at (``lr_``), and where it came from; None for other models."""
    rate = getattr(model, "lr_", None)
    if rate is None:
        return None
    finder = getattr(model, "lr_finder_", None)
    if finder is None or model.lr != "auto":
        return f"learning rate: {rate:.3g}"
    how = "the default: the range test's curve showed no signal" if finder.fallback else "from the range test"
    return f"learning rate: {rate:.3g} (lr='auto', {how}, which swept {finder.lrs[0]:.3g} to {finder.lrs[-1]:.3g})"


def _kept_epoch_line(model) -> str | None:
    """Which weights a fine-tuner kept after its held-out images decided; None when none were held out."""
    history = getattr(model, "history_", None)
    if not history or "best_epoch" not in history[-1]:
        return None
    held_out = sum(b.get("valid_batch_size", 0) for b in history[-1]["batches"])
    best, last = model.best_epoch_, len(history)
    start = "the probe head" if getattr(model, "head_init", None) == "probe" else "the starting weights"
    if best == 0:
        return f"kept: {start} (no epoch of {last} beat it on {held_out} held-out images)"
    return f"kept: epoch {best} of {last} (it beat {start} on {held_out} held-out images)"


# ---------------------------------------------------------------- predict


def _cmd_predict(args) -> int:
    if args.csv is not None:
        _check_output(Path(args.csv), (".csv",))
    from ..data.folders import collect_images
    from ..deploy.persistence import load_model
    from ..exceptions import ModelFileError
    from .training import predict_with_confidence, set_inference_options

    try:
        model = load_model(args.model)
    except ModelFileError as exc:
        raise UserError(str(exc)) from None
    paths, _ = collect_images(args.images)
    set_inference_options(model, device=args.device or None, batch_size=args.batch_size,
                          progress=False if args.quiet else "auto")
    labels, confidence, proba, classes = predict_with_confidence(model, paths)
    if args.csv is not None:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            extra = [f"p_{c}" for c in classes] if proba is not None else []
            writer.writerow(["path", "label", "probability", *extra])
            for i, path in enumerate(paths):
                row = [path, labels[i], "" if confidence is None else f"{confidence[i]:.4f}"]
                writer.writerow(row + ([f"{p:.4f}" for p in proba[i]] if proba is not None else []))
        print(f"{len(paths)} predictions: {args.csv}")
    else:
        for i, path in enumerate(paths):
            print(f"{path}\t{labels[i]}\t{'' if confidence is None else f'{confidence[i]:.4f}'}")
    return 0


# ---------------------------------------------------------------- weights


def _cmd_export(args) -> int:
    from ..deploy.export import export_onnx
    from ..deploy.persistence import load_model
    from ..exceptions import ModelFileError

    try:
        print(export_onnx(load_model(args.model), args.output))
    except (ModelFileError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return 0


def _cmd_weights_list(args) -> int:
    import torch

    from ..models.weights import (
        OFFLINE_ENV,
        SEARCH_PATH_ENV,
        downloads_disabled,
        hash_status,
        known_weight_files,
        weight_files_in,
        weights_search_dirs,
    )

    known = known_weight_files()
    print(f"{OFFLINE_ENV}={os.environ.get(OFFLINE_ENV) or '(unset)'}: " + (
        "downloads are off" if downloads_disabled() else "missing weights are downloaded into the first folder"))
    print(f"{SEARCH_PATH_ENV}={os.environ.get(SEARCH_PATH_ENV) or '(unset)'}")
    print(f"torch hub folder: {torch.hub.get_dir()}")
    print("weights are looked up in, in order:")
    seen = set()
    for directory in weights_search_dirs():
        state = "" if directory.is_dir() else "  (does not exist)"
        print(f"  {directory}{state}")
        if not directory.is_dir() or directory in seen:
            continue
        seen.add(directory)
        for path in weight_files_in(directory):
            what = known.get(path.name, "not a torchvision weights file")
            size = path.stat().st_size / 2**20
            print(f"    {path.name:<40} {size:8.1f} MiB  {what}  [{hash_status(path, not args.no_check)}]")
    return 0


def _cmd_weights_import(args) -> int:
    from ..models.weights import import_weights_file

    target, sha256, known, in_place = import_weights_file(args.file, args.dest, force=args.force)
    if in_place:
        print(f"{target} is already in place (sha256 {sha256[:12]}…)")
    else:
        print(f"imported {target.name} -> {target} (sha256 {sha256[:12]}…, {known or 'unknown file, --force'})")
    return 0


def _cmd_weights(args) -> int:
    return _cmd_weights_import(args) if args.weights_command == "import" else _cmd_weights_list(args)
