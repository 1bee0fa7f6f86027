"""Two processes embedding disjoint halves of a folder into one shared cache, against no cache.

Issue 16's measure of whether cache users run side by side: ``N`` PNG files
of real texture patches, MobileNetV2 (``weights=None``, the same seeded model
in both processes) at ``image_size=96``, each process on its half with one
torch thread. A run's wall time is from the earlier process's start of
``transform`` to the later one's end (both start together at a barrier, after
imports, fit and a warm-up). Runs alternate: no cache, a fresh shared cache,
... in the same two processes, so imports are paid once.
A cache that serializes its users makes the cached run ~2x the uncached one;
the target is <= 1.1x.

    python benchmarks/bench_cache_parallel.py --n-images 600 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)

REPO = Path(__file__).resolve().parents[1]


def worker(paths_file, folder, caches):
    """One process: for each run, fit on its cache, wait at the barrier, embed its half, record the interval."""
    import torch

    torch.set_num_threads(1)
    from sklearn_tl import PretrainedCNNFeaturizer

    paths, name = Path(paths_file).read_text().split("\n"), Path(paths_file).stem
    PretrainedCNNFeaturizer("mobilenet_v2", weights=None, image_size=96, progress=False).fit(paths[:1]).transform(
        paths[:8]
    )  # warm-up (thread pool, kernels), with no cache
    for run, cache in enumerate(json.loads(caches)):
        featurizer = PretrainedCNNFeaturizer("mobilenet_v2", weights=None, image_size=96, batch_size=32,
                                             precision="float32", random_state=0, progress=False, cache=cache)
        featurizer.fit(paths[:1])
        Path(folder, f"{name}.ready{run}").touch()
        while not Path(folder, f"go{run}").exists():
            time.sleep(0.005)
        start = time.time()
        rows = featurizer.transform(paths)
        end = time.time()
        np.save(Path(folder, f"{name}.{run}.npy"), rows)
        Path(folder, f"{name}.{run}.json").write_text(json.dumps({"start": start, "end": end}))


def run_pairs(halves, caches) -> list[tuple[float, list[float], np.ndarray]]:
    """For each cache (None: no cache), the wall time of both processes, their own times, and the rows."""
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
        processes = []
        for index, half in enumerate(halves):
            paths_file = Path(folder, f"half{index}.txt")
            paths_file.write_text("\n".join(half))
            command = [sys.executable, __file__, "--worker", str(paths_file), folder, json.dumps(caches)]
            processes.append(subprocess.Popen(command, env=env))
        results = []
        for run in range(len(caches)):
            while not all(Path(folder, f"half{i}.ready{run}").exists() for i in range(len(halves))):
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError("a worker process ended early")
                time.sleep(0.01)
            Path(folder, f"go{run}").touch()  # both start together
            while not all(Path(folder, f"half{i}.{run}.json").exists() for i in range(len(halves))):
                if any(p.poll() not in (None, 0) for p in processes):
                    raise RuntimeError("a worker process failed")
                time.sleep(0.01)
            spans = [json.loads(Path(folder, f"half{i}.{run}.json").read_text()) for i in range(len(halves))]
            rows = np.concatenate([np.load(Path(folder, f"half{i}.{run}.npy")) for i in range(len(halves))])
            wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
            results.append((wall, [s["end"] - s["start"] for s in spans], rows))
        for process in processes:
            process.wait()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of (no cache, cache) runs, alternated")
    parser.add_argument("--write", help="also append the markdown results to this file")
    parser.add_argument("--worker", nargs=3, metavar=("PATHS", "FOLDER", "CACHES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(*args.worker)

    from PIL import Image

    from sklearn_tl import load_textures

    X, _ = load_textures(n_per_class=-(-args.n_images // 3), size=128, random_state=0, return_X_y=True)
    times = {"no cache": [], "shared cache": []}
    balance = {"no cache": [], "shared cache": []}  # shorter process time / longer: ~0.5 when they take turns
    with tempfile.TemporaryDirectory() as images:
        paths = []
        for index, image in enumerate(X[: args.n_images]):
            paths.append(os.path.join(images, f"{index:05d}.png"))
            Image.fromarray(image).save(paths[-1])
        halves = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
        with tempfile.TemporaryDirectory() as caches:
            # Alternated: no cache, a fresh (cold) shared cache, no cache, another fresh cache, ...
            plan = [None if i % 2 == 0 else os.path.join(caches, str(i)) for i in range(2 * args.repeats)]
            results = run_pairs(halves, plan)
        for cache, (wall, own, rows) in zip(plan, results):
            key = "no cache" if cache is None else "shared cache"
            times[key].append(wall)
            balance[key].append(min(own) / max(own))
            print(f"{key:>12}: {wall:.1f} s (processes {own[0]:.1f}, {own[1]:.1f} s)", flush=True)
            np.testing.assert_allclose(rows, results[0][2], rtol=1e-5, atol=1e-6)  # the cache changes no row
    median = {key: statistics.median(values) for key, values in times.items()}
    ratio = median["shared cache"] / median["no cache"]
    lines = [
        "## Embedding cache: two processes on disjoint halves",
        "",
        f"{args.n_images} PNG files of real texture patches, MobileNetV2 weights=None at image_size=96, "
        f"2 processes x 1 torch thread, {os.cpu_count()} CPU cores, medians of {args.repeats} alternated runs.",
        "",
        "| run | wall time (s) | shorter / longer process time |",
        "|---|---:|---:|",
        *(f"| {key} | {value:.1f} | {statistics.median(balance[key]):.2f} |" for key, value in median.items()),
        "",
        f"Shared cache / no cache: **{ratio:.2f}x** (target ≤ 1.1x). Rows identical with and without the cache.",
        "Processes that take turns finish at ~0.5 of each other's time, side by side at ~1.0; the wall-time",
        "ratio shows the cost only when both processes have a free core (an idle machine).",
        "",
        f"Command: `python benchmarks/bench_cache_parallel.py --n-images {args.n_images} --repeats {args.repeats}`",
    ]
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
