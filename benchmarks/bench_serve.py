"""A served model under load: ``mlflow models serve`` on loopback against in-process ``predict``.

A Pipeline (PretrainedCNNFeaturizer MobileNetV2 IMAGENET1K_V1 at 64 px + LogisticRegression),
fitted on a column of JPEG bytes, is logged with ``mlflow.sklearn.log_model`` in MLflow's default
format (skops) and served with ``mlflow models serve --env-manager local -w W`` on 127.0.0.1.
C client threads each send M requests of k base64 JPEG images (``dataframe_split``). The counts
are bounded and the server is always stopped. Reported, side by side in one run:

- errors and wrong answers (each answer is checked against the local ``predict``): both must be 0;
- requests/s, images/s, p50 and p95 latency;
- the ceiling: in-process ``predict`` images/s on the same images, in k-image calls and in one
  call over all images (measured before and after the served run; the better of the two).

    python benchmarks/bench_serve.py --clients 8 --requests 15 --images 4 --workers 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.mlflow_server

from _report import emit  # noqa: E402  (benchmarks/_report.py; scripts run from benchmarks/)

from tests.mlflow_server import invocation_body, invoke, jpeg_crops, mlflow_server  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=15, help="requests per client")
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (-w)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--write", default=None)
    args = parser.parse_args()

    import mlflow
    import pandas as pd
    from sklearn.datasets import load_sample_images
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    import sklearn_tl
    from sklearn_tl import PretrainedCNNFeaturizer

    images, labels = jpeg_crops(load_sample_images().images, n_per_photo=40)
    X = pd.DataFrame({"image": images})
    pipe = make_pipeline(
        PretrainedCNNFeaturizer("mobilenet_v2", weights="IMAGENET1K_V1", image_size=args.image_size),
        LogisticRegression(max_iter=1000),
    ).fit(X, labels)
    expected = pipe.predict(X)

    # The ceiling: in-process predict on the same images, in k-image calls and in one call; measured
    # before and after the served run (the better of the two is the ceiling: other jobs share the machine).
    k = args.images
    pipe.predict(X.iloc[:k])  # warm-up

    def ceiling():
        start = time.perf_counter()
        for i in range(0, len(X), k):
            pipe.predict(X.iloc[i : i + k])
        small = len(X) / (time.perf_counter() - start)
        start = time.perf_counter()
        pipe.predict(X)
        return small, len(X) / (time.perf_counter() - start)

    before = ceiling()

    workdir = tempfile.mkdtemp(prefix="bench_serve_")
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "bench_serve", artifact_location=Path(workdir, "artifacts").as_uri()))  # not ./mlruns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(pipe, name="model", input_example=X.iloc[:2],
                                            skops_trusted_types=sklearn_tl.skops_trusted_types())

    n_total = args.clients * args.requests
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(X) - k, size=n_total)
    bodies = [invocation_body(images[s : s + k]) for s in starts]
    latencies, errors, wrong = [], 0, 0

    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    with mlflow_server(info.model_uri, workers=args.workers, env=env, log_path=os.path.join(workdir, "serve.log")) as url:
        invoke(url, bodies[0])  # warm-up: the first call loads lazily

        def client(c):
            nonlocal errors, wrong
            for r in range(args.requests):
                i = c * args.requests + r
                t0 = time.perf_counter()
                try:
                    answer = invoke(url, bodies[i], timeout=120)
                except Exception:  # noqa: BLE001  (any failed request counts as an error)
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                if list(answer) != expected[starts[i] : starts[i] + k].tolist():
                    wrong += 1

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        elapsed = time.perf_counter() - start
    local_small, local_batch = np.maximum(before, ceiling())

    done = len(latencies)
    q = statistics.quantiles(latencies, n=20) if done >= 2 else [float("nan")] * 19
    served = done * k / elapsed
    report = (
        f"### MLflow serving: {args.clients} clients x {args.requests} requests x {k} images, "
        f"-w {args.workers}, MobileNetV2 {args.image_size} px, {os.cpu_count()} CPUs\n\n"
        "| errors | wrong answers | requests/s | images/s | p50 latency (ms) | p95 latency (ms) "
        f"| in-process predict img/s ({k}-image calls) | in-process img/s (one {len(X)}-image call) "
        "| served / in-process batch |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {errors} | {wrong} | {done / elapsed:.1f} | {served:.0f} | {1000 * statistics.median(latencies):.0f} "
        f"| {1000 * q[18]:.0f} | {local_small:.0f} | {local_batch:.0f} | {served / local_batch:.2f}x |\n"
    )
    emit(report, args.write)
    if errors or wrong:
        sys.exit(1)


if __name__ == "__main__":
    main()
