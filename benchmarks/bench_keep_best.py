"""Issue 22 item 5: does ``train_split="auto"`` (the default) keep fine-tuning from ending below its probe head?

For each set, budget (``max_epochs``) and seed, one fit with a hold-out of
10 % of the images (stratified; ``train_split="auto"``'s, made here at
every budget) records, for the start (the LP-FT probe head, epoch 0) and
every epoch, one validation loss per held-out image, and the test accuracy
of that epoch's weights. The fit runs with ``callbacks__keep_best__margin=0``;
the margin only decides which of the recorded weights are kept (training is
the same), so each rule is replayed on the record: ``margin=m`` keeps the
epoch with the lowest mean validation loss if it is below the start's by
more than m standard errors of the paired per-image differences, else the
start. When the start is kept, ``"auto"`` fits the head again on every
image: that is the probe (``max_epochs=0``), whose test accuracy is used.
"no hold-out" is ``train_split=None`` (every image trains, the last epoch
is kept; the default before), from a second fit (``--no-holdout``).
"default" is what ``train_split="auto"`` does: the hold-out with margin 1
in runs of fewer than ``AUTO_MAX_STEPS`` (50) optimisation steps
(``max_epochs`` x batches of 32), no hold-out in longer ones.

Printed: test accuracy minus the probe's, in points, the mean over seeds
per cell; then the lowest cell, the mean cell and the cells more than 1
point below, per column.

    cd benchmarks
    OMP_NUM_THREADS=1 python bench_keep_best.py --datasets digits300/1,digits300/2,textures --no-holdout --log a.jsonl
    OMP_NUM_THREADS=1 python bench_keep_best.py --datasets photos,digits --no-holdout --log b.jsonl
    python bench_keep_best.py --replay a.jsonl b.jsonl

``--check`` fits the real defaults (no replay, no recording) beside
``train_split=None`` on other set sizes, which played no part in choosing
the rule:

    OMP_NUM_THREADS=1 python bench_keep_best.py --check --datasets digits250,textures120
    OMP_NUM_THREADS=1 python bench_keep_best.py --check --datasets photos200   # beside it

``--issue-case FOLD`` is issue 22's own case at the default image size
(224 px): the first 300 of ``load_digits``, ``StratifiedKFold(2)`` as
``cross_val_score(..., cv=2)`` makes it, one fold per process:

    OMP_NUM_THREADS=1 python bench_keep_best.py --issue-case 0 --epochs 1,3,10 --seeds 0
    OMP_NUM_THREADS=1 python bench_keep_best.py --issue-case 1 --epochs 1,3,10 --seeds 0   # beside it
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
AUTO_MAX_STEPS, BATCH = 50, 32  # sklearn_tl.finetune.hooks.AUTO_MAX_STEPS; the CPU's batch size


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
    from sklearn_tl.finetune import hooks
    from sklearn_tl.finetune.callbacks import KeepBestEpoch

    hooks.AUTO_MAX_STEPS = 10**9  # record the hold-out at every budget; the replay applies the real limit

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
                    row = dict(set=name, seed=seed, epochs=e, n_train=len(y), probe=probe_acc, log=list(log))
                    if no_holdout:
                        last = FineTuneClassifier("mobilenet_v2", max_epochs=e, random_state=seed, train_split=None,
                                                  **common).fit(X, y)
                        row["no_holdout"] = last.score(X_test, y_test)
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(name, seed, e, f"probe {probe_acc:.3f}", f"margin-0 kept epoch {clf.best_epoch_}", flush=True)


def check(datasets, epochs, seeds):
    """The defaults as they are, and train_split=None, against the probe head: one line per fit, then the table."""
    from bench_finetune import DATASETS, WEIGHTS

    from sklearn_tl.estimators.classifier import FineTuneClassifier

    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for name in datasets:
        X, y, X_test, y_test = DATASETS[name]()
        for seed in seeds:
            common = dict(weights=WEIGHTS, image_size=64, backend="torch", random_state=seed)
            probe = FineTuneClassifier("mobilenet_v2", max_epochs=0, **common).fit(X, y).score(X_test, y_test)
            for e in epochs:
                default = FineTuneClassifier("mobilenet_v2", max_epochs=e, **common).fit(X, y)
                last = FineTuneClassifier("mobilenet_v2", max_epochs=e, train_split=None, **common).fit(X, y)
                held_out = "valid_loss" in default.history[-1]
                cell = cells[(f"{name} ({len(y)})", e)]
                cell["probe"].append(probe)
                cell["default"].append(default.score(X_test, y_test) - probe)
                cell["no hold-out"].append(last.score(X_test, y_test) - probe)
                cell["held out"].append(held_out)
                print(name, seed, e, f"probe {probe:.4f}", f"default {default.score(X_test, y_test):.4f}",
                      f"(held out: {held_out}, kept epoch {default.best_epoch_})",
                      f"no hold-out {last.score(X_test, y_test):.4f}", flush=True)
    print("| set (train images) | max_epochs | held out | probe | default | last, no hold-out |")
    print("|---|---:|---|---:|---:|---:|")
    for (name, e), cell in cells.items():
        held = "yes" if all(cell["held out"]) else "no" if not any(cell["held out"]) else "some"
        print(f"| {name} | {e} | {held} | {np.mean(cell['probe']):.3f} | {100 * np.mean(cell['default']):+.1f} "
              f"| {100 * np.mean(cell['no hold-out']):+.1f} |")
    for column in ("default", "no hold-out"):
        means = [100 * np.mean(cell[column]) for cell in cells.values()]
        print(f"{column}: lowest cell {min(means):+.1f}, mean cell {np.mean(means):+.1f}, "
              f"cells below -1: {sum(m < -1 for m in means)}")


def issue_case(fold, epochs, seed=0):
    """300 digits, cv=2, defaults except max_epochs (and the weights: the offline IMAGENET1K_V1 file)."""
    from bench_finetune import WEIGHTS
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold

    from sklearn_tl.estimators.classifier import FineTuneClassifier

    data = load_digits()
    X, y = (data.images[:300] / 16.0).astype(np.float32), data.target[:300]
    train, test = list(StratifiedKFold(n_splits=2).split(X, y))[fold]
    common = dict(weights=WEIGHTS, random_state=seed)
    probe = FineTuneClassifier("mobilenet_v2", max_epochs=0, **common).fit(X[train], y[train]).score(X[test], y[test])
    print(f"fold {fold + 1}, seed {seed}: probe head (max_epochs=0) {probe:.3f}", flush=True)
    for e in epochs:
        default = FineTuneClassifier("mobilenet_v2", max_epochs=e, **common).fit(X[train], y[train])
        last = FineTuneClassifier("mobilenet_v2", max_epochs=e, train_split=None, **common).fit(X[train], y[train])
        print(f"fold {fold + 1}, seed {seed}: max_epochs={e}: default {default.score(X[test], y[test]):.3f} "
              f"(held out: {'valid_loss' in default.history[-1]}, kept epoch {default.best_epoch_}), "
              f"train_split=None {last.score(X[test], y[test]):.3f}", flush=True)


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
    columns = ["default", "last epoch, held out", "last, no hold-out"] + [f"margin={m:g}" for m in MARGINS]
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        valid = {e: np.asarray(v) for kind, e, v in row["log"] if kind == "valid"}
        test = {e: v for kind, e, v in row["log"] if kind == "test"}
        cell = cells[(row["set"], row["epochs"])]
        cell["probe"].append(row["probe"])
        cell[columns[1]].append(test[max(test)] - row["probe"])
        if "no_holdout" in row:
            cell[columns[2]].append(row["no_holdout"] - row["probe"])
        for m, column in zip(MARGINS, columns[3:]):
            e = kept_epoch(valid, m)
            cell[column].append(0.0 if e == 0 else test[e] - row["probe"])
        short = row["epochs"] * math.ceil(row["n_train"] / BATCH) < AUTO_MAX_STEPS
        if short or "no_holdout" in row:
            cell[columns[0]].append(cell["margin=1"][-1] if short else cell[columns[2]][-1])
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
        head = f"| {key[0]} | {key[1]} | {len(cell['probe'])} | {np.mean(cell['probe']):.3f} | "
        print(head + " | ".join(values) + " |")
    below = lambda v: sum(x < -1 for x in v)  # noqa: E731
    for label, fn in (("lowest cell", min), ("mean cell", np.mean), ("cells below -1", below)):
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
    parser.add_argument("--check", action="store_true", help="fit the defaults as they are beside train_split=None")
    parser.add_argument("--issue-case", type=int, choices=(0, 1), default=None, metavar="FOLD",
                        help="issue 22's 300 digits, cv=2, at the default image size: this fold")
    args = parser.parse_args()
    if args.issue_case is not None:
        for seed in args.seeds.split(","):
            issue_case(args.issue_case, [int(e) for e in args.epochs.split(",")], int(seed))
        return None
    if args.replay:
        return replay(args.replay)
    if args.check:
        return check(args.datasets.split(","), [int(e) for e in args.epochs.split(",")],
                     [int(s) for s in args.seeds.split(",")])
    run(args.datasets.split(","), [int(e) for e in args.epochs.split(",")], [int(s) for s in args.seeds.split(",")],
        args.log, args.no_holdout)
    replay([args.log])


if __name__ == "__main__":
    main()
