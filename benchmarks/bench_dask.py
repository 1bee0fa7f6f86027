"""Scaling out: featurize_dask on a LocalCluster with 1 and 2 worker processes.

Real texture photos written as PNG files, MobileNetV2 (IMAGENET1K_V1),
one thread per worker, measured in one run, side by side with the plain local
``transform`` (one process, torch using every core).

    python benchmarks/bench_dask.py --n-images 600 --write benchmarks/results/dask.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask.bag as db
import distributed
import numpy as np
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from PIL import Image

from sklearn_tl import PretrainedCNNFeaturizer, featurize_dask, load_textures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--write", default=None)
    args = parser.parse_args(argv)

    X, _ = load_textures(n_per_class=args.n_images // 3, size=96, return_X_y=True)
    folder = tempfile.mkdtemp()
    paths = []
    for i, image in enumerate(X):
        paths.append(os.path.join(folder, f"{i:05d}.png"))
        Image.fromarray(image).save(paths[-1])
    featurizer = PretrainedCNNFeaturizer(weights="IMAGENET1K_V1", image_size=args.image_size, progress=False)
    featurizer.fit(paths[:1])
    featurizer.transform(paths[:32])  # warm-up

    start = time.perf_counter()
    reference = featurizer.transform(paths)
    rows = [("local transform (1 process, all cores)", time.perf_counter() - start)]
    for n_workers in (1, 2):
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40) as cluster, \
                distributed.Client(cluster):
            featurize_dask(featurizer, db.from_sequence(paths[:64], npartitions=n_workers)).compute()  # warm-up
            start = time.perf_counter()
            embeddings = featurize_dask(featurizer, db.from_sequence(paths, npartitions=args.partitions)).compute()
            rows.append((f"featurize_dask, {n_workers} worker(s) x 1 thread", time.perf_counter() - start))
            np.testing.assert_allclose(embeddings, reference, rtol=1e-4, atol=1e-5)

    one_worker = rows[1][1]
    lines = [
        f"### featurize_dask scaling ({len(paths)} PNG files, MobileNetV2 at {args.image_size} px, "
        f"{os.cpu_count()} cores, {args.partitions} partitions)",
        "",
        "| run | wall time (s) | images/s | speed-up vs 1 worker |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds:.1f} | {len(paths) / seconds:.1f} | {one_worker / seconds:.2f} |")
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
