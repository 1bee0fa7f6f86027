"""Model file sizes and save/load times, per format.

Fits, on 16 random 64 px images, a MobileNetV2 featurizer Pipeline (ImageNet
weights, offline file) and a fine-tuner (1 epoch), then writes each with
``save_model`` in every format this sklearn_tl offers (0.1 has joblib only),
and loads it back. Run it on two checkouts to compare:

    PYTHONPATH=<checkout> python benchmarks/bench_model_files.py
"""

from __future__ import annotations

import inspect
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

import sklearn_tl
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer, load_model, save_model


def variants():
    params = inspect.signature(save_model).parameters
    if "format" not in params:
        return {"joblib (0.1)": ("m.joblib", {})}
    return {
        "joblib": ("m.joblib", {"format": "joblib"}),
        "skops": ("m.skops", {"format": "skops"}),
        "skops, include_optimizer=False": ("m.skops", {"format": "skops", "include_optimizer": False}),
    }


def main():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    y = np.array([0, 1] * 8)
    common = {"weights": "IMAGENET1K_V1", "image_size": 64, "random_state": 0}
    models = {
        "featurizer Pipeline": make_pipeline(PretrainedCNNFeaturizer("mobilenet_v2", progress=False, **common),
                                             LogisticRegression()).fit(X, y),
        "fine-tuner": FineTuneClassifier("mobilenet_v2", max_epochs=1, batch_size=8, **common).fit(X, y),
    }
    print(f"sklearn_tl {sklearn_tl.__version__} at {Path(sklearn_tl.__file__).parent}")
    print("| model | format | file MB | save s | load s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            for label, (filename, kwargs) in variants().items():
                if "include_optimizer" in kwargs and name != "fine-tuner":
                    continue
                path = Path(folder) / filename
                start = time.perf_counter()
                save_model(model, path, **kwargs)
                saved = time.perf_counter() - start
                start = time.perf_counter()
                loaded = load_model(path)
                load = time.perf_counter() - start
                assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
                print(f"| {name} | {label} | {path.stat().st_size / 1e6:.1f} | {saved:.2f} | {load:.2f} |")


if __name__ == "__main__":
    main()
