"""Cache keys survive the 0.2 layout: rows stored by 0.1 are found again.

The model fingerprint is computed from explicit fields the estimators hand it
(issue 23). These tests recompute each key with the formula of 0.1, written out
here from the fitted estimators' public attributes, and compare: a renamed
field, a moved class path or a changed default would show as a different key.
"""

import hashlib
import importlib.metadata
import json

import numpy as np
import PIL
import torch
import torchvision

import sklearn_tl
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer
from sklearn_tl.cache.fingerprint import runtime_fingerprint


def _state_digest(module):
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _timm_version():
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def key_of_0_1(backbone, *, layer, pooling, data_config, image_shape, n_features):
    """The 0.1 formula (sklearn_tl/_cache.py, model_fingerprint)."""
    fields = {
        "format": 1,
        "sklearn_tl": sklearn_tl.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "timm": _timm_version(),
        "backbone": backbone,
        "layer": layer,
        "pooling": pooling,
        "data_config": data_config.as_dict(),
        "image_shape": None if image_shape is None else [int(s) for s in image_shape],
        "n_features": int(n_features),
    }
    return hashlib.blake2b(json.dumps(fields, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()


def module_identity_of_0_1(module):
    # 0.1 named the embedder class by its module path of then.
    return {"module": "sklearn_tl._model.ImageEmbedder", "structure": repr(module), "state": _state_digest(module)}


IMAGES = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)


def test_featurizer_key_with_named_weights(tmp_path):
    featurizer = PretrainedCNNFeaturizer(weights="IMAGENET1K_V1", image_size=32, cache=tmp_path).fit(IMAGES)
    expected = key_of_0_1(
        {"name": "mobilenet_v2", "weights_sha256": featurizer.weights_sha256_},
        layer=None, pooling="avg", data_config=featurizer.data_config_, image_shape=None, n_features=1280,
    )
    assert featurizer._cache_fingerprint == expected


def test_featurizer_key_of_random_weights_and_a_layer(tmp_path):
    featurizer = PretrainedCNNFeaturizer(
        "resnet18", weights=None, layer=["layer2", "layer1"], pooling="max", image_size=16, random_state=0,
        cache=tmp_path,
    ).fit(IMAGES)
    module = featurizer.backbone_
    expected = key_of_0_1(
        module_identity_of_0_1(module), layer=("layer2", "layer1"), pooling="max",
        data_config=featurizer.data_config_, image_shape=None, n_features=featurizer.n_features_out_,
    )
    assert featurizer._cache_fingerprint == expected


def test_fine_tuner_head_fit_key(tmp_path):
    clf = FineTuneClassifier("resnet18", weights=None, image_size=16, max_epochs=0, random_state=0, cache=tmp_path)
    clf.fit(IMAGES, [0, 1] * 3)
    embedder = clf.module_.embedder  # max_epochs=0: the embedder the head fit saw
    width = clf.n_features_out_
    expected = runtime_fingerprint(
        key_of_0_1(module_identity_of_0_1(embedder), layer=None, pooling="avg", data_config=clf.data_config_,
                   image_shape=None, n_features=width),
        clf.device_, clf.autocast_dtype_,
    )
    assert clf._head_fit_fingerprint(embedder, width) == expected
