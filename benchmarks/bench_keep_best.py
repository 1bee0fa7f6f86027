"""Issue 22 item 5: does ``train_split="auto"`` (the default) keep fine-tuning from ending below its probe head?

For each set, budget (``max_epochs``) and seed, one fit with the default
hold-out (``train_split="auto"``: 10 % of the images, stratified) records,
for the start (the LP-FT probe head, epoch 0) and every epoch, one
validation loss per held-out image, and the test accuracy of that epoch's
weights. The fit runs with ``callbacks__keep_best__margin=0``; the margin
only decides which of the recorded weights are kept (training is the
same), so each rule is replayed on the record: ``margin=m`` keeps the
epoch with the lowest mean validation loss if it is below the start's by
more than m standard errors of the paired per-image differences, else the
start. When the start is kept, the default fits the head again on every
image: that is the probe (``max_epochs=0``), whose test accuracy is used.
"last, no hold-out" is the previous default (``train_split=None``: every
image trains, the last epoch is kept), from a second fit.

Printed: test accuracy minus the probe's, in points, the mean over seeds
per cell; then the lowest cell, the mean cell and the cells more than 1
point below, per column.

    cd benchmarks
    OMP_NUM_THREADS=1 python bench_keep_best.py --datasets digits300/1,digits300/2,textures --seeds 0,1,2 --log a.jsonl
    OMP_NUM_THREADS=1 python bench_keep_best.py --datasets photos,digits --seeds 0,1,2 --log b.jsonl
    python bench_keep_best.py --replay a.jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import math

import numpy as np
import torch
from skorch.callbacks import Callback

MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0)


class _Record(Callback):
    """Test accuracy after every epoch, without moving torch's random stream."""

    def __init__(self, X, y, log):
        self.X, self.y, self.log = X, y, log

    def on_epoch_end(self, net, **kwargs):
        with torch.random.fork_rng(devices=[]):
            self.log.append(("test", len(net.history), float(np.mean(net.predict(self.X) == self.y))))


def run(datasets, epochs, seeds, path, no_holdout):
    from bench_finetune import DATASETS, WEIGHTS

    from sklearn_tl.estimators.classifier import FineTuneClassifier
    from sklearn_tl.finetune.callbacks import KeepBestEpoch

    log = []
    consider = KeepBestEpoch._consider

    def recording(self, net, epoch, losses):  # every candidate's per-image validation losses
        log.append(("valid", epoch, losses.tolist()))
        return consider(self, net, epoch, losses)

    KeepBestEpoch._consider = recording
    common = dict(weights=WEIGHTS, image_size=64, backend="torch")
    with open(path, "a") as out:
        for name in datasets:
            X, y, X_test, y_test = DATASETS[name]()
            for seed in seeds:
                probe = FineTuneClassifier("mobilenet_v2", max_epochs=0, random_state=seed, **common).fit(X, y)
                probe_acc = probe.score(X_test, y_test)
                for e in epochs:
                    log.clear()
                    clf = FineTuneClassifier(
                        "mobilenet_v2", max_epochs=e, random_state=seed, callbacks__keep_best__margin=0,
                        callbacks=[("record", _Record(X_test, y_test, log))], **common,
                    ).fit(X, y)
                    row = dict(set=name, seed=seed, epochs=e, probe=probe_acc, log=list(log))
                    if no_holdout:
                        last = FineTuneClassifier("mobilenet_v2", max_epochs=e, random_state=seed, train_split=None,
                                                  **common).fit(X, y)
                        row["no_holdout"] = last.score(X_test, y_test)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(name, seed, e, f"probe {probe_acc:.3f}", f"margin-0 kept epoch {clf.best_epoch_}", flush=True)


def kept_epoch(valid: dict, margin: float) -> int:
    start, epochs = valid.get(0), [e for e in valid if e != 0]
    if start is None or not epochs:
        return 0
    best = min(epochs, key=lambda e: valid[e].mean())
    diff = valid[best] - start
    spread = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return best if diff.mean() + margin * spread < 0 else 0


def replay(paths):
    rows = [json.loads(line) for path in paths for line in open(path)]
    columns = ["last epoch, held out", "last, no hold-out"] + [f"margin={m:g}" for m in MARGINS]
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        valid = {e: np.asarray(v) for kind, e, v in row["log"] if kind == "valid"}
        test = {e: v for kind, e, v in row["log"] if kind == "test"}
        cell = cells[(row["set"], row["epochs"])]
        cell["probe"].append(row["probe"])
        cell[columns[0]].append(test[max(test)] - row["probe"])
        if "no_holdout" in row:
            cell[columns[1]].append(row["no_holdout"] - row["probe"])
        for m, column in zip(MARGINS, columns[2:]):
            e = kept_epoch(valid, m)
            cell[column].append(0.0 if e == 0 else test[e] - row["probe"])
    print("| set | max_epochs | seeds | probe | " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(columns))
    summary = collections.defaultdict(list)
    for key in sorted(cells, key=lambda k: (k[0], k[1])):
        cell = cells[key]
        values = []
        for column in columns:
            if cell[column]:
                summary[column].append(100 * np.mean(cell[column]))
                values.append(f"{100 * np.mean(cell[column]):+.1f}")
            else:
                values.append("")
        print(f"| {key[0]} | {key[1]} | {len(cell['probe'])} | {np.mean(cell['probe']):.3f} | " + " | ".join(values) + " |")
    for label, fn in (("lowest cell", min), ("mean cell", np.mean), ("cells below -1", lambda v: sum(x < -1 for x in v))):
        print(f"| {label} | | | | " + " | ".join(
            (f"{fn(summary[c]):+.1f}" if label != "cells below -1" else str(fn(summary[c]))) if summary[c] else ""
            for c in columns) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits300/1,digits300/2,textures,photos,digits")
    parser.add_argument("--epochs", default="1,2,3,5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--log", default="keep_best.jsonl", help="JSON lines to append the record to")
    parser.add_argument("--no-holdout", action="store_true", help="also fit the previous default (train_split=None)")
    parser.add_argument("--replay", nargs="+", metavar="JSONL", help="only print the table of these records")
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay)
    run(args.datasets.split(","), [int(e) for e in args.epochs.split(",")], [int(s) for s in args.seeds.split(",")],
        args.log, args.no_holdout)
    replay([args.log])


if __name__ == "__main__":
    main()
