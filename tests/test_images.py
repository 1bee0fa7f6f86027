"""Images at scale: folders of real photos, odd formats, bad files, streaming."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_tl import (
    ImageReadError,
    ImageReadWarning,
    PretrainedCNNFeaturizer,
    load_image_folder,
)
from sklearn_tl.data.decode import read_image_file


def tiny(**params):
    defaults = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}
    return PretrainedCNNFeaturizer(**{**defaults, **params})


@pytest.fixture(scope="module")
def crops():
    """Real 96x128 crops of scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    return [photos[i % 2][40 * i : 40 * i + 96, 50 * i : 50 * i + 128] for i in range(6)]


@pytest.fixture
def photo_folder(tmp_path, crops):
    root = tmp_path / "photos"
    for i, crop in enumerate(crops):
        label = "china" if i % 2 == 0 else "flower"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(root / label / f"img{i}.png")
    (root / "china" / ".DS_Store").write_bytes(b"\0\1")
    (root / "flower" / "README.txt").write_text("not an image")
    (root / ".hidden_class").mkdir()
    (root / "flower" / "nested").mkdir()
    Image.fromarray(crops[1]).save(root / "flower" / "nested" / "deep.JPG")
    return root


class TestLoadImageFolder:
    def test_paths_labels_and_skipped_files(self, photo_folder):
        data = load_image_folder(photo_folder)
        assert data.target_names == ["china", "flower"]
        assert len(data.filenames) == 7 and data.target.tolist().count(1) == 4
        assert data.n_skipped == 2 and any(p.endswith("README.txt") for p in data.skipped)
        assert any(p.endswith("deep.JPG") for p in data.filenames)  # endings are case-insensitive
        X, y = load_image_folder(photo_folder, return_X_y=True)
        assert tiny().fit(X, y).transform(X).shape == (7, 512)

    def test_missing_folder_and_empty_class(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_image_folder(tmp_path / "nope")
        with pytest.raises(ValueError, match="no class sub-folders"):
            load_image_folder(tmp_path)
        (tmp_path / "empty_class").mkdir()
        with pytest.raises(ValueError, match="empty_class.*holds no images"):
            load_image_folder(tmp_path)


class TestRealWorldFiles:
    def test_exif_orientation_is_applied(self, tmp_path, crops, ):
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        Image.fromarray(crops[0]).save(tmp_path / "rotated.png", exif=exif)
        loaded = read_image_file(tmp_path / "rotated.png")
        expected = np.rot90(crops[0], k=-1)
        np.testing.assert_array_equal(loaded.permute(1, 2, 0).numpy(), expected)

    def test_palette_cmyk_gray_rgba_and_16_bit(self, tmp_path, crops):
        rgb = Image.fromarray(crops[2])
        cases = {
            "palette.png": rgb.convert("P"),
            "cmyk.jpg": rgb.convert("CMYK"),
            "gray.png": rgb.convert("L"),
            "rgba.png": rgb.convert("RGBA"),
        }
        for name, image in cases.items():
            image.save(tmp_path / name)
            with Image.open(tmp_path / name) as reopened:
                expected = np.asarray(reopened.convert("RGB"))
            loaded = read_image_file(tmp_path / name)
            if loaded.shape[0] == 1:
                loaded = loaded.expand(3, -1, -1)
            np.testing.assert_array_equal(loaded.permute(1, 2, 0).numpy(), expected, err_msg=name)
        gray8 = np.asarray(rgb.convert("L"))
        Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
        sixteen = read_image_file(tmp_path / "gray16.png")
        assert sixteen.dtype.is_floating_point  # 16-bit precision is kept, not clipped to 255
        np.testing.assert_allclose(sixteen[0].numpy(), gray8 / 255.0, atol=1e-6)
        featurizer = tiny().fit(crops)
        np.testing.assert_allclose(
            featurizer.transform([tmp_path / "gray16.png"]), featurizer.transform([gray8]), rtol=0.02, atol=0.02
        )

    def test_large_images_are_decoded_at_reduced_scale(self, tmp_path, crops):
        big = Image.fromarray(crops[0]).resize((4000, 3000))
        big.save(tmp_path / "big.jpg", quality=90)
        big.save(tmp_path / "big.png", compress_level=1)
        for name in ["big.jpg", "big.png"]:
            full = read_image_file(tmp_path / name)
            reduced = read_image_file(tmp_path / name, min_side=73)
            assert full.shape[1:] == (3000, 4000)
            assert 146 <= min(reduced.shape[1:]) < 600, name  # >= 2x the resize, far below full size
        Z = tiny(image_size=64).fit([crops[0]]).transform([tmp_path / "big.jpg", tmp_path / "big.png"])
        assert np.isfinite(Z).all()

    def test_decompression_bomb_protection_stays_on(self, tmp_path, monkeypatch, crops):
        Image.fromarray(crops[0]).save(tmp_path / "bomb.png")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 96*128 > 2x the limit
        with pytest.raises(ImageReadError, match="bomb.png.*DecompressionBomb"):
            tiny().fit(crops).transform([tmp_path / "bomb.png"])


class TestBadFiles:
    @pytest.fixture
    def bad_folder(self, tmp_path, crops):
        good = tmp_path / "good.jpg"
        Image.fromarray(crops[0]).save(good)
        truncated = tmp_path / "truncated.jpg"
        truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
        not_image = tmp_path / "text.png"
        not_image.write_text("hello, I am not a PNG")
        return {"good": good, "truncated": truncated, "not_image": not_image,
                "missing": tmp_path / "missing.jpg", "directory": tmp_path}

    @pytest.mark.parametrize("kind", ["truncated", "not_image", "missing", "directory"])
    def test_error_names_the_file_and_index(self, bad_folder, kind, crops):
        featurizer = tiny().fit(crops)
        paths = [bad_folder["good"], bad_folder[kind]]
        with pytest.raises(ImageReadError, match="index 1") as info:
            featurizer.transform(paths)
        assert str(bad_folder[kind]) in str(info.value) and info.value.index == 1

    def test_on_error_warn_gives_nan_rows_in_place(self, bad_folder, crops):
        featurizer = tiny(on_error="warn", batch_size=2).fit(crops)
        paths = [bad_folder["good"], bad_folder["truncated"], bad_folder["good"], bad_folder["not_image"],
                 bad_folder["good"]]
        with pytest.warns(ImageReadWarning, match=r"2 of 5.*truncated\.jpg.*text\.png"):
            Z = featurizer.transform(paths)
        assert Z.shape == (5, 512)
        assert np.isnan(Z[[1, 3]]).all() and np.isfinite(Z[[0, 2, 4]]).all()
        np.testing.assert_allclose(Z[0], featurizer.transform([bad_folder["good"]])[0], rtol=1e-4, atol=1e-5)

    def test_on_error_warn_when_nothing_is_readable(self, bad_folder, crops):
        featurizer = tiny(on_error="warn").fit(crops)
        with pytest.warns(ImageReadWarning, match="1 of 1"):
            Z = featurizer.transform([bad_folder["truncated"]])
        assert Z.shape == (1, 512) and np.isnan(Z).all()


class TestStreaming:
    def test_workers_give_the_same_rows(self, photo_folder):
        X, _ = load_image_folder(photo_folder, return_X_y=True)
        serial = tiny().fit(X).transform(X)
        parallel = tiny(num_workers=2, batch_size=2).fit(X).transform(X)
        np.testing.assert_allclose(parallel, serial, rtol=1e-4, atol=1e-5)

    def test_progress_bar_reports_images_per_second(self, crops, capsys):
        tiny(progress=True).fit(crops).transform(crops)
        err = capsys.readouterr().err
        assert "img/s" in err and "6/6" in err
        refreshes = [line for line in re.split(r"[\r\n]+", err) if "featurizing" in line]
        assert all(len(re.findall("img/s|s/img", line)) <= 1 for line in refreshes), refreshes  # one rate


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys, numpy as np
    from sklearn_tl import PretrainedCNNFeaturizer, load_image_folder
    X, _ = load_image_folder(sys.argv[1], return_X_y=True)
    X = X[: int(sys.argv[2])]
    f = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, batch_size=16, progress=False).fit(X[:1])
    Z = f.transform(X)
    assert Z.shape[0] == len(X) and np.isfinite(Z).all()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_paths(tmp_path, crops):
    root = tmp_path / "many" / "photos"
    root.mkdir(parents=True)
    big = [np.asarray(Image.fromarray(c).resize((320, 240))) for c in crops]
    for i in range(500):
        Image.fromarray(big[i % len(big)]).save(root / f"{i:04d}.jpg", quality=80)
    (tmp_path / "peak.py").write_text(PEAK_RSS_SCRIPT)
    peaks = {}
    for n in (50, 500):
        out = subprocess.run([sys.executable, str(tmp_path / "peak.py"), str(tmp_path / "many"), str(n)],
                             capture_output=True, text=True, check=True, timeout=300)
        peaks[n] = int(out.stdout.split()[-1]) / 1024  # MiB
    # Holding 500 decoded 320x240 photos would add ~110 MiB; streaming adds ~nothing.
    assert peaks[500] - peaks[50] < 30, peaks


class TestPathColumn:
    """A column of paths, as ``ColumnTransformer([..., ["path"]])`` passes it."""

    @pytest.fixture
    def png_paths(self, tmp_path, crops):
        paths = []
        for i, crop in enumerate(crops[:4]):
            Image.fromarray(crop).save(tmp_path / f"img{i}.png")
            paths.append(str(tmp_path / f"img{i}.png"))
        return paths

    def test_column_transformer_with_pandas_output(self, png_paths):
        import pandas as pd
        from sklearn.compose import ColumnTransformer

        frame = pd.DataFrame({"path": png_paths, "size_kb": [1.0, 2.0, 3.0, 4.0]}, index=[10, 11, 12, 13])
        columns = ColumnTransformer([("img", tiny(), ["path"])], remainder="passthrough")
        out = columns.set_output(transform="pandas").fit_transform(frame)
        assert isinstance(out, pd.DataFrame)
        assert out.shape == (4, 512 + 1)
        assert list(out.index) == [10, 11, 12, 13]
        assert out.columns[0] == "img__pretrainedcnnfeaturizer0" and out.columns[-1] == "remainder__size_kb"
        expected = tiny().fit_transform(png_paths)
        np.testing.assert_allclose(out.iloc[:, :512].to_numpy(), expected, rtol=1e-5, atol=1e-6)

    def test_one_column_frame_and_n_by_1_array_are_lists_of_paths(self, png_paths):
        import pandas as pd

        from sklearn_tl.data.inputs import as_image_source

        as_column = np.asarray(png_paths, dtype=object).reshape(-1, 1)
        for X in (pd.DataFrame({"path": png_paths}), as_column, as_column.astype(str)):
            source = as_image_source(X)
            assert [source.path(i) for i in range(len(source))] == png_paths
        featurizer = tiny().fit(as_column)
        np.testing.assert_allclose(featurizer.transform(as_column), featurizer.transform(png_paths), rtol=1e-6)

    def test_two_columns_of_paths_are_refused(self, png_paths):
        import pandas as pd

        from sklearn_tl.data.inputs import as_image_source

        with pytest.raises(ValueError, match=r"shape \(4, 2\).*one column"):
            as_image_source(pd.DataFrame({"a": png_paths, "b": png_paths}))


class TestValueRange:
    """``as_image_source(X, value_range=(low, high))`` maps array values to [0, 1]."""

    @staticmethod
    def images(source):
        return [source.load(i) for i in range(len(source))]

    def test_flattened_digits(self):
        from sklearn.datasets import load_digits

        from sklearn_tl.data.inputs import as_image_source

        X = load_digits().data[:20]
        before = X.copy()
        with pytest.raises(ValueError, match="value_range"):  # today's rule stays, with a pointer
            as_image_source(X, image_shape=(8, 8))
        images = self.images(as_image_source(X, image_shape=(8, 8), value_range=(0, 16)))
        assert all(image.dtype == torch.float32 and image.shape == (1, 8, 8) for image in images)
        np.testing.assert_allclose(np.stack([im[0].numpy() for im in images]), X.reshape(-1, 8, 8) / 16, atol=1e-7)
        np.testing.assert_array_equal(X, before)  # the caller's array is not modified

    @pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float32, np.float64])
    def test_arrays_of_any_numeric_dtype(self, dtype):
        from sklearn_tl.data.inputs import as_image_source

        X = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3).astype(dtype) * 40 + 100  # 100 .. 3860
        before = X.copy()
        images = self.images(as_image_source(X, value_range=(100, 3900)))
        expected = (X.astype(np.float64) - 100) / 3800
        np.testing.assert_allclose(np.stack([im.permute(1, 2, 0).numpy() for im in images]), expected, atol=1e-6)
        np.testing.assert_array_equal(X, before)

    def test_negative_floats_tensors_and_lists(self):
        from sklearn_tl.data.inputs import as_image_source

        X = np.linspace(-1, 1, 2 * 3 * 5 * 5).reshape(2, 3, 5, 5)  # e.g. images normalised to [-1, 1]
        tensor = torch.tensor(X, dtype=torch.float32)
        from_tensor = self.images(as_image_source(tensor, value_range=(-1, 1)))
        from_list = self.images(as_image_source([x.transpose(1, 2, 0) for x in X], value_range=(-1.0, 1.0)))
        for image, list_image, x in zip(from_tensor, from_list, X):
            np.testing.assert_allclose(image.numpy(), (x + 1) / 2, atol=1e-6)
            np.testing.assert_allclose(list_image.numpy(), (x + 1) / 2, atol=1e-6)
        assert torch.equal(tensor, torch.tensor(X, dtype=torch.float32))

    def test_image_dataset_gives_the_same_items_as_prescaled_input(self):
        from sklearn_tl.data.dataset import ImageDataset
        from sklearn_tl.data.inputs import as_image_source
        from sklearn_tl.data.config import DataConfig
        from sklearn_tl.data.transforms import ImageTransform

        rng = np.random.default_rng(0)
        X = rng.integers(0, 1024, (3, 20, 24, 3))  # 10-bit images
        transform = ImageTransform(DataConfig(crop_size=16, resize_size=18))
        ranged = ImageDataset(as_image_source(X, value_range=(0, 1023)), transform)
        prescaled = ImageDataset(as_image_source(X / 1023), transform)
        for i in range(3):
            assert ranged[i].shape == (3, 16, 16)
            torch.testing.assert_close(ranged[i], prescaled[i], rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(
        "X, value_range",
        [
            (np.full((2, 8, 8), 17.0), (0, 16)),
            (np.full((2, 8, 8), -0.5), (0, 16)),
            (np.full((2, 8, 8), 300, np.int32), (0, 255)),
            (torch.full((2, 3, 8, 8), 2.0), (-1, 1)),
        ],
    )
    def test_values_outside_the_range_name_it(self, X, value_range):
        from sklearn_tl.data.inputs import as_image_source

        low, high = value_range
        with pytest.raises(ValueError, match=rf"outside value_range=\({low:g}, {high:g}\)"):
            as_image_source(X, value_range=value_range)

    def test_list_items_outside_the_range_name_the_item(self):
        from sklearn_tl.data.inputs import as_image_source

        source = as_image_source([np.zeros((4, 4)), np.full((4, 4), 20.0)], value_range=(0, 16))
        source.load(0)
        with pytest.raises(ValueError, match=r"X\[1\] has values in \[20, 20\], outside value_range=\(0, 16\)"):
            source.load(1)

    @pytest.mark.parametrize("value_range", [(1, 1), (2, 1), (0,), (0, 1, 2), "ab", (0, np.nan), (0, np.inf),
                                             (False, True), 16])
    def test_invalid_value_range(self, value_range):
        from sklearn_tl.data.inputs import as_image_source

        with pytest.raises(ValueError, match="value_range must be None or a \\(low, high\\) pair"):
            as_image_source(np.zeros((2, 8, 8)), value_range=value_range)

    def test_nan_is_refused_with_a_range(self):
        from sklearn_tl.data.inputs import as_image_source

        with pytest.raises(ValueError, match="NaN"):
            as_image_source(np.full((2, 8, 8), np.nan), value_range=(0, 16))

    def test_paths_and_pil_images_are_not_rescaled(self, tmp_path, crops):
        from sklearn_tl.data.inputs import as_image_source

        Image.fromarray(crops[0]).save(tmp_path / "a.png")
        for X in ([str(tmp_path / "a.png")], [Image.fromarray(crops[0])]):
            with pytest.raises(ValueError, match="value_range applies to arrays and tensors only"):
                as_image_source(X, value_range=(0, 16)).load(0)


class TestCollectImages:
    """Folders, image files and list files, as the command line takes them."""

    def test_class_folder_flat_folder_file_and_list(self, photo_folder, tmp_path):
        from sklearn_tl.data.folders import collect_images

        paths, labels = collect_images([photo_folder])
        data = load_image_folder(photo_folder)
        assert paths == [str(p) for p in data.filenames]
        assert labels == [data.target_names[t] for t in data.target]

        flat = photo_folder / "china"
        listing = tmp_path / "list.txt"
        listing.write_text(f"# images\n\n{photo_folder / 'flower' / 'img1.png'}\n  rel/a.png  \n")
        (tmp_path / "rel").mkdir()
        (tmp_path / "rel" / "a.png").write_bytes((flat / "img0.png").read_bytes())
        paths, labels = collect_images([flat, flat / "img2.png", listing])
        assert [Path(p).name for p in paths] == ["img0.png", "img2.png", "img4.png", "img2.png", "img1.png", "a.png"]
        assert paths[-1] == str(tmp_path / "rel" / "a.png")  # relative to the list's folder
        assert labels is None  # no class folder given

    def test_errors_name_the_input(self, photo_folder, tmp_path):
        from sklearn_tl.data.folders import collect_images, read_image_list

        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("x")
        with pytest.raises(ValueError, match="'.*empty' holds no image files"):
            collect_images([tmp_path / "empty"])
        with pytest.raises(FileNotFoundError, match="nope.jpg' does not exist"):
            collect_images([tmp_path / "nope.jpg"])
        with pytest.raises(ValueError, match="No images given"):
            collect_images([])
        listing = tmp_path / "list.txt"
        listing.write_text("# nothing\n\n")
        with pytest.raises(ValueError, match="names no images"):
            read_image_list(listing)
        listing.write_text(f"{photo_folder / 'china' / 'img0.png'}\nmissing.png\n")
        with pytest.raises(FileNotFoundError, match="line 2: image 'missing.png' does not exist"):
            collect_images([listing])
        binary = tmp_path / "data.bin"
        binary.write_bytes(b"\xff\xfe\x00\x81")
        with pytest.raises(ValueError, match="neither an image nor a list of image paths"):
            collect_images([binary])


def test_value_range_is_part_of_the_content_key_and_refused_for_keyed_paths(tmp_path, crops):
    from sklearn_tl.data.inputs import as_image_source

    X = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 2, 8)  # not (2, 4, 4): that reads as one RGBA image
    plain = as_image_source(X / 31)
    for data in (X, [X[0], X[1]], torch.tensor(X)):
        keys = {as_image_source(data, value_range=r).content_key(0) for r in [(0, 31), (0, 40), (-1, 31)]}
        assert len(keys) == 3
        assert as_image_source(data, value_range=(0, 31)).content_key(0) == \
            as_image_source(data, value_range=(0.0, 31.0)).content_key(0)
    image, key = as_image_source(X, value_range=(0, 31)).load_keyed(1)
    torch.testing.assert_close(image, plain.load(1))
    assert key == as_image_source(X, value_range=(0, 31)).content_key(1)
    Image.fromarray(crops[0]).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="value_range applies to arrays and tensors only"):
        as_image_source([str(tmp_path / "a.png")], value_range=(0, 16)).load_keyed(0)
