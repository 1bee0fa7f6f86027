"""This module contains the ``sklearn-tl`` argument parser and entry point (``main``).

The commands themselves are in :mod:`sklearn_tl.cli.commands`; a mistake in
the input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .._defaults import FINETUNE_MAX_EPOCHS
from ..exceptions import UserError
from .commands import _cmd_backbones, _cmd_demo, _cmd_export, _cmd_featurize, _cmd_predict, _cmd_train, _cmd_weights

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2


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
    from ..exceptions import ImageReadError

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
