"""Wall time of a GridSearchCV over SVC's C, with and without the embedding cache.

Real images (patches of scikit-image's brick/grass/gravel photos), the real
pretrained MobileNetV2 (``IMAGENET1K_V1``, offline), a featurizer → SVC
Pipeline, 5-fold CV over several ``C``. Three timings in one run:

- one featurization of the whole dataset (fit + transform, no cache);
- the grid search without a cache (every fold and candidate re-embeds);
- the grid search with a cold cache (a fresh directory).

Run from the repository root::

    python benchmarks/bench_cache.py --write benchmarks/RESULTS_cache.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from sklearn_tl import PretrainedCNNFeaturizer, load_textures
from sklearn_tl.cache.store import EmbeddingCache


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=100, help="patches per texture (3 textures)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--write", help="also write the markdown results to this file")
    args = parser.parse_args(argv)

    X, y = load_textures(n_per_class=args.n_per_class, size=96, random_state=0, return_X_y=True)

    def featurizer(cache=None):
        return PretrainedCNNFeaturizer("mobilenet_v2", weights="IMAGENET1K_V1", image_size=args.image_size, cache=cache)

    def search(cache):
        pipeline = Pipeline([("features", featurizer(cache)), ("svc", SVC())])
        cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)
        return GridSearchCV(pipeline, {"svc__C": args.C}, cv=cv, n_jobs=args.n_jobs).fit(X, y)

    featurizer().fit_transform(X[:8])  # one-time start-up (thread pools, kernels) is timed in no row
    _, single = _timed(lambda: featurizer().fit_transform(X))
    print(f"single featurization: {single:.1f} s")
    with tempfile.TemporaryDirectory() as location:
        cached_search, cached = _timed(lambda: search(location))
        store = EmbeddingCache(location)
        entries, size = store.n_entries, store.size()
    print(f"grid search, cache:    {cached:.1f} s")
    plain_search, uncached = _timed(lambda: search(None))
    print(f"grid search, no cache: {uncached:.1f} s")
    assert np.allclose(cached_search.cv_results_["mean_test_score"], plain_search.cv_results_["mean_test_score"])

    fits = args.folds * len(args.C) + 1
    lines = [
        "## Embedding cache: GridSearchCV wall time",
        "",
        f"{len(X)} real texture patches, MobileNetV2 `IMAGENET1K_V1` at image_size={args.image_size}, "
        f"Pipeline(featurizer → SVC), {args.folds}-fold GridSearchCV over C={args.C} "
        f"({fits} pipeline fits including the refit), n_jobs={args.n_jobs}.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} (threads: {torch.get_num_threads()}).",
        "",
        "| run | wall time (s) | × single featurization |",
        "|---|---:|---:|",
        f"| one featurization of the dataset (fit + transform) | {single:.1f} | 1.00 |",
        f"| grid search, cold cache | {cached:.1f} | {cached / single:.2f} |",
        f"| grid search, no cache | {uncached:.1f} | {uncached / single:.2f} |",
        "",
        f"Cached search is {uncached / cached:.1f}× faster than the uncached one, and costs "
        f"{cached / single:.2f}× one featurization (target ≤ 1.2×). Cache after the run: {entries} entries, "
        f"{size / 1024:.0f} KiB. Best CV accuracy {cached_search.best_score_:.3f} (identical with and without cache).",
        "",
        "Command: `python benchmarks/bench_cache.py "
        + " ".join(
            [f"--n-per-class {args.n_per_class}", f"--image-size {args.image_size}", f"--folds {args.folds}",
             "--C " + " ".join(f"{c:g}" for c in args.C), f"--n-jobs {args.n_jobs}"]
        )
        + "`",
    ]
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
