"""What importing the package costs: public names load on first use, ``--help`` needs no torch.

Each check runs in a fresh interpreter and asserts on the modules it loaded,
not on time, so it holds on a slow machine (benchmarks/bench_import.py has
the timings).
"""

import inspect
import json
import subprocess
import sys

import pytest

import sklearn_tl

# Loaded by the features that need them, never by an import of the package.
OPTIONAL = ("timm", "onnxruntime", "onnx", "onnxscript", "skl2onnx", "matplotlib", "dask", "distributed",
            "skimage", "mlflow", "skops")
# What `import sklearn_tl` and `sklearn-tl --help` do not need either.
HEAVY = ("torch", "torchvision", "sklearn", "skorch", "scipy", "pandas", "numpy", "PIL")


def loaded_after(*steps):
    """Top-level packages in sys.modules after each of ``steps`` (code), run in turn in a fresh interpreter."""
    report = "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    script = "\n".join(["import json, sys", *(f"{step}\n{report}" for step in steps)])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [set(json.loads(line)) for line in result.stdout.splitlines()[-len(steps):]]


def test_import_loads_no_heavy_or_optional_package():
    (loaded,) = loaded_after("import sklearn_tl")
    assert not loaded & {*OPTIONAL, *HEAVY}, sorted(loaded & {*OPTIONAL, *HEAVY})


def test_a_public_name_loads_only_what_it_needs():
    estimators, finetuner = loaded_after(
        "from sklearn_tl import PretrainedCNNFeaturizer, load_model, export_onnx, featurize_dask, EmbeddingCache",
        "from sklearn_tl import FineTuneClassifier",
    )
    assert "torch" in estimators and "sklearn" in estimators  # what the featurizer is made of
    assert not estimators & {*OPTIONAL, "skorch"}, sorted(estimators & {*OPTIONAL, "skorch"})
    assert "skorch" in finetuner and not finetuner & set(OPTIONAL), sorted(finetuner & set(OPTIONAL))


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_imports_no_torch(argv):
    # -X importtime lists every module the real `python -m sklearn_tl` imports, one per line on stderr.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "sklearn_tl", *argv],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sklearn-tl")
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "sklearn_tl" in imported  # the listing is real
    assert not imported & {*OPTIONAL, *HEAVY}, sorted(imported & {*OPTIONAL, *HEAVY})


def test_every_public_name_resolves():
    assert "FineTuneClassifier" in sklearn_tl.__all__ and "__version__" in sklearn_tl.__all__
    assert set(sklearn_tl.__all__) <= set(dir(sklearn_tl))
    for name in sklearn_tl.__all__:
        value = getattr(sklearn_tl, name)
        if name != "__version__" and not name.isupper():
            assert value.__module__.split(".")[0] == "sklearn_tl", name  # the estimators pickle as sklearn_tl.X
    namespace = {}
    exec("from sklearn_tl import *", namespace)
    assert set(sklearn_tl.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        sklearn_tl.NoSuchName  # noqa: B018
    with pytest.raises(ImportError):
        exec("from sklearn_tl import NoSuchName", {})


def test_cli_max_epochs_default_is_the_class_default():
    from sklearn_tl import FineTuneClassifier
    from sklearn_tl.cli.training import train_classifier
    from sklearn_tl.cli import build_parser

    class_default = FineTuneClassifier().get_params()["max_epochs"]
    assert build_parser().parse_args(["train", "photos"]).max_epochs == class_default
    assert inspect.signature(train_classifier).parameters["max_epochs"].default == class_default
