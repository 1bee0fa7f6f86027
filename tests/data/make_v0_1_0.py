"""Writes the model files of sklearn_tl 0.1.0 (the version before model state became data).

Run once, with that version installed, from the repo root:
    python tests/data/make_v0_1_0.py
The files are committed; tests/test_old_files.py loads them with the current code
and checks that the outputs equal the ones recorded here.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_sample_images
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

import sklearn_tl
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer, save_model

OUT = Path(__file__).parent / "v0_1_0"


def images():
    rng = np.random.default_rng(0)
    X, y = [], []
    for label, photo in enumerate(load_sample_images().images):
        for _ in range(8):
            top, left = rng.integers(0, photo.shape[0] - 40), rng.integers(0, photo.shape[1] - 40)
            X.append(photo[top : top + 40, left : left + 40])
            y.append(label)
    return np.stack(X), np.asarray(y)


def main():
    torch.manual_seed(0)
    X, y = images()
    OUT.mkdir(exist_ok=True)
    outputs = {"X": X, "y": y}

    pipe = make_pipeline(
        PretrainedCNNFeaturizer("test_efficientnet", weights=None, layer=["blocks.1", "blocks.3"], image_size=32,
                                random_state=0),
        LogisticRegression(max_iter=500),
    ).fit(X, y)
    save_model(pipe, OUT / "featurizer_pipeline.joblib")
    outputs["featurizer_pipeline.transform"] = pipe[0].transform(X)
    outputs["featurizer_pipeline.predict_proba"] = pipe.predict_proba(X)

    ft = FineTuneClassifier("test_efficientnet", weights=None, image_size=32, max_epochs=2, batch_size=8,
                            random_state=0).fit(X, y)
    save_model(ft, OUT / "finetune.joblib")
    outputs["finetune.transform"] = ft.transform(X)
    outputs["finetune.predict_proba"] = ft.predict_proba(X)

    hybrid = FineTuneClassifier("test_efficientnet", weights=None, image_size=32, max_epochs=1, batch_size=8,
                                final_estimator=SVC(probability=True, random_state=0), random_state=0).fit(X, y)
    save_model(hybrid, OUT / "hybrid_svc.joblib")
    outputs["hybrid_svc.transform"] = hybrid.transform(X)
    outputs["hybrid_svc.predict"] = hybrid.predict(X)
    outputs["hybrid_svc.decision_function"] = hybrid.final_estimator_.decision_function(hybrid.transform(X))

    np.savez_compressed(OUT / "outputs.npz", **outputs)
    (OUT / "VERSION").write_text(f"sklearn_tl {sklearn_tl.__version__} (git 063953a), torch {torch.__version__}\n")


if __name__ == "__main__":
    main()
