"""Fine-tuning at small budgets: test accuracy of FineTuneClassifier variants at several max_epochs, one fit each.

The quick side-by-side behind benchmarks/README.md "Fine-tuning at small budgets"
(issue 22 item 5): the same sets and settings as ``bench_finetune.py
--epochs-list`` (MobileNetV2, IMAGENET1K_V1, 64 px, seed 0), without the
probe-head and last-epoch bookkeeping, so that candidates run in parallel
processes on a busy machine.

    cd benchmarks
    OMP_NUM_THREADS=1 python bench_budget_variants.py digits300/1 1,2,3,5,10 '{"head only": {"backbone_lr_scale": 0}}'
"""

import json
import sys
import time

from bench_finetune import DATASETS, WEIGHTS

from sklearn_tl.estimators.classifier import FineTuneClassifier

name, epochs, variants = sys.argv[1], [int(e) for e in sys.argv[2].split(",")], json.loads(sys.argv[3])
data = DATASETS[name]()
for label, params in variants.items():
    for e in epochs:
        start = time.perf_counter()
        clf = FineTuneClassifier("mobilenet_v2", weights=WEIGHTS, image_size=64, backend="torch", random_state=0,
                                 max_epochs=e, **params).fit(*data[:2])
        print(name, label, e, round(clf.score(*data[2:]), 3), f"{time.perf_counter() - start:.0f}s", flush=True)
