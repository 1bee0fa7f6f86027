"""The cache under parallel workers, interrupted runs and files that change during a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import PIL
import pytest
from PIL import Image
from torch import nn

from sklearn_tl import EmbeddingCache, ImageReadError, PretrainedCNNFeaturizer
from sklearn_tl.cache.store import ENTRY_SUFFIX

from .test_cache import featurizer, tiny_net


class HookedNet(nn.Module):
    """A small fixed conv net that calls ``HOOK`` (if set) on every forward pass."""

    HOOK = None

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        if HookedNet.HOOK is not None:
            HookedNet.HOOK()
        return self.net(x)


@pytest.fixture
def hook():
    def set_hook(function):
        HookedNet.HOOK = function

    yield set_hook
    HookedNet.HOOK = None


def _write_pngs(directory, n, seed=0, size=24):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _all_entries_valid(cache: EmbeddingCache, n_features: int) -> int:
    """Number of entries; fails if any is partial or corrupt."""
    count = 0
    for entry in cache._entry_files():
        assert cache.get(entry.name[: -len(ENTRY_SUFFIX)], n_features) is not False, entry.path
        count += 1
    return count


def test_a_file_replaced_during_a_run_never_stores_a_row_under_another_key(tmp_path, hook):
    paths = _write_pngs(tmp_path, 40)
    original = tmp_path / "original-of-30.png"
    original.write_bytes(open(paths[30], "rb").read())
    (tmp_path / "other").mkdir()
    replacement = _write_pngs(tmp_path / "other", 1, seed=9)[0]
    cache = tmp_path / "cache"
    model = PretrainedCNNFeaturizer(HookedNet(), image_size=16, batch_size=8, cache=cache).fit(paths)
    calls = []

    def replace_after_first_batch():
        calls.append(1)
        if len(calls) == 1:  # keys of all 40 files are computed; batch 4 (file 30) is not decoded yet
            os.replace(replacement, paths[30])

    hook(replace_after_first_batch)
    rows = model.transform(paths)
    hook(None)
    fresh = PretrainedCNNFeaturizer(HookedNet(), image_size=16).fit(paths)
    # The run embedded what it decoded (the new content of file 30) ...
    np.testing.assert_allclose(rows, fresh.transform(paths), rtol=1e-5, atol=1e-6)
    # ... and every row the cache now holds is right: for the current files and for the old content.
    for inputs in (paths, [str(original)]):
        np.testing.assert_allclose(model.transform(inputs), fresh.transform(inputs), rtol=1e-5, atol=1e-6)


def test_a_failed_run_keeps_every_finished_batch(tmp_path):
    paths = _write_pngs(tmp_path, 40)
    good = open(paths[33], "rb").read()
    with open(paths[33], "wb") as handle:
        handle.write(b"not an image")
    store = EmbeddingCache(tmp_path / "cache")
    model = featurizer(store, batch_size=8).fit(paths[:1])
    with pytest.raises(ImageReadError, match="img033.png"):
        model.transform(paths)
    assert _all_entries_valid(store, model.n_features_out_) == 32  # batches 0-3 finished before batch 4 failed
    with open(paths[33], "wb") as handle:
        handle.write(good)
    computed = []
    original = model.backbone_.forward
    model.backbone_.forward = lambda x: computed.append(len(x)) or original(x)
    try:
        rows = model.transform(paths)
    finally:
        del model.backbone_.forward
    assert sum(computed) == 8  # only the batch that failed
    np.testing.assert_allclose(rows, featurizer(None).fit(paths).transform(paths), rtol=1e-5, atol=1e-6)


SLOW_NET = """
import os, time, torch
from torch import nn

RECORD = None  # file to append forward-pass intervals to


class SlowNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        start = time.time()
        time.sleep({sleep})
        out = torch.relu(self.conv(x))
        if RECORD is not None:
            with open(RECORD, "a") as handle:
                handle.write(f"{{os.getpid()}} {{start}} {{time.time()}}\\n")
        return out
"""

WORKER = """
import os, sys, time
import numpy as np
sys.path.insert(0, {tmp!r})
import slownet
from sklearn_tl import PretrainedCNNFeaturizer

paths = {paths!r}
model = PretrainedCNNFeaturizer(slownet.SlowNet(), image_size=16, batch_size={batch}, cache={cache!r}).fit(paths[:1])
open({ready!r}, "w").close()
while not os.path.exists({go!r}):
    time.sleep(0.02)
slownet.RECORD = {record!r}
model.transform(paths)
"""


def _start_worker(tmp_path, name, paths, batch, go):
    script = tmp_path / f"{name}.py"
    ready = tmp_path / f"{name}.ready"
    script.write_text(textwrap.dedent(WORKER.format(
        tmp=str(tmp_path), paths=paths, batch=batch, cache=str(tmp_path / "cache"), ready=str(ready),
        go=str(go), record=str(tmp_path / "intervals.txt"),
    )))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True), ready


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_workers_on_disjoint_images_overlap_in_time(tmp_path):
    (tmp_path / "slownet.py").write_text(SLOW_NET.format(sleep=0.4))
    paths = _write_pngs(tmp_path, 16)
    go = tmp_path / "go"
    workers = [_start_worker(tmp_path, name, part, 2, go) for name, part in (("a", paths[:8]), ("b", paths[8:]))]
    _wait_for(lambda: all(ready.exists() for _, ready in workers), 120, "both workers to fit")
    go.touch()
    for process, _ in workers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
    intervals = {}
    for line in (tmp_path / "intervals.txt").read_text().split("\n"):
        if line:
            pid, start, end = line.split()
            intervals.setdefault(pid, []).append((float(start), float(end)))
    assert len(intervals) == 2 and all(len(v) == 4 for v in intervals.values()), intervals
    first, second = intervals.values()
    overlap = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in first for s2, e2 in second)
    assert overlap > 0.8, intervals  # 4 passes of 0.4 s each: serialized workers overlap 0 s
    store = EmbeddingCache(tmp_path / "cache")
    assert _all_entries_valid(store, 8) == 16


@pytest.mark.slow
def test_a_killed_run_keeps_its_finished_batches_and_no_partial_entry(tmp_path):
    (tmp_path / "slownet.py").write_text(SLOW_NET.format(sleep=0.15))
    paths = _write_pngs(tmp_path, 120)
    go = tmp_path / "go"
    go.touch()
    process, _ = _start_worker(tmp_path, "victim", paths, 4, go)
    store = EmbeddingCache(tmp_path / "cache")
    try:
        _wait_for(lambda: store.n_entries >= 12, 120, "the first batches to be stored")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    kept = _all_entries_valid(store, 8)
    assert 12 <= kept < 120
    sys.path.insert(0, str(tmp_path))
    try:
        import slownet

        cached = PretrainedCNNFeaturizer(slownet.SlowNet(), image_size=16, cache=store).fit(paths[:1])
        fresh = PretrainedCNNFeaturizer(slownet.SlowNet(), image_size=16).fit(paths[:1])
        subset = paths[:kept]  # rows the killed run stored come back equal to fresh ones
        np.testing.assert_allclose(cached.transform(subset), fresh.transform(subset), rtol=1e-5, atol=1e-6)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("slownet", None)


class TestFingerprint:
    def _computed(self, tmp_path, images, count_images, cache=None):
        featurizer(cache if cache is not None else tmp_path).fit_transform(images)
        return count_images["images"]

    def test_pillow_and_timm_versions_are_in_the_key(self, tmp_path, monkeypatch, count_images):
        import importlib.metadata

        images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
        assert self._computed(tmp_path, images, count_images) == 4
        assert self._computed(tmp_path, images, count_images) == 4  # stored
        monkeypatch.setattr(PIL, "__version__", "0.0.1")
        assert self._computed(tmp_path, images, count_images) == 8
        real = importlib.metadata.version
        monkeypatch.setattr(
            importlib.metadata, "version", lambda name: "0.0.1" if name == "timm" else real(name)
        )
        assert self._computed(tmp_path, images, count_images) == 12

    def test_extra_key_separates_entries(self, tmp_path, count_images):
        images = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
        for extra, total in (("v1", 4), ("v1", 4), ("v2", 8), (None, 12)):
            self._computed(tmp_path, images, count_images, EmbeddingCache(tmp_path, extra_key=extra))
            assert count_images["images"] == total, extra
        assert EmbeddingCache(tmp_path, extra_key="v1") != EmbeddingCache(tmp_path, extra_key="v2")

