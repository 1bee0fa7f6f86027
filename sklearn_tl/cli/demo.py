"""The demo job: real photos, the real pretrained MobileNetV2, a grid search.

The images are patches of three real texture photographs that ship with
scikit-image (brick, grass, gravel), cut at random positions, scales and
rotations: a small material-recognition task on which raw pixels are weak.
"""

from __future__ import annotations

import tempfile
import time

__all__ = ["run_demo"]

DEMO_WEIGHTS = "IMAGENET1K_V1"  # the MobileNetV2 file that ships offline


def flatten_pixels(images):
    """uint8 images ``(n, H, W)`` → rows of pixel values in [0, 1]."""
    return images.reshape(len(images), -1) / 255.0


def _search(pipeline, grid, data, cv):
    from sklearn.model_selection import GridSearchCV

    X_train, X_test, y_train, y_test = data
    start = time.perf_counter()
    search = GridSearchCV(pipeline, grid, cv=cv).fit(X_train, y_train)
    return search.score(X_test, y_test), time.perf_counter() - start, search


def run_demo(n_per_class: int = 80, image_size: int = 112, out=print) -> dict:
    """Compare pretrained features, random-init features and raw pixels.

    Each row fits a ``GridSearchCV`` (3 folds, logistic-regression ``C``) over a
    featurizer → scaler → classifier Pipeline on 75% of the patches, and
    reports accuracy on the held-out 25%.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from ..data.folders import load_textures
    from ..estimators.featurizer import PretrainedCNNFeaturizer

    data_set = load_textures(n_per_class)
    X, y, classes = data_set.images, data_set.target, data_set.target_names
    out(f"Data: {len(X)} real texture patches ({', '.join(classes)}), {X.shape[1]}x{X.shape[2]} px, from scikit-image.")
    data = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    grid = {"clf__C": [0.1, 1.0]}
    classifier = LogisticRegression(max_iter=3000)

    def featurizer_pipeline(weights, cache=None):
        featurizer = PretrainedCNNFeaturizer(
            "mobilenet_v2", weights=weights, image_size=image_size, random_state=0, cache=cache
        )
        return Pipeline([("features", featurizer), ("scale", StandardScaler()), ("clf", classifier)])

    flatten = FunctionTransformer(flatten_pixels)
    cache_dir = tempfile.TemporaryDirectory(prefix="sklearn_tl_demo_")
    rows = [
        ("MobileNetV2, pretrained (ImageNet V1)", featurizer_pipeline(DEMO_WEIGHTS)),
        ("  the same, with the embedding cache", featurizer_pipeline(DEMO_WEIGHTS, cache=cache_dir.name)),
        ("MobileNetV2, random init", featurizer_pipeline(None)),
        ("raw pixels", Pipeline([("flatten", flatten), ("scale", StandardScaler()), ("clf", classifier)])),
    ]
    results = {}
    out(
        f"GridSearchCV over C={grid['clf__C']} (3-fold) on {len(data[0])} patches, "
        f"accuracy on {len(data[1])} held-out patches; image_size={image_size}.\n"
    )
    out(f"{'features':<40}{'test accuracy':>14}{'time (s)':>10}")
    for name, pipeline in rows:
        accuracy, seconds, search = _search(pipeline, grid, data, cv)
        results[name] = accuracy
        out(f"{name:<40}{accuracy:>14.3f}{seconds:>10.1f}")
    cache_dir.cleanup()
    return results
