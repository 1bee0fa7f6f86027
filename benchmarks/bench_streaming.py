"""Streaming a folder of image files: images/second and peak memory.

Writes a few thousand real photo crops as JPEG files, then featurizes the list
of paths in a fresh process per setting (so each peak RSS is its own), with
``num_workers`` 0 and 2, for two sizes of the list: peak memory must not grow
with the number of files.

    python benchmarks/bench_streaming.py --n-files 3000 --write benchmarks/results/streaming.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from PIL import Image

RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    from sklearn_tl import PretrainedCNNFeaturizer
    paths = open(sys.argv[1]).read().split("\\n")[: int(sys.argv[2])]
    featurizer = PretrainedCNNFeaturizer(weights="IMAGENET1K_V1", image_size=int(sys.argv[4]),
                                         num_workers=int(sys.argv[3]), progress=False).fit(paths[:1])
    featurizer.transform(paths[:32])  # warm-up
    start = time.perf_counter()
    Z = featurizer.transform(paths)
    seconds = time.perf_counter() - start
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": len(Z), "main_mib": main, "worker_mib": workers}))
    """
)


def write_files(n_files: int, folder: str) -> str:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_files):
        photo = photos[i % 2]
        top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 400)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(photo[top : top + 300, left : left + 400]).save(path, quality=85)
        paths.append(path)
    listing = os.path.join(folder, "paths.txt")
    with open(listing, "w") as f:
        f.write("\n".join(paths))
    return listing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-files", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--write", default=None)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp()
    listing = write_files(args.n_files, folder)
    script = os.path.join(folder, "run.py")
    with open(script, "w") as f:
        f.write(RUN)
    lines = [
        f"### Streaming {args.n_files} JPEG files (400x300 real photo crops), MobileNetV2 at {args.image_size} px, "
        f"{os.cpu_count()} cores",
        "",
        "| files | num_workers | images/s | peak RSS main (MiB) | peak RSS largest worker (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in (args.n_files // 10, args.n_files):
        for workers in (0, 2):
            out = subprocess.run([sys.executable, script, listing, str(n), str(workers), str(args.image_size)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {n} | {workers} | {result['rows'] / result['seconds']:.1f} | {result['main_mib']:.0f} | "
                f"{result['worker_mib']:.0f} |"
            )
            print(lines[-1], flush=True)
    held = args.n_files * 400 * 300 * 3 / 2**20
    lines += ["", f"Holding all {args.n_files} decoded photos at once would take {held:.0f} MiB.", ""]
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
