"""Start-up time: ``import sklearn_tl`` and ``sklearn-tl --help`` against ``import torch, torchvision``.

Each command runs in a fresh interpreter, ``--repeats`` times, interleaved
(one run of every command per round, so a busy spell of the machine hits all
of them), and the table gives the median wall time of each. With ``--before
REF`` the same package commands also run on the package as it was at git
commit REF (extracted with ``git archive`` into a temporary folder), side by
side with the working tree.

Run from the repository root::

    python benchmarks/bench_import.py --repeats 5 --before 6733dde
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)

ROOT = Path(__file__).resolve().parents[1]

BASELINES = {
    "import torch, torchvision": ["-c", "import torch, torchvision"],
    "import torch, torchvision, sklearn.base": ["-c", "import torch, torchvision, sklearn.base"],
}
PACKAGE = {
    "import sklearn_tl": ["-c", "import sklearn_tl"],
    "from sklearn_tl import PretrainedCNNFeaturizer": ["-c", "from sklearn_tl import PretrainedCNNFeaturizer"],
    "from sklearn_tl import FineTuneClassifier": ["-c", "from sklearn_tl import FineTuneClassifier"],
    "sklearn-tl --help": ["-m", "sklearn_tl", "--help"],
    "sklearn-tl train --help": ["-m", "sklearn_tl", "train", "--help"],
}


def _seconds(args, tree: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))  # this tree's sklearn_tl wins over an installed one
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", default=None, help="git commit to compare with (e.g. main)")
    parser.add_argument("--write", help="also write the markdown results to this file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"now": ROOT}
        if args.before:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "sklearn_tl"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", scratch], input=archive, check=True)
            trees = {f"at {args.before}": Path(scratch), **trees}
        runs = [(label, "", args_) for label, args_ in BASELINES.items()]
        runs += [(label, name, args_) for label, args_ in PACKAGE.items() for name in trees]
        times = {(label, name): [] for label, name, _ in runs}
        for _ in range(args.repeats):
            for label, name, args_ in runs:
                times[label, name].append(_seconds(args_, trees.get(name, ROOT)))

    median = {key: statistics.median(values) for key, values in times.items()}
    base = median["import torch, torchvision", ""]
    names = list(trees)
    lines = [
        f"Median of {args.repeats} interleaved runs, seconds (Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
        "after); in brackets: minus `import torch, torchvision`.",
        "",
        "| command | " + " | ".join(f"sklearn_tl {n}" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label in BASELINES:
        value = median[label, ""]
        lines.append(f"| `{label}` | " + " | ".join([f"{value:.2f} ({value - base:+.2f})"] * len(names)) + " |")
    for label in PACKAGE:
        cells = [f"{median[label, n]:.2f} ({median[label, n] - base:+.2f})" for n in names]
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
