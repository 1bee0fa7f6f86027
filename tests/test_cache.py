"""The embedding cache: each image is embedded once, and never stale or corrupt."""

import hashlib
import multiprocessing
import os
import pickle
import shutil
import sys
import uuid
import warnings
from collections import Counter

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC
from torch import nn

import sklearn_tl
import sklearn_tl.estimators.featurizer as featurizer_module
from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.cache.store import EmbeddingCache
from sklearn_tl.exceptions import EmbeddingCacheWarning
from sklearn_tl.cache.fingerprint import runtime_fingerprint


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def tiny_net(seed=0, width=8):
    """A fixed small conv net (a user module: its parameters are its weights)."""
    return _seeded(nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU(), nn.Conv2d(width, width, 3)), seed)


class LoggingNet(nn.Module):
    """A conv net that logs a digest of every image it is given to ``log_dir``.

    The log is a directory, so it counts forward passes in joblib worker
    processes too. The constant image ``fit`` probes the width with is not logged.
    """

    def __init__(self, log_dir, tag="a", seed=0, width=8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2)
        _seeded(self, seed)
        self.log_dir = str(log_dir)
        self.tag = tag

    def forward(self, x):
        flat = x.flatten(2)
        constant = (flat.amax(-1) == flat.amin(-1)).all(-1)
        digests = [
            hashlib.sha1(image.numpy().tobytes()).hexdigest()
            for image, is_probe in zip(x.float().cpu(), constant)
            if not is_probe
        ]
        if digests:
            name = os.path.join(self.log_dir, f"{os.getpid()}-{uuid.uuid4().hex}.log")
            with open(name, "w") as handle:
                handle.write("".join(f"{self.tag} {d}\n" for d in digests))
        return torch.relu(self.conv(x))


def forwarded(log_dir) -> Counter:
    """How many times each (tag, image) was forwarded, from the logs."""
    counts = Counter()
    for name in os.listdir(log_dir):
        with open(os.path.join(log_dir, name)) as handle:
            counts.update(line.strip() for line in handle if line.strip())
    return counts


@pytest.fixture
def images():
    """20 distinct random uint8 images (20, 24, 24, 3)."""
    return np.random.default_rng(1).integers(0, 256, (20, 24, 24, 3), dtype=np.uint8)


def featurizer(cache, backbone=None, **params):
    params.setdefault("image_size", 16)
    return PretrainedCNNFeaturizer(tiny_net() if backbone is None else backbone, cache=cache, **params)


@pytest.fixture(scope="module")
def texture_data():
    from sklearn_tl import load_textures

    X, y = load_textures(n_per_class=15, size=32, random_state=0, return_X_y=True)
    return X, y


# ---------------------------------------------------------------- the grid search


class TestGridSearch:
    def _search(self, X, y, cache, backbones, n_jobs):
        pipeline = Pipeline(
            [("features", PretrainedCNNFeaturizer(backbones[0], image_size=24, cache=cache)), ("svc", SVC())]
        )
        grid = {"svc__C": [0.1, 1.0, 10.0]}
        if len(backbones) > 1:
            grid["features__backbone"] = backbones
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        return GridSearchCV(pipeline, grid, cv=cv, n_jobs=n_jobs).fit(X, y)

    def test_each_image_forwarded_once(self, texture_data, tmp_path, count_images):
        X, y = texture_data
        log = tmp_path / "log"
        log.mkdir()
        search = self._search(X, y, str(tmp_path / "cache"), [LoggingNet(log)], n_jobs=1)
        counts = forwarded(log)
        assert len(counts) == len(X)  # every image was embedded...
        assert set(counts.values()) == {1}  # ...exactly once, over 5 folds x 3 C + refit
        assert count_images["images"] == len(X)
        assert EmbeddingCache(tmp_path / "cache").n_entries == len(X)
        # Scores equal those of the uncached search.
        other_log = tmp_path / "uncached"
        other_log.mkdir()
        uncached = self._search(X, y, None, [LoggingNet(other_log)], n_jobs=1)
        np.testing.assert_allclose(search.cv_results_["mean_test_score"], uncached.cv_results_["mean_test_score"])

        # A repeated run (and cross_val_score) forwards nothing.
        shutil.rmtree(log)
        log.mkdir()
        self._search(X, y, str(tmp_path / "cache"), [LoggingNet(log)], n_jobs=1)
        featurizer = PretrainedCNNFeaturizer(LoggingNet(log), image_size=24, cache=str(tmp_path / "cache"))
        pipeline = Pipeline([("f", featurizer), ("svc", SVC())])
        cross_val_score(pipeline, X, y, cv=3)
        assert forwarded(log) == Counter()

    def test_without_cache_the_counter_sees_recomputation(self, texture_data, tmp_path):
        X, y = texture_data
        self._search(X, y, None, [LoggingNet(tmp_path)], n_jobs=1)
        counts = forwarded(tmp_path)
        assert len(counts) == len(X)
        assert min(counts.values()) >= 3 * 5  # the problem: every fold and candidate

    def test_worker_processes_share_the_cache(self, texture_data, tmp_path):
        try:
            from joblib.externals import cloudpickle
        except ImportError:  # joblib packaged without its vendored copy
            import cloudpickle

        X, y = texture_data
        log = tmp_path / "log"
        log.mkdir()
        # Workers cannot import this test module: send LoggingNet by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            search = self._search(X, y, str(tmp_path / "cache"), [LoggingNet(log)], n_jobs=2)
        finally:
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        counts = forwarded(log)
        assert len(counts) == len(X)
        # No lock (issue 16): two workers that reach the same images together may both compute
        # them, but each process embeds an image at most once, so at most n_jobs times in all.
        assert set(counts.values()) <= {1, 2}
        pids = {name.split("-")[0] for name in os.listdir(log)}
        for pid in pids:
            per_process = Counter()
            for name in os.listdir(log):
                if name.startswith(pid + "-"):
                    with open(log / name) as handle:
                        per_process.update(line.strip() for line in handle if line.strip())
            assert set(per_process.values()) == {1}, pid
        assert pids - {str(os.getpid())}, "no worker process forwarded"
        assert np.isfinite(search.best_score_)

    def test_several_backbones_each_pair_once(self, texture_data, tmp_path):
        X, y = texture_data
        log = tmp_path / "log"
        log.mkdir()
        backbones = [LoggingNet(log, tag="a", seed=0), LoggingNet(log, tag="b", seed=1, width=6)]
        self._search(X, y, str(tmp_path / "cache"), backbones, n_jobs=1)
        counts = forwarded(log)
        assert len(counts) == 2 * len(X)
        assert set(counts.values()) == {1}
        assert {key.split()[0] for key in counts} == {"a", "b"}


# ---------------------------------------------------------------- keys


class TestKeys:
    def test_cached_rows_equal_computed_rows(self, images, tmp_path, count_images):
        reference = featurizer(None).fit_transform(images)
        first = featurizer(tmp_path).fit_transform(images)
        second = featurizer(tmp_path).fit_transform(images)
        assert count_images["images"] == 2 * len(images)  # reference + first; second from the cache
        np.testing.assert_array_equal(first, reference)
        np.testing.assert_array_equal(second, reference)
        assert second.dtype == np.float32 and second.flags.writeable

    def test_keyed_on_content_not_position(self, images, tmp_path, count_images):
        model = featurizer(tmp_path).fit(images)
        expected = model.transform(images)
        count_images["images"] = 0
        shuffled = model.transform(images[::-1].copy())
        assert count_images["images"] == 0
        np.testing.assert_array_equal(shuffled, expected[::-1])
        changed = images.copy()
        changed[3, 0, 0, 0] ^= 1  # one pixel
        rows = model.transform(changed)
        assert count_images["images"] == 1
        # (a batch of one may round differently from a batch of 20)
        np.testing.assert_allclose(rows, featurizer(None).fit(images).transform(changed), rtol=1e-5, atol=1e-6)

    def test_files_keyed_on_their_bytes(self, images, tmp_path, count_images):
        paths = []
        for i, image in enumerate(images[:4]):
            paths.append(str(tmp_path / f"{i}.png"))
            Image.fromarray(image).save(paths[-1])
        model = featurizer(tmp_path / "cache").fit(paths)
        model.transform(paths)
        count_images["images"] = 0
        copy = str(tmp_path / "copy.png")
        shutil.copy(paths[0], copy)
        model.transform([copy])  # same bytes, other path: cached
        assert count_images["images"] == 0
        Image.fromarray(images[10]).save(paths[0])  # same path, new content: recomputed
        rows = model.transform(paths)
        assert count_images["images"] == 1
        np.testing.assert_allclose(rows, featurizer(None).fit(paths).transform(paths), rtol=1e-5, atol=1e-6)

    def test_list_arrays_tensors_and_pil(self, images, tmp_path, count_images):
        items = [images[0], torch.from_numpy(images[1]).permute(2, 0, 1).contiguous(), Image.fromarray(images[2])]
        model = featurizer(tmp_path).fit(items)
        first = model.transform(items)
        second = model.transform(items)
        assert count_images["images"] == 3
        np.testing.assert_array_equal(first, second)
        np.testing.assert_array_equal(first, featurizer(None).fit(items).transform(items))

    def test_duplicates_in_X_embedded_once(self, images, tmp_path, count_images):
        X = np.concatenate([images[:5], images[:5]])
        rows = featurizer(tmp_path).fit_transform(X)
        assert count_images["images"] == 5
        np.testing.assert_array_equal(rows[:5], rows[5:])

    def test_batch_size_and_progress_are_not_in_the_key(self, images, tmp_path, count_images):
        featurizer(tmp_path, batch_size=4).fit_transform(images)
        featurizer(tmp_path, batch_size=7, progress=False, num_workers=0).fit_transform(images)
        assert count_images["images"] == len(images)

    def test_unreadable_file_still_raises(self, tmp_path):
        with pytest.raises(sklearn_tl.ImageReadError, match="missing.png"):
            featurizer(tmp_path).fit([str(tmp_path / "missing.png")]).transform([str(tmp_path / "missing.png")])

    def test_unreadable_rows_are_never_stored(self, images, tmp_path):
        from PIL import Image

        good, bad = tmp_path / "good.png", tmp_path / "truncated.png"
        Image.fromarray(images[0]).save(good)
        bad.write_bytes(good.read_bytes()[:60])
        paths = [str(good), str(bad)]
        est = featurizer(tmp_path / "cache", on_error="warn").fit(images)
        for _ in range(2):  # the second run must warn again, not return a stored NaN row
            with pytest.warns(sklearn_tl.ImageReadWarning, match="truncated.png"):
                Z = est.transform(paths)
            assert np.isnan(Z[1]).all() and np.isfinite(Z[0]).all()
        assert EmbeddingCache(tmp_path / "cache").n_entries == 1


# ---------------------------------------------------------------- invalidation

ALTERNATIVES = {
    "backbone": {"backbone": tiny_net(seed=1)},
    "backbone_class": {"backbone": _seeded(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(),
                                                         nn.Conv2d(8, 8, 3)), 0)},
    "layer": {"layer": "1"},
    "pooling": {"pooling": "max"},
    "image_size": {"image_size": 20},
    "precision": {"precision": "bfloat16"},
}


class TestInvalidation:
    @pytest.mark.parametrize("name", sorted(ALTERNATIVES))
    def test_changed_parameter_recomputes(self, name, images, tmp_path, count_images):
        featurizer(tmp_path).fit_transform(images)
        count_images["images"] = 0
        changed = featurizer(tmp_path, **ALTERNATIVES[name]).fit_transform(images)
        assert count_images["images"] == len(images)
        reference = featurizer(None, **ALTERNATIVES[name]).fit_transform(images)
        np.testing.assert_array_equal(changed, reference)
        assert not np.array_equal(changed[:, : min(changed.shape[1], 8)],
                                  featurizer(None).fit_transform(images)[:, : min(changed.shape[1], 8)])

    def test_image_shape_recomputes(self, tmp_path, count_images):
        X = np.random.default_rng(0).integers(0, 256, (6, 64), dtype=np.uint8)
        featurizer(tmp_path, image_shape=(8, 8)).fit_transform(X)
        rows = featurizer(tmp_path, image_shape=(4, 16)).fit_transform(X)
        assert count_images["images"] == 12
        np.testing.assert_array_equal(rows, featurizer(None, image_shape=(4, 16)).fit_transform(X))

    def test_weights_file_content_recomputes(self, images, tmp_path, count_images):
        """Same backbone name, same weights path, new file content: recomputed."""
        from torchvision.models import mobilenet_v2

        path = tmp_path / "weights.pth"
        torch.save(_seeded(mobilenet_v2(), 0).state_dict(), path)
        params = dict(backbone="mobilenet_v2", weights=str(path), image_size=32)
        first = featurizer(tmp_path / "cache", **params).fit(images)
        first.transform(images)
        torch.save(_seeded(mobilenet_v2(), 1).state_dict(), path)
        count_images["images"] = 0
        second = featurizer(tmp_path / "cache", **params).fit(images)
        assert second.weights_sha256_ != first.weights_sha256_
        rows = second.transform(images)
        assert count_images["images"] == len(images)
        np.testing.assert_array_equal(rows, featurizer(None, **params).fit_transform(images))

    def test_random_init_is_keyed_on_its_parameters(self, images, tmp_path, count_images):
        params = dict(backbone="resnet18", weights=None, image_size=16)
        torch.manual_seed(0)
        featurizer(tmp_path, **params).fit_transform(images)
        torch.manual_seed(1)  # other random weights: must not reuse the first ones' rows
        featurizer(tmp_path, **params).fit_transform(images)
        assert count_images["images"] == 2 * len(images)

    def test_package_version_recomputes(self, images, tmp_path, count_images, monkeypatch):
        featurizer(tmp_path).fit_transform(images)
        monkeypatch.setattr(sklearn_tl, "__version__", "99.0")
        featurizer(tmp_path).fit_transform(images)
        assert count_images["images"] == 2 * len(images)

    def test_device_and_precision_in_runtime_key(self):
        keys = {
            runtime_fingerprint("m", torch.device(device), dtype)
            for device in ("cpu", "cuda", "mps")
            for dtype in (None, torch.bfloat16, torch.float16)
        }
        assert len(keys) == 9
        assert runtime_fingerprint("m", torch.device("cuda:0"), None) == runtime_fingerprint(
            "m", torch.device("cuda:1"), None
        )

    def test_parameters_changed_after_fit_never_mislabel(self, images, tmp_path, count_images):
        """set_params without refit: the key follows the fitted module, not the new params."""
        model = featurizer(None, pooling="avg").fit(images)
        model.set_params(pooling="max", cache=str(tmp_path))
        avg_rows = model.transform(images)  # still the fitted avg-pool module
        count_images["images"] = 0
        max_rows = featurizer(tmp_path, pooling="max").fit_transform(images)
        assert count_images["images"] == len(images)
        assert not np.array_equal(avg_rows, max_rows)


# ---------------------------------------------------------------- the store


def _entry_files(root):
    return sorted(p for p in (root / "sklearn_tl_embeddings").rglob("*.emb"))


class TestStore:
    def test_corrupt_entries_recomputed(self, images, tmp_path, count_images):
        model = featurizer(tmp_path).fit(images)
        expected = model.transform(images)
        files = _entry_files(tmp_path)
        assert len(files) == len(images)
        files[0].write_bytes(files[0].read_bytes()[:-3])  # truncated
        data = bytearray(files[1].read_bytes())
        data[-1] ^= 0xFF  # one flipped bit pattern in the payload
        files[1].write_bytes(bytes(data))
        files[2].write_bytes(b"")  # empty
        count_images["images"] = 0
        with pytest.warns(EmbeddingCacheWarning, match="3 corrupt entries"):
            rows = model.transform(images)
        assert count_images["images"] == 3
        np.testing.assert_array_equal(rows, expected)
        count_images["images"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.transform(images)  # repaired
        assert count_images["images"] == 0

    def test_size_and_clear(self, images, tmp_path, count_images):
        cache = EmbeddingCache(tmp_path)
        assert (cache.n_entries, cache.size()) == (0, 0)
        model = featurizer(cache).fit(images)
        model.transform(images)
        width = model.n_features_out_
        assert cache.n_entries == len(images)
        assert cache.size() == len(images) * (28 + 4 * width)
        (tmp_path / "unrelated.txt").write_text("kept")
        cache.clear()
        assert (cache.n_entries, cache.size()) == (0, 0)
        assert (tmp_path / "unrelated.txt").exists()
        model.transform(images)
        assert count_images["images"] == 2 * len(images)

    def test_joblib_memory_and_clone(self, images, tmp_path, count_images):
        model = featurizer(joblib.Memory(str(tmp_path), verbose=0))
        clone(model).fit_transform(images)
        assert EmbeddingCache(tmp_path).n_entries == len(images)
        featurizer(joblib.Memory(None)).fit_transform(images)  # location None: no cache
        cache = EmbeddingCache(tmp_path)
        cloned = clone(featurizer(cache))
        assert cloned.cache == cache and cloned.cache is not cache
        cloned.fit_transform(images)
        assert count_images["images"] == 2 * len(images)

    def test_invalid_cache_parameter(self, images):
        with pytest.raises(ValueError, match="cache"):
            featurizer(3.5).fit(images)

    def test_read_only_location_reads_and_skips_writes(self, images, tmp_path, count_images, monkeypatch):
        import sklearn_tl.cache.store as cache_module

        featurizer(tmp_path).fit_transform(images[:10])
        before = _entry_files(tmp_path)
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_CREAT):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(cache_module.os, "open", read_only_open)
        monkeypatch.setattr(cache_module.os, "makedirs", lambda *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")))
        monkeypatch.setattr(cache_module.Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")))
        count_images["images"] = 0
        with pytest.warns(EmbeddingCacheWarning, match="read-only") as record:
            rows = featurizer(tmp_path).fit_transform(images)
        assert len([w for w in record if issubclass(w.category, EmbeddingCacheWarning)]) == 1
        assert count_images["images"] == 10  # the 10 stored rows were read
        monkeypatch.undo()
        assert _entry_files(tmp_path) == before
        np.testing.assert_allclose(rows, featurizer(None).fit_transform(images), rtol=1e-5, atol=1e-6)


def _hammer(location, keys, rounds):
    cache = EmbeddingCache(location)
    for _ in range(rounds):
        for key in keys:
            cache.put(key, _row_for(key))


def _row_for(key):
    return np.full(64, int(key[:6], 16) % 1000, dtype=np.float32) + np.arange(64, dtype=np.float32)


def test_concurrent_writers_never_expose_partial_entries(tmp_path):
    keys = [hashlib.blake2b(str(i).encode(), digest_size=20).hexdigest() for i in range(40)]
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_hammer, args=(str(tmp_path), keys, 15)) for _ in range(3)]
    for writer in writers:
        writer.start()
    reader = EmbeddingCache(tmp_path)
    seen = 0
    while any(writer.is_alive() for writer in writers):
        for key in keys:
            row = reader.get(key, 64)
            assert row is not False, "a reader saw a partial or corrupt entry"
            if row is not None:
                np.testing.assert_array_equal(row, _row_for(key))
                seen += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert seen > 0
    assert reader.n_entries == len(keys)
    assert not list((tmp_path / "sklearn_tl_embeddings").rglob("*.tmp"))  # no temp files left


def test_a_fully_cached_grid_search_builds_the_network_once(tmp_path, monkeypatch):
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC


    X, y = sklearn_tl.load_textures(n_per_class=10, size=32, random_state=0, return_X_y=True)
    builds = []
    real_build = featurizer_module.build_embedder

    def counting_build(*args, **kwargs):
        builds.append(args[0])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(featurizer_module, "build_embedder", counting_build)
    est = sklearn_tl.PretrainedCNNFeaturizer(weights="IMAGENET1K_V1", image_size=32, cache=tmp_path)
    pipe = Pipeline([("f", est), ("svc", SVC())])
    GridSearchCV(pipe, {"svc__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert len(builds) <= 3  # one per fold at most while rows are missing; 7 fits in all
    builds.clear()
    search = GridSearchCV(pipe, {"svc__C": [0.1, 1.0]}, cv=3).fit(X, y)  # every row is stored now
    assert builds == []
    # A pickle still carries its weights: the network is built when it is saved.
    restored = pickle.loads(pickle.dumps(search.best_estimator_))
    assert restored.named_steps["f"]._built_backbone() is not None
    assert builds == ["mobilenet_v2"]
