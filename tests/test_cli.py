"""The ``sklearn-tl`` command on a real image folder.

The folder holds 2 classes x 8 JPEG crops of scikit-learn's two sample photos.
Most commands run in-process through ``main()`` (:func:`run_in_process` gives
what a subprocess would: exit status, stdout, stderr); a few run as
``python -m sklearn_tl`` or the installed script to check exit codes and the
entry point for real (a process start costs a few seconds: torch, torchvision
and scikit-learn are imported).
"""

import csv
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from sklearn_tl.cli import build_parser, main

from .conftest import write_photo_folder

REAL_WEIGHTS = "IMAGENET1K_V1"  # torchvision's MobileNetV2 file, shipped offline

CLASSES = ("china", "flower")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_photos):
    """``root/<class>/<image>.jpg``: 8 real 80x80 crops of each sample photo."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"), sample_photos, CLASSES, 8, 80, ".jpg")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(SKLEARN_TL_OFFLINE="1", TORCH_HOME=str(tmp_path_factory.mktemp("cli_torch_home")))
    env.pop("SKLEARN_TL_WEIGHTS_PATH", None)
    return env


def run_cli(env, *args, entry_point=False):
    """``python -m sklearn_tl ARGS``, or the installed ``sklearn-tl`` script."""
    command = [sys.executable, "-m", "sklearn_tl"]
    if entry_point:
        script = Path(sys.executable).with_name("sklearn-tl")
        assert script.exists(), "the sklearn-tl script must be installed next to this Python (pip install -e .)"
        command = [str(script)]
    return subprocess.run([*command, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


CLI_ENV_VARS = ("SKLEARN_TL_OFFLINE", "TORCH_HOME", "SKLEARN_TL_WEIGHTS_PATH")


def run_in_process(env, *args):
    """``main(ARGS)`` with ``env``'s sklearn_tl/torch variables: what :func:`run_cli` returns, without a process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        for name in CLI_ENV_VARS:
            if name in env:
                patch.setenv(name, env[name])
            else:
                patch.delenv(name, raising=False)
        try:
            status = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own exits
            status = exc.code
    return subprocess.CompletedProcess(list(args), status, stdout.getvalue(), stderr.getvalue())


def assert_user_error(result, command, fragment):
    """Exit 2, one line on stderr naming the command, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sklearn-tl {command}: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def trained(photo_folder, cli_env, tmp_path_factory):
    """`sklearn-tl train` with the real MobileNetV2 weights and a PNG report."""
    out = tmp_path_factory.mktemp("trained")
    result = run_in_process(
        cli_env, "train", photo_folder, "--weights", REAL_WEIGHTS, "--image-size", "64",
        "--cv", "4", "-o", out / "model.joblib", "--report", out / "report.png", "-q",
    )
    assert result.returncode == 0, result.stderr
    return out, result


# ---------------------------------------------------------------- train


def test_train_prints_cv_accuracy_and_confusion_matrix(trained):
    _, result = trained
    lines = result.stdout.splitlines()
    assert lines[0] == "16 images in 2 classes: china (8), flower (8)"
    accuracy_line = next(line for line in lines if line.startswith("cross-validated accuracy: "))
    assert "(4-fold stratified" in accuracy_line
    assert 0.0 <= float(accuracy_line.split()[2]) <= 1.0
    header = lines.index("confusion matrix (rows: true class, columns: predicted class):")
    assert lines[header + 1].split() == list(CLASSES)
    rows = [lines[header + 2].split(), lines[header + 3].split()]
    assert [r[0] for r in rows] == list(CLASSES)
    counts = np.array([[int(c) for c in r[1:]] for r in rows])
    assert counts.sum(axis=1).tolist() == [8, 8]  # every image predicted once, out of fold
    assert "Traceback" not in result.stderr


def test_train_writes_a_loadable_model_with_header(trained):
    from sklearn_tl import __version__
    from sklearn_tl.deploy.persistence import load_model

    out, _ = trained
    model, header = load_model(out / "model.joblib", return_header=True)
    assert header["versions"]["sklearn_tl"] == __version__
    assert header["classes"] == list(CLASSES)
    features = header["preprocessing"]["features"]
    assert features["weights"] == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert features["data_config"]["crop_size"] == 64
    assert model.named_steps["features"].cache is None  # no temporary folder baked into the file
    assert next(model.named_steps["features"].backbone_.parameters()).device.type == "cpu"


def test_train_report_png_is_an_image(trained):
    out, result = trained
    assert f"report: {out / 'report.png'}" in result.stdout
    with Image.open(out / "report.png") as image:
        assert image.format == "PNG"
        assert image.width > 500 and image.height > 400


def test_train_finetune_mode(photo_folder, cli_env, tmp_path):
    result = run_in_process(
        cli_env, "train", photo_folder, "--mode", "finetune", "--weights", "none", "--image-size", "32",
        "--max-epochs", "1", "--cv", "0", "-o", tmp_path / "tuned.joblib", "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "cross-validated" not in result.stdout  # --cv 0 skips it
    assert "saved" in result.stdout and "finetune" in result.stdout
    from sklearn_tl.deploy.persistence import load_model

    model, header = load_model(tmp_path / "tuned.joblib", return_header=True)
    assert header["estimator"] == "FineTuneClassifier"
    assert set(model.predict([str(p) for p in sorted(photo_folder.rglob("*.jpg"))[:3]])) <= set(CLASSES)


def test_train_html_report(photo_folder, tmp_path, capsys):
    assert main([
        "train", str(photo_folder), "--weights", "none", "--image-size", "32", "--cv", "2",
        "-o", str(tmp_path / "m.joblib"), "--report", str(tmp_path / "r.html"), "-q",
    ]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    assert "china" in page and "Misclassified images" in page


def test_train_lr_auto_report_shows_the_range_test(photo_folder, tmp_path, capsys):
    assert main([
        "train", str(photo_folder), "--mode", "finetune", "--weights", "none", "--image-size", "32",
        "--max-epochs", "1", "--lr", "auto", "--cv", "2", "-o", str(tmp_path / "m.joblib"),
        "--report", str(tmp_path / "r.html"), "-q",
    ]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Learning-rate range test" in page and "suggested learning rate" in page
    from sklearn_tl.deploy.persistence import load_model

    model = load_model(tmp_path / "m.joblib")
    assert model.lr == "auto" and f"{model.lr_finder_.suggestion:.3g}" in page
    rate = f"learning rate: {model.lr_:.3g} (lr="  # the chosen rate, printed and in the report
    assert rate in capsys.readouterr().out and rate in page
    assert model.lr_finder_.lrs[0] <= model.lr_ <= model.lr_finder_.lrs[-1]
    with pytest.raises(SystemExit):
        main(["train", str(photo_folder), "--lr", "fast", "-o", str(tmp_path / "x.joblib")])


@pytest.fixture
def folder_with_broken_images(photo_folder, tmp_path):
    """The photo folder plus a truncated JPEG (china) and a text file named .jpg (flower)."""
    root = tmp_path / "photos"
    for path in sorted(photo_folder.rglob("*.jpg")):
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / path.parent.name / path.name).write_bytes(path.read_bytes())
    good = (photo_folder / "china" / "china_0.jpg").read_bytes()
    (root / "china" / "half.jpg").write_bytes(good[: len(good) // 2])
    (root / "flower" / "notes.jpg").write_text("not an image")
    return root


@pytest.mark.parametrize("mode, cv", [("features", "2"), ("finetune", "0")])
def test_train_skip_unreadable_trains_on_the_rest(folder_with_broken_images, tmp_path, mode, cv):
    from sklearn_tl import ImageReadWarning

    root = folder_with_broken_images
    args = ["train", root, "--mode", mode, "--weights", "none", "--image-size", "32", "--max-epochs", "1",
            "--cv", cv, "-o", tmp_path / "m.joblib", "-q"]
    result = run_in_process({}, *args)
    assert_user_error(result, "train", "Cannot read image file")  # one bad file stops training by default
    assert not (tmp_path / "m.joblib").exists()

    with pytest.warns(ImageReadWarning) as record:
        result = run_in_process({}, *args, "--skip-unreadable")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "16 images in 2 classes: china (8), flower (8); 2 unreadable image(s) skipped"
    )
    (warning,) = [str(w.message) for w in record if w.category is ImageReadWarning]
    assert warning.startswith("2 of 18 image(s) could not be read and are left out: ")
    assert str(root / "china" / "half.jpg") in warning and str(root / "flower" / "notes.jpg") in warning
    from sklearn_tl.deploy.persistence import load_model

    model = load_model(tmp_path / "m.joblib")
    assert set(model.predict([str(root / "china" / "china_1.jpg")])) <= set(CLASSES)


def test_readable_images_finds_a_truncated_large_jpeg(sample_photos, tmp_path):
    # The check decodes at reduced scale (JPEG draft); a cut-off file must still fail it.
    from sklearn_tl import ImageReadWarning
    from sklearn_tl.cli.training import LabelledImages, readable_images

    buffer = io.BytesIO()
    Image.fromarray(sample_photos[0]).save(buffer, "JPEG", quality=90)
    paths = [tmp_path / "whole.jpg", tmp_path / "cut.jpg", tmp_path / "other.jpg"]
    paths[0].write_bytes(buffer.getvalue())
    paths[1].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 3 // 4])
    paths[2].write_bytes(buffer.getvalue())
    data = LabelledImages([str(p) for p in paths], np.array(["a", "a", "b"], dtype=object), ["a", "b"],
                          np.array([2, 1]))
    with pytest.warns(ImageReadWarning, match="cut.jpg"):
        kept, left_out = readable_images(data)
    assert kept.paths == [str(paths[0]), str(paths[2])] and list(kept.y) == ["a", "b"]
    assert kept.counts.tolist() == [1, 1] and left_out == [str(paths[1])]
    assert data.paths == [str(p) for p in paths]  # the input is not modified


def test_train_skip_unreadable_refuses_a_class_with_no_readable_image(folder_with_broken_images, tmp_path):
    for path in (folder_with_broken_images / "flower").glob("flower_*.jpg"):
        path.write_bytes(b"\xff\xd8 not a jpeg")
    from sklearn_tl import ImageReadWarning

    with pytest.warns(ImageReadWarning, match="10 of 18 image"):
        result = run_in_process({}, "train", folder_with_broken_images, "--weights", "none", "--skip-unreadable",
                                "-o", tmp_path / "m.joblib")
    assert_user_error(result, "train", "Class 'flower' has no readable image")


# ---------------------------------------------------------------- predict


def test_predict_prints_label_and_probability(trained, photo_folder, cli_env):
    out, _ = trained
    images = sorted(photo_folder.rglob("*.jpg"))
    result = run_in_process(cli_env, "predict", out / "model.joblib", *images)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in images]
    truth = [p.parent.name for p in images]
    assert sum(r[1] == t for r, t in zip(rows, truth)) >= 15  # the model saw these images
    assert all(0.5 <= float(r[2]) <= 1.0 for r in rows)  # probability of the predicted one of 2 classes


def test_predict_csv_from_a_list_file(trained, photo_folder, tmp_path, capsys):
    out, _ = trained
    listing = tmp_path / "images.txt"
    listing.write_text(f"# two images\n{photo_folder / 'china' / 'china_0.jpg'}\n\nflower_copy.jpg\n")
    (tmp_path / "flower_copy.jpg").write_bytes((photo_folder / "flower" / "flower_0.jpg").read_bytes())
    assert main(["predict", str(out / "model.joblib"), str(listing), "--csv", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "probability", "p_china", "p_flower"]
    assert [Path(r["path"]).name for r in rows] == ["china_0.jpg", "flower_copy.jpg"]
    for row in rows:
        assert float(row["p_china"]) + float(row["p_flower"]) == pytest.approx(1.0, abs=1e-3)
        assert float(row["probability"]) == max(float(row["p_china"]), float(row["p_flower"]))


# ---------------------------------------------------------------- featurize


def test_featurize_folder_to_npy(photo_folder, cli_env, tmp_path):
    result = run_in_process(cli_env, "featurize", photo_folder, "--weights", "none", "--image-size", "32",
                            "-o", tmp_path / "emb.npy")
    assert result.returncode == 0, result.stderr
    embeddings = np.load(tmp_path / "emb.npy")
    assert embeddings.shape == (16, 1280) and embeddings.dtype == np.float32
    assert np.isfinite(embeddings).all()
    paths = (tmp_path / "emb.paths.txt").read_text().splitlines()
    assert [Path(p).parent.name for p in paths] == ["china"] * 8 + ["flower"] * 8
    assert "featurizing" in result.stderr  # the progress bar
    assert "16 images -> 1280 features" in result.stdout


def test_featurize_flat_folder_to_parquet(photo_folder, tmp_path, capsys):
    import pandas as pd

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((photo_folder / "china").glob("*.jpg"))[:3]:
        (flat / path.name).write_bytes(path.read_bytes())
    (flat / "notes.txt").write_text("not an image")
    assert main(["featurize", str(flat), "--weights", "none", "--image-size", "32", "--backbone", "resnet18",
                 "-o", str(tmp_path / "emb.parquet"), "-q"]) == 0
    frame = pd.read_parquet(tmp_path / "emb.parquet")
    assert frame.shape == (3, 1 + 512) and list(frame.columns[:2]) == ["path", "f0"]
    assert [Path(p).name for p in frame["path"]] == ["china_0.jpg", "china_1.jpg", "china_2.jpg"]


def test_featurize_parquet_without_pyarrow_is_one_line(monkeypatch, photo_folder, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    assert main(["featurize", str(photo_folder), "-o", str(tmp_path / "e.parquet")]) == 2
    assert capsys.readouterr().err.strip() == (
        "sklearn-tl featurize: error: Writing .parquet needs pandas and pyarrow: pip install pyarrow pandas"
    )


# ---------------------------------------------------------------- weights, backbones, demo


def test_weights_import_then_list(mobilenet_file, cli_env, tmp_path):
    env = dict(cli_env, TORCH_HOME=str(tmp_path / "torch_home"))
    source = tmp_path / "download" / mobilenet_file.name
    source.parent.mkdir()
    source.write_bytes(mobilenet_file.read_bytes())
    result = run_in_process(env, "weights", "import", source)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "torch_home" / "hub" / "checkpoints" / mobilenet_file.name
    assert target.read_bytes() == mobilenet_file.read_bytes()
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in result.stdout

    result = run_in_process(env, "weights")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "SKLEARN_TL_OFFLINE=1: downloads are off" in lines
    first = lines.index("weights are looked up in, in order:") + 1
    assert lines[first].strip() == str(target.parent)
    assert mobilenet_file.name in lines[first + 1] and "[sha256 ok]" in lines[first + 1]


def test_weights_import_refuses_corrupt_and_unknown_files(mobilenet_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    corrupt = tmp_path / mobilenet_file.name
    corrupt.write_bytes(mobilenet_file.read_bytes()[:100_000])
    assert main(["weights", "import", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sklearn-tl weights import: error: ") and "corrupt" in err and err.count("\n") == 1

    renamed = tmp_path / "my_weights.pth"
    renamed.write_bytes(mobilenet_file.read_bytes())
    assert main(["weights", "import", str(renamed)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["weights", "import", str(renamed), "--force"]) == 0
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "my_weights.pth").is_file()

    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    assert main(["weights", "import", str(not_weights), "--force"]) == 2
    assert "Cannot read weights file" in capsys.readouterr().err
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints" / "notes.pth").exists()


def test_backbones_lists_width_input_and_offline_weights(cli_env, mobilenet_file):
    result = run_cli(cli_env, "backbones", "--include", "mobilenet_v*", entry_point=True)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["mobilenet_v2"][2:] == ["1280", "224", "IMAGENET1K_V1"]  # the offline package's file
    assert rows["mobilenet_v3_small"][2:] == ["576", "224", "-"]


@pytest.mark.slow  # GridSearchCV fits about 28 pipelines: ~13 s on an idle 2-core machine
def test_demo_runs(cli_env):
    result = run_cli(cli_env, "demo", "--per-class", "6", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    assert "MobileNetV2, pretrained (ImageNet V1)" in result.stdout
    assert "raw pixels" in result.stdout


# ---------------------------------------------------------------- bad input


def test_train_missing_folder(cli_env, tmp_path):
    result = run_cli(cli_env, "train", tmp_path / "nope", "-o", tmp_path / "m.joblib")
    assert_user_error(result, "train", "does not exist")
    assert not (tmp_path / "m.joblib").exists()


def test_train_empty_class(cli_env, photo_folder, tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.jpg").write_bytes((photo_folder / "china" / "china_0.jpg").read_bytes())
    (root / "dog" / "readme.txt").write_text("no images here")
    result = run_cli(cli_env, "train", root)
    assert_user_error(result, "train", "holds no images")


def test_predict_unreadable_model_file(cli_env, photo_folder, tmp_path):
    bad = tmp_path / "model.joblib"
    bad.write_text("this is not a model")
    result = run_cli(cli_env, "predict", bad, photo_folder / "china" / "china_0.jpg")
    assert_user_error(result, "predict", "Cannot read model file")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "{photos}/china"], "has no class sub-folders"),
        (["train", "{photos}", "--cv", "0", "--report", "{tmp}/r.png"], "--report"),
        (["train", "{photos}", "-o", "{tmp}/model.txt"], "must end in .joblib"),
        (["train", "{photos}", "--mode", "banana"], "invalid choice"),
        (["train", "{photos}", "--backbone", "no_such_net", "--weights", "none", "-o", "{tmp}/m.joblib"],
         "Unknown backbone"),
        (["featurize", "{photos}", "-o", "{tmp}/e.csv"], "must end in .npy or .parquet"),
        (["featurize", "{tmp}/missing.jpg", "-o", "{tmp}/e.npy"], "does not exist"),
        (["featurize", "{photos}", "--batch-size", "0", "-o", "{tmp}/e.npy"], "positive integer"),
        (["predict", "{tmp}/missing.joblib", "x.jpg"], "does not exist"),
        (["weights", "import", "{tmp}/missing.pth"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, fragment, photo_folder, tmp_path, capsys):
    argv = [a.format(photos=photo_folder, tmp=tmp_path) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sklearn-tl ") and ": error: " in err
    assert fragment in err


def test_train_needs_two_images_per_class_for_cv(photo_folder, tmp_path, capsys):
    root = tmp_path / "data"
    for name, count in [("a", 1), ("b", 3)]:
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes((photo_folder / "china" / "china_0.jpg").read_bytes())
    assert main(["train", str(root), "--weights", "none", "-o", str(tmp_path / "m.joblib")]) == 2
    assert "Class 'a' has 1 image" in capsys.readouterr().err


def test_predict_refuses_foreign_and_incompatible_files(trained, photo_folder, tmp_path, capsys):
    from sklearn_tl import __version__
    from sklearn_tl.exceptions import ModelVersionWarning

    out, _ = trained
    image = str(photo_folder / "china" / "china_0.jpg")
    joblib.dump({"weights": [1, 2, 3]}, tmp_path / "plain.joblib")
    assert main(["predict", str(tmp_path / "plain.joblib"), image]) == 2
    assert "is not an sklearn_tl model file" in capsys.readouterr().err

    content = joblib.load(out / "model.joblib")
    content["header"]["versions"]["sklearn_tl"] = "7.0.0"
    joblib.dump(content, tmp_path / "future.joblib")
    assert main(["predict", str(tmp_path / "future.joblib"), image]) == 2
    assert "saved by sklearn_tl 7.0.0, which is incompatible" in capsys.readouterr().err

    content["header"]["versions"]["sklearn_tl"] = "0.99.0"
    joblib.dump(content, tmp_path / "newer.joblib")
    with pytest.warns(ModelVersionWarning, match="newer than the installed"):
        assert main(["predict", str(tmp_path / "newer.joblib"), image]) == 0

    content["header"]["versions"]["sklearn_tl"] = __version__
    content["header"]["preprocessing"]["features"]["data_config"]["crop_size"] = 224
    joblib.dump(content, tmp_path / "altered.joblib")
    assert main(["predict", str(tmp_path / "altered.joblib"), image]) == 2
    assert "does not match" in capsys.readouterr().err


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["demo", "backbones", "featurize", "train", "predict", "weights"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sklearn-tl {command}")
    assert f"Examples:\n  sklearn-tl {command}" in out


# ---------------------------------------------------------------- messages in command-line words


def test_missing_weights_hint_names_the_option(cli_env, photo_folder, tmp_path):
    result = run_in_process(cli_env, "featurize", photo_folder / "china" / "china_0.jpg", "--weights", "IMAGENET1K_V1",
                            "--backbone", "resnet18", "-o", tmp_path / "e.npy")
    assert_user_error(result, "featurize", "is not on this machine")
    assert "--weights '/path/to/resnet18-" in result.stderr and "weights='" not in result.stderr


def test_python_api_keeps_the_argument_in_the_weights_hint(cli_env, monkeypatch):
    from sklearn_tl import PretrainedCNNFeaturizer, WeightsNotFoundError

    monkeypatch.setenv("TORCH_HOME", cli_env["TORCH_HOME"])
    with pytest.raises(WeightsNotFoundError, match="pass weights='/path/to/resnet18-"):
        PretrainedCNNFeaturizer("resnet18", weights="IMAGENET1K_V1").fit(np.zeros((1, 8, 8, 3), np.uint8))


def test_train_writes_the_safe_format_by_default(photo_folder, tmp_path, monkeypatch):
    # The default output is model.skops: a file that loads without running code, and predict reads it.
    monkeypatch.chdir(tmp_path)
    result = run_in_process({}, "train", photo_folder, "--weights", "none", "--image-size", "32", "--cv", "0", "-q")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "model.skops"
    import skops.io

    assert path.read_bytes()[:2] == b"PK"  # a skops (zip) file, not a pickle
    from sklearn_tl import skops_trusted_types

    assert set(skops.io.get_untrusted_types(file=path)) <= set(skops_trusted_types())
    image = str(photo_folder / "china" / "china_1.jpg")
    result = run_in_process({}, "predict", path, image)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[0] == image
