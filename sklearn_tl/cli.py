"""The ``sklearn-tl`` command (also ``python -m sklearn_tl``).

Subcommands: ``demo``, ``backbones``, ``featurize``, ``train``, ``predict`` and
``weights``. A mistake in the command line or its inputs (a missing folder, an
empty class, an unreadable model or weights file) prints one line,
``sklearn-tl <command>: error: <message>``, and exits with status 2; the
``--debug`` option shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ._defaults import FINETUNE_MAX_EPOCHS

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line or its inputs: printed in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command, with a pointer to --help."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(message) -> str:
    """Join a multi-line message into one; ``- item`` lines become ``a; b; c.``."""
    parts, items = [], []
    for line in (part.strip() for part in str(message).splitlines()):
        if line.startswith("- "):
            items.append(line[2:])
            continue
        if items:
            parts.append("; ".join(items) + ".")
            items = []
        if line:
            parts.append(line)
    if items:
        parts.append("; ".join(items) + ".")
    return " ".join(parts)


def _weights_arg(value: str):
    """``none`` (any case) means random initialisation."""
    return None if value.lower() in {"none", "random"} else value


def _auto_or_positive(value: str, convert, kind: str):
    """``auto``, or ``value`` converted to a positive ``kind`` (argparse's error otherwise)."""
    if value == "auto":
        return value
    try:
        number = convert(value)
    except ValueError:
        number = 0
    if not number > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive {kind}, not {value!r}")
    return number


def _batch_size_arg(value: str):
    return _auto_or_positive(value, int, "integer")


def _lr_arg(value: str):
    """``--lr``: a positive number or ``auto``."""
    return _auto_or_positive(value, float, "number")


def _freeze_arg(value: str):
    """``--freeze 3`` is three blocks, ``--freeze 0.5`` half the network, other values are names."""
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def _progress(args) -> bool:
    return not args.quiet


# ---------------------------------------------------------------- messages

# Library messages name Python arguments; the command line says its own options instead.
_OPTION_NAMES = {
    "force=True": "--force",
    "cv=0": "--cv 0",
    "weights=None": "--weights none",
    "weights='": "--weights '",  # the hint "pass weights='/path/to/<file>'"
}


def _in_cli_words(message) -> str:
    message = str(message)
    for argument, option in _OPTION_NAMES.items():
        message = message.replace(argument, option)
    return message


# ---------------------------------------------------------------- demo, backbones


def _cmd_demo(args) -> int:
    from ._demo import run_demo

    run_demo(n_per_class=args.per_class, image_size=args.image_size)
    return 0


def _cmd_backbones(args) -> int:
    from ._backbones import get_backbone_spec, list_backbones
    from ._preprocess import native_data_config
    from ._weights import ResolvedWeights, local_weight_names, weights_enum_for, weights_search_dirs

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
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError("Writing .parquet needs pandas and pyarrow: pip install pyarrow pandas") from None


def _cmd_featurize(args) -> int:
    output = Path(args.output)
    suffix = _check_output(output, (".npy", ".parquet"))
    if suffix == ".parquet":
        _require_pyarrow()  # before the slow part
    from ._datasets import collect_images

    paths, labels = collect_images(args.inputs)

    import numpy as np

    from ._featurizer import PretrainedCNNFeaturizer

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
        from ._report import _import_pyplot

        try:
            _import_pyplot()
        except ImportError as exc:
            raise UserError(str(exc)) from None
    from ._training import load_labelled_csv, load_labelled_folder, n_folds, train_classifier

    if (args.folder is None) == (args.labels is None):
        raise UserError("give either DIR (one sub-folder per class) or --labels FILE.csv (several labels per image).")
    data = load_labelled_folder(args.folder) if args.labels is None else load_labelled_csv(args.labels)
    skipped = []
    if args.skip_unreadable:
        from ._training import readable_images

        data, skipped = readable_images(data)
    n_splits = n_folds(data, args.cv)
    names = data.class_names
    kind = "labels" if data.multilabel else "classes"
    print(f"{len(data.paths)} images {'with' if data.multilabel else 'in'} {len(names)} {kind}: "
          + ", ".join(f"{n} ({c})" for n, c in zip(names, data.counts))
          + (f"; {len(skipped)} unreadable image(s) skipped" if skipped else ""))
    if args.mode != "features":
        try:
            from ._finetune import FineTuneClassifier  # noqa: F401
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
    from ._persistence import save_model

    header = save_model(result.model, output)
    steps = header["preprocessing"]
    weights = next(iter(steps.values()))["weights"] if steps else None
    print(f"saved {output} ({args.mode}: {args.backbone}, weights {weights or 'random init'}, {len(names)} {kind})")
    if args.report is not None:
        from ._report import write_report

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


# ---------------------------------------------------------------- predict


def _cmd_predict(args) -> int:
    if args.csv is not None:
        _check_output(Path(args.csv), (".csv",))
    from ._datasets import collect_images
    from ._persistence import ModelFileError, load_model
    from ._training import predict_with_confidence, set_inference_options

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
    from ._export import export_onnx
    from ._persistence import ModelFileError, load_model

    try:
        print(export_onnx(load_model(args.model), args.output))
    except (ModelFileError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return 0


def _cmd_weights_list(args) -> int:
    import torch

    from ._weights import (
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
    from ._weights import import_weights_file

    target, sha256, known, in_place = import_weights_file(args.file, args.dest, force=args.force)
    if in_place:
        print(f"{target} is already in place (sha256 {sha256[:12]}…)")
    else:
        print(f"imported {target.name} -> {target} (sha256 {sha256[:12]}…, {known or 'unknown file, --force'})")
    return 0


def _cmd_weights(args) -> int:
    return _cmd_weights_import(args) if args.weights_command == "import" else _cmd_weights_list(args)


# ---------------------------------------------------------------- parser


def _add_backbone_args(parser, default_weights="DEFAULT"):
    parser.add_argument("--backbone", default="mobilenet_v2", help="backbone name (see `sklearn-tl backbones`)")
    parser.add_argument(
        "--weights",
        type=_weights_arg,
        default=default_weights,
        help="DEFAULT, a torchvision weights name (IMAGENET1K_V1), a file or folder path, "
        "or 'none' for random initialisation (default: %(default)s)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="network input side in px (default: native)")
    parser.add_argument(
        "--batch-size", type=_batch_size_arg, default="auto", help="images per forward pass (default: auto)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _examples(*lines) -> str:
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="sklearn-tl",
        description="Transfer learning for images with scikit-learn estimators.",
        epilog=_examples(
            "sklearn-tl demo",
            "sklearn-tl backbones --include 'resnet*'",
            "sklearn-tl train photos/ -o model.skops --report report.html",
            "sklearn-tl predict model.skops new/*.jpg",
            "sklearn-tl <command> --help",
        ),
        formatter_class=raw,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="pretrained MobileNetV2 features vs raw pixels vs random init on real photos",
        description="Fit featurizer → logistic regression Pipelines through GridSearchCV on "
        "patches of real texture photos and print a table of test accuracy and time.",
        epilog=_examples("sklearn-tl demo", "sklearn-tl demo --per-class 20 --image-size 64"),
        formatter_class=raw,
    )
    demo.add_argument("--per-class", type=int, default=80, help="patches per class (default: 80)")
    demo.add_argument("--image-size", type=int, default=112, help="network input size (default: 112)")
    demo.set_defaults(run=_cmd_demo)

    backbones = commands.add_parser(
        "backbones",
        help="list registered backbones, their width, input size and offline weights",
        description="List registered backbones with embedding width, native input size and "
        "which named weights are on this machine.",
        epilog=_examples("sklearn-tl backbones", "sklearn-tl backbones --include 'efficientnet*'"),
        formatter_class=raw,
    )
    backbones.add_argument("--include", default=None, help="fnmatch pattern, e.g. 'resnet*'")
    backbones.set_defaults(run=_cmd_backbones)

    featurize = commands.add_parser(
        "featurize",
        help="images -> embeddings (.npy or .parquet)",
        description="Embed images with a pretrained CNN. Inputs are folders (with class sub-folders, "
        "searched recursively, or a flat folder of images), image files, or text files listing one "
        "image path a line. A .npy output is float32 (n_images, width) with the image list in "
        "<name>.paths.txt beside it; a .parquet output has columns path, label (for class folders) "
        "and f0..f<width-1>.",
        epilog=_examples(
            "sklearn-tl featurize photos/ -o embeddings.npy",
            "sklearn-tl featurize list.txt --backbone resnet50 --image-size 160 -o embeddings.parquet",
            "sklearn-tl featurize a.jpg b.jpg --weights none -o random.npy",
        ),
        formatter_class=raw,
    )
    featurize.add_argument("inputs", nargs="+", metavar="DIR_OR_LIST", help="folders, image files or list files")
    featurize.add_argument("-o", "--output", required=True, help="embeddings.npy or embeddings.parquet")
    _add_backbone_args(featurize)
    featurize.add_argument("--layer", default=None, help="pool this inner layer instead, e.g. features.13")
    featurize.add_argument("--pooling", default="avg", choices=["avg", "max", "gem"], help="(default: avg)")
    featurize.add_argument(
        "--skip-unreadable", action="store_true", help="give unreadable images a row of NaN instead of failing"
    )
    featurize.set_defaults(run=_cmd_featurize)

    train = commands.add_parser(
        "train",
        help="train a classifier on a folder of class sub-folders",
        description="Train on DIR/<class>/<image>: print the stratified k-fold cross-validated accuracy "
        "and confusion matrix, then fit on all images and save the model. Modes: 'features' "
        "(frozen CNN embeddings -> StandardScaler -> LogisticRegression, each image embedded once), "
        "'finetune' (tune the network, FineTuneClassifier) and 'hybrid' (tune, then fit the "
        "logistic regression on the tuned embeddings). With --labels FILE.csv instead of DIR, each "
        "image has any number of labels: every mode trains a multilabel FineTuneClassifier (one "
        "logistic regression per label in 'features' and 'hybrid'), and the output is the k-fold "
        "samples-F1 and per-label precision, recall and F1. A .skops file (the default) loads without "
        "running code; a .joblib or .pkl file is a pickle: load only files you trust.",
        epilog=_examples(
            "sklearn-tl train photos/ -o model.skops",
            "sklearn-tl train photos/ --backbone resnet50 --weights IMAGENET1K_V2 --cv 10 -o model.skops",
            "sklearn-tl train photos/ --mode finetune --max-epochs 5 -o tuned.skops --report report.png",
            "sklearn-tl train --labels labels.csv --mode finetune -o tagger.skops",
        ),
        formatter_class=raw,
    )
    train.add_argument("folder", metavar="DIR", nargs="?", default=None,
                       help="folder with one sub-folder of images per class")
    train.add_argument("--labels", metavar="FILE.csv", default=None,
                       help="instead of DIR, several labels per image: a CSV with the columns 'path' (relative "
                            "to the CSV's folder) and 'labels' (separated by ';', may be empty); trains a "
                            "multilabel model and reports per-label precision, recall and F1")
    train.add_argument("-o", "--output", default="model.skops",
                       help="model file: .skops (safe, the default: model.skops), .joblib or .pkl (pickle)")
    train.add_argument("--mode", choices=["features", "finetune", "hybrid"], default="features",
                       help="(default: features)")
    _add_backbone_args(train)
    train.add_argument("--cv", type=int, default=5,
                       help="folds, capped by the smallest class; 0 skips cross-validation (default: 5)")
    train.add_argument("--C", type=float, default=1.0, help="inverse regularisation of the logistic regression")
    train.add_argument("--max-epochs", type=int, default=FINETUNE_MAX_EPOCHS,
                       help="finetune/hybrid: epochs (default: %(default)s)")
    train.add_argument("--lr", type=_lr_arg, default=1e-3,
                       help="finetune/hybrid: learning rate, or 'auto' for an LR range test at the start of "
                            "training, whose curve --report shows (default: 1e-3)")
    train.add_argument("--freeze", type=_freeze_arg, default=None,
                       help="finetune/hybrid: 'backbone', 'none', or a number of blocks to freeze")
    train.add_argument(
        "--cache", default=None, help="features mode: embedding cache folder; a rerun (another --C) embeds nothing"
    )
    train.add_argument(
        "--skip-unreadable", action="store_true",
        help="leave out images that cannot be decoded (a warning names them) instead of failing",
    )
    train.add_argument("--report", default=None, metavar="FILE", help="write report.html or report.png")
    train.add_argument("--random-state", type=int, default=0, help="seed for folds and initialisation")
    train.set_defaults(run=_cmd_train)

    predict = commands.add_parser(
        "predict",
        help="predict labels of images with a saved model",
        description="Print path, label and probability (tab-separated) for each image, or write a CSV "
        "with one probability column per class. Inputs as for featurize. A .skops model file "
        "loads without running code (only sklearn_tl's own types are trusted); a .joblib file is a "
        "pickle, which can run code when loaded: load only files you trust.",
        epilog=_examples(
            "sklearn-tl predict model.skops new/*.jpg",
            "sklearn-tl predict model.skops new/ --csv predictions.csv",
        ),
        formatter_class=raw,
    )
    predict.add_argument("model", help="a model file written by `sklearn-tl train` or save_model")
    predict.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or list files")
    predict.add_argument("--csv", default=None, help="write predictions to this CSV file")
    predict.add_argument("--device", default=None, help="override the model's device (auto, cpu, cuda...)")
    predict.add_argument("--batch-size", type=_batch_size_arg, default=None, help="override the model's batch size")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(run=_cmd_predict)

    export = commands.add_parser(
        "export",
        help="write a saved featurizer pipeline or fine-tuner as one ONNX file that runs without torch",
        description="Convert MODEL (featurizer + the scikit-learn steps after it, or a fine-tuner) into OUTPUT, "
        "one ONNX file taking uint8 images (N, H, W, 3); see sklearn_tl.onnx_images for the preprocessing.",
        epilog=_examples("sklearn-tl export model.skops model.onnx"),
        formatter_class=raw,
    )
    export.add_argument("model", help="a model file written by `sklearn-tl train` or save_model")
    export.add_argument("output", help="the .onnx file to write")
    export.set_defaults(run=_cmd_export)

    weights = commands.add_parser(
        "weights",
        help="show where weights are looked up; import a weights file for offline use",
        description="Without a sub-command: list the folders searched for weights, in order, with the "
        "weight files in each and whether their sha256 matches the hash prefix in their name. "
        "`weights import FILE` copies a torchvision weights file (keep its original name, e.g. "
        "mobilenet_v2-b0353104.pth) into torch's hub cache after checking its hash, so an "
        "air-gapped machine can be prepared from a file downloaded elsewhere.",
        epilog=_examples(
            "sklearn-tl weights",
            "sklearn-tl weights import ~/Downloads/resnet50-11ad3fa6.pth",
            "sklearn-tl weights import my_finetuned.pth --force --dest /opt/weights",
        ),
        formatter_class=raw,
    )
    weights.add_argument("--no-check", action="store_true", help="list without hashing the files")
    weights.set_defaults(run=_cmd_weights, weights_command=None)
    weights_commands = weights.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", parser_class=_Parser)
    weights_commands.add_parser("list", help="the default: list search folders and weight files").add_argument(
        "--no-check", action="store_true", help="list without hashing the files"
    )
    weights_import = weights_commands.add_parser(
        "import",
        help="copy a weights file into the offline cache, checking its hash",
        description="Copy FILE into torch's hub cache (or --dest) after checking that its sha256 starts "
        "with the hash in its name and that it holds a plain state dict of tensors.",
        epilog=_examples("sklearn-tl weights import mobilenet_v2-b0353104.pth"),
        formatter_class=raw,
    )
    weights_import.add_argument("file", metavar="FILE", help="the weights file")
    weights_import.add_argument("--dest", default=None, help="folder to copy into (default: torch hub checkpoints)")
    weights_import.add_argument("--force", action="store_true", help="import a file whose name torchvision lacks")
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    return f"sklearn-tl: warning: {_one_line(message)}\n"


def main(argv=None) -> int:
    """Run the ``sklearn-tl`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    from ._images import ImageReadError

    command = " ".join(filter(None, [args.command, getattr(args, "weights_command", None)]))
    format_warning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _one_line_warnings
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"sklearn-tl {command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError, ValueError, ImportError, ImageReadError) as exc:
        # OSError covers FileNotFoundError, WeightsNotFoundError and unwritable outputs.
        if args.debug:
            raise
        print(f"sklearn-tl {command}: error: {_one_line(_in_cli_words(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.formatwarning = format_warning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
