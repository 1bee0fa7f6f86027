"""The ``sklearn-tl`` command (also ``python -m sklearn_tl``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


class UserError(Exception):
    """A mistake in the command line or its inputs: printed in one line, exit 2."""


def _cmd_demo(args) -> int:
    from ._demo import run_demo

    run_demo(n_per_class=args.per_class, image_size=args.image_size)
    return 0


def _cmd_backbones(args) -> int:
    from ._backbones import get_backbone_spec, list_backbones
    from ._preprocess import native_data_config
    from ._weights import ResolvedWeights, weights_enum_for, weights_search_dirs

    dirs = weights_search_dirs()
    print(f"{'backbone':<22}{'family':<14}{'width':>6}{'input':>7}  weights on this machine")
    for name in list_backbones(args.include):
        spec = get_backbone_spec(name)
        if spec.source == "timm":
            print(f"{name:<22}{spec.family:<14}{spec.n_features:>6}{'':>7}  (timm)")
            continue
        config = native_data_config(spec, ResolvedWeights(None, None, None), None)
        enum_cls = weights_enum_for(name)
        local = [m.name for m in enum_cls if any((d / m.url.rsplit("/", 1)[-1]).is_file() for d in dirs)]
        print(f"{name:<22}{spec.family:<14}{spec.n_features:>6}{config.crop_size:>7}  {', '.join(local) or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sklearn-tl",
        description="Transfer learning for images with scikit-learn estimators.",
        epilog="Examples:\n  sklearn-tl demo\n  sklearn-tl backbones --include 'resnet*'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="pretrained MobileNetV2 features vs raw pixels vs random init on real photos",
        description="Fit featurizer → logistic regression Pipelines through GridSearchCV on "
        "patches of real texture photos and print a table of test accuracy and time.",
    )
    demo.add_argument("--per-class", type=int, default=80, help="patches per class (default: 80)")
    demo.add_argument("--image-size", type=int, default=112, help="network input size (default: 112)")
    demo.set_defaults(run=_cmd_demo)

    backbones = commands.add_parser(
        "backbones",
        help="list registered backbones, their width, input size and offline weights",
        description="List registered backbones with embedding width, native input size and "
        "which named weights are on this machine.",
    )
    backbones.add_argument("--include", default=None, help="fnmatch pattern, e.g. 'resnet*'")
    backbones.set_defaults(run=_cmd_backbones)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserError, FileNotFoundError, ValueError, ImportError) as exc:
        print(f"sklearn-tl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
