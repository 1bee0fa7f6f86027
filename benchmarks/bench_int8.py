"""The price of ``precision="int8"``: embedding fidelity and linear-probe accuracy on real images.

MobileNetV2 with its real ImageNet weights (``IMAGENET1K_V1``, offline),
float32 ONNX Runtime against int8 (static QDQ, calibrated on up to 64 images
of the training split only). For each data set and split: per-row cosine of
the int8 embedding to the float32 one (mean and worst), and the held-out
accuracy of the same logistic regression trained on each.

    python benchmarks/bench_int8.py --write benchmarks/results/int8.md
"""

from __future__ import annotations

import argparse

import numpy as np
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit

from sklearn_tl import PretrainedCNNFeaturizer, load_textures


def datasets(n_digits: int):
    X, y = load_textures(n_per_class=80, size=96, random_state=0, return_X_y=True)
    yield "textures (3 classes, 240)", X, y
    digits = load_digits()
    images = np.repeat(np.repeat((digits.images[:n_digits] * 255 / 16).astype(np.uint8), 4, 1), 4, 2)
    yield f"digits (10 classes, {n_digits}, 32 px)", images, digits.target[:n_digits]


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--digits", type=int, default=600)
    parser.add_argument("--write")
    args = parser.parse_args(argv)
    rows = []
    for name, X, y in datasets(args.digits):
        splitter = StratifiedShuffleSplit(args.splits, test_size=0.5, random_state=0)
        cos_mean, cos_min, acc = [], [], {"float32": [], "int8": []}
        for train, test in splitter.split(X, y):
            features = {}
            for precision in ("float32", "int8"):
                featurizer = PretrainedCNNFeaturizer(
                    weights="IMAGENET1K_V1", image_size=args.image_size, device="cpu", precision=precision
                ).fit(X[train])
                features[precision] = featurizer.transform(X), featurizer
            f32, q8 = features["float32"][0], features["int8"][0]
            cos_mean.append(cosine(f32, q8).mean())
            cos_min.append(cosine(f32, q8).min())
            for precision, (embedded, _) in features.items():
                probe = LogisticRegression(max_iter=3000).fit(embedded[train], y[train])
                acc[precision].append(probe.score(embedded[test], y[test]))
        a32, a8 = np.mean(acc["float32"]), np.mean(acc["int8"])
        rows.append(
            f"| {name} | {np.mean(cos_mean):.4f} | {np.min(cos_min):.4f} | {a32:.3f} | {a8:.3f} | "
            f"{100 * (a8 - a32):+.1f} |"
        )
    report = "\n".join(
        [
            f"MobileNetV2 IMAGENET1K_V1, {args.image_size} px, {args.splits} stratified 50/50 splits, "
            "int8 calibrated on the training half",
            "",
            "| data | cosine int8/fp32, mean | worst row | probe accuracy fp32 | int8 | change (points) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    emit(report, args.write)


if __name__ == "__main__":
    main()
