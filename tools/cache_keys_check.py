"""Print the cache keys of one checkout, to diff two (issue 23: the keys before and after the layout change).

    PYTHONPATH=/path/to/old python tools/cache_keys_check.py > before.txt
    PYTHONPATH=/path/to/new python tools/cache_keys_check.py > after.txt
    diff before.txt after.txt
"""

import tempfile

import numpy as np
import torch

from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer

X = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
cache = tempfile.mkdtemp()
keys = {
    "named weights": PretrainedCNNFeaturizer(weights="IMAGENET1K_V1", image_size=32, cache=cache).fit(X),
    "random weights, two layers": PretrainedCNNFeaturizer(
        "resnet18", weights=None, layer=["layer2", "layer1"], image_size=16, random_state=0, cache=cache
    ).fit(X),
}
keys = {name: featurizer._cache_fingerprint for name, featurizer in keys.items()}
torch.manual_seed(0)
module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
keys["a user's module"] = PretrainedCNNFeaturizer(module, image_size=16, cache=cache).fit(X)._cache_fingerprint
for weights in (None, "IMAGENET1K_V1"):
    clf = FineTuneClassifier("mobilenet_v2", weights=weights, image_size=32, max_epochs=0, head_init="random",
                             random_state=0).fit(X, [0, 1] * 3)
    keys[f"fine-tuner head fit, weights={weights}"] = clf._head_fit_fingerprint(clf.module_.embedder, 1280).hex()
for name, key in keys.items():
    print(f"{name}: {key}")
