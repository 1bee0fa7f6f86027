"""One fitted model shared by threads and processes: same rows, nothing changed in place.

A deployed pipeline is loaded once and served by threads (a web server, a Dask
worker with several threads, joblib's threading backend). The races these
tests look for crashed the process (a segmentation fault while the shared
network was converted in place), so the thread tests run in a subprocess: a
crash fails the test instead of killing the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.runtime import device as _engine
from sklearn_tl.runtime.forward import forward_batches
from sklearn_tl.runtime.device import resolve_precision

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run_script(tmp_path, body: str, timeout=420) -> str:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


THREADS_SCRIPT = """
import concurrent.futures as futures
import joblib, numpy as np, torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer

rng = np.random.default_rng(0)
X = rng.random((96, 160, 160, 3)).astype(np.float32)
y = np.arange(96) % 2
quarters = [X[i::4] for i in range(4)]

def check(name, make, method, repeats=3):
    # Each repeat: a fresh model (the first calls are where in-place conversion raced:
    # before the fix, 4 featurizer repeats crashed the process in 1 run of 3 here),
    # four threads at once, then the same four calls one after the other.
    for _ in range(repeats):
        model = make()
        with futures.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(getattr(model, method), quarters))
        for q, g in zip(quarters, got):
            np.testing.assert_allclose(g, getattr(model, method)(q), rtol=0, atol=1e-5, err_msg=name)
    print(name, "ok", flush=True)

check("featurizer", lambda: PretrainedCNNFeaturizer(
    "mobilenet_v2", weights=None, image_size=96, batch_size=8, random_state=0).fit(X), "transform", repeats=6)

check("finetuner", lambda: FineTuneClassifier(
    "resnet18", weights=None, image_size=32, max_epochs=1, batch_size=16, random_state=0, train_split=None,
    verbose=0).fit(X, y), "predict_proba", repeats=2)

pipe = make_pipeline(
    PretrainedCNNFeaturizer("resnet18", weights=None, image_size=48, batch_size=4, random_state=0),
    LogisticRegression(max_iter=200),
).fit(X, y)
joblib.dump(pipe, "pipe.joblib")
check("joblib-loaded pipeline", lambda: joblib.load("pipe.joblib"), "predict_proba")
loaded = joblib.load("pipe.joblib")
expected = np.concatenate([loaded.predict_proba(q) for q in quarters])
for backend in ("threading", "loky"):
    got = joblib.Parallel(n_jobs=2 if backend == "loky" else 4, backend=backend)(
        joblib.delayed(loaded.predict_proba)(q) for q in quarters
    )
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=0, atol=1e-5, err_msg=backend)
    print(backend, "ok", flush=True)
"""


@pytest.mark.slow
def test_shared_models_from_threads_give_sequential_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _run_script(tmp_path, THREADS_SCRIPT)
    for name in ("featurizer", "finetuner", "joblib-loaded pipeline", "threading", "loky"):
        assert f"{name} ok" in out


def _global_torch_state():
    return {
        "threads": torch.get_num_threads(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "grad": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "default_dtype": torch.get_default_dtype(),
    }


def _parameter_layout(module):
    return [(name, t.device, t.data_ptr(), t.stride()) for name, t in module.state_dict().items()]


class TestNothingChangesInPlace:
    def test_transform_leaves_a_fresh_featurizer_as_it_was(self):
        X = np.random.default_rng(1).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
        featurizer = PretrainedCNNFeaturizer("mobilenet_v2", weights=None, image_size=32, random_state=0).fit(X)
        before_dict = dict(featurizer.__dict__)
        before_layout = _parameter_layout(featurizer.backbone_)
        before_state = _global_torch_state()
        featurizer.transform(X)
        assert featurizer.__dict__.keys() == before_dict.keys()
        assert all(featurizer.__dict__[k] is before_dict[k] for k in before_dict)
        assert _parameter_layout(featurizer.backbone_) == before_layout
        assert _global_torch_state() == before_state

    def test_fit_predict_leave_global_torch_state(self):
        from sklearn_tl import FineTuneClassifier

        X = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        y = np.arange(8) % 2
        before = _global_torch_state()
        clf = FineTuneClassifier("resnet18", weights=None, image_size=32, max_epochs=1, train_split=None,
                                 verbose=0, random_state=0).fit(X, y)
        assert _global_torch_state() == before
        layout = _parameter_layout(clf.module_)
        clf.predict(X)
        clf.transform(X)
        assert _parameter_layout(clf.module_) == layout
        assert _global_torch_state() == before

    def test_a_module_in_training_mode_is_run_in_eval_mode_without_being_flipped(self):
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
            torch.nn.Flatten(), torch.nn.Linear(400, 3),
        )
        module.train()
        images = torch.rand(5, 3, 12, 12)
        rows = forward_batches(module, images, batch_size=2, device="cpu", precision="float32")
        assert module.training and all(m.training for m in module.modules())
        module.eval()
        with torch.inference_mode():
            expected = module(images)
        np.testing.assert_allclose(rows, expected.numpy(), rtol=1e-5, atol=1e-6)

    def test_a_dask_worker_sets_threads_once_and_outside_dask_nothing(self, monkeypatch):
        threads = torch.get_num_threads()
        _engine.apply_worker_threads()
        assert torch.get_num_threads() == threads  # not in a worker: untouched
        monkeypatch.setattr(_engine, "dask_worker_threads", lambda: 1)
        try:
            _engine.apply_worker_threads()
            assert torch.get_num_threads() == 1
        finally:
            torch.set_num_threads(threads)


class TestAutoPrecisionOnCpu:
    @pytest.mark.parametrize("native_bf16", [True, False])
    def test_auto_is_float32_whatever_the_cpu(self, monkeypatch, native_bf16):
        monkeypatch.setattr(_engine, "cpu_has_native_bf16", lambda: native_bf16)
        cpu = torch.device("cpu")
        assert resolve_precision("auto", cpu) is None
        assert resolve_precision("bfloat16", cpu) is torch.bfloat16  # still an explicit choice

    @pytest.mark.parametrize("native_bf16", [True, False])
    def test_auto_rows_equal_float32_rows(self, monkeypatch, native_bf16):
        monkeypatch.setattr(_engine, "cpu_has_native_bf16", lambda: native_bf16)
        X = np.random.default_rng(3).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
        rows = {
            p: PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, precision=p, random_state=0)
            .fit_transform(X)
            for p in ("auto", "float32")
        }
        np.testing.assert_array_equal(rows["auto"], rows["float32"])
