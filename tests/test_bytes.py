"""Encoded images as input (bytes, file objects, image rows), one image refused as a batch, bounded messages.

The images are real JPEG crops of scikit-learn's two sample photos; each encoded
form must give exactly the rows the same file gives.
"""

import io
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from sklearn_tl import FineTuneClassifier, ImageReadError, ImageReadWarning, PretrainedCNNFeaturizer
from sklearn_tl.data.inputs import as_image_source
from sklearn_tl.data.decode import read_image_file

from .conftest import write_photo_folder

MESSAGE_LIMIT = 600  # characters: what any message quoting user data may reach


def featurizer(**params):
    defaults = {"backbone": "resnet18", "weights": None, "image_size": 32, "random_state": 0}
    return PretrainedCNNFeaturizer(**{**defaults, **params})


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, sample_photos):
    """6 real 72x72 JPEG crops (3 per photo): their paths and their bytes."""
    root = write_photo_folder(tmp_path_factory.mktemp("jpegs"), sample_photos, ["china", "flower"], 3, 72, ".jpg")
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    return paths, [Path(p).read_bytes() for p in paths]


@pytest.fixture(scope="module")
def fitted(jpegs):
    return featurizer().fit(jpegs[0][:1])


@pytest.fixture(scope="module")
def path_rows(fitted, jpegs):
    return fitted.transform(jpegs[0])


class RowColumn(Sequence):
    """A read-only sequence that is no list, as a Hugging Face ``datasets`` Column of image rows is."""

    def __init__(self, rows):
        self._rows = rows

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, index):
        return self._rows[index]


def encoded_forms(paths, blobs):
    """Every way to pass the same images as encoded content (and a mixed list)."""
    return {
        "bytes": list(blobs),
        "bytearray": [bytearray(b) for b in blobs],
        "memoryview": [memoryview(b) for b in blobs],
        "BytesIO": [io.BytesIO(b) for b in blobs],
        "object array": np.array(blobs + [None], dtype=object)[:-1],
        "Series": pd.Series(blobs, index=range(10, 10 + len(blobs))),
        "arrow Series": pd.Series(blobs, dtype="binary[pyarrow]"),
        "one-column DataFrame": pd.DataFrame({"image": blobs}),
        "(n, 1) array": np.array(blobs + [None], dtype=object)[:-1].reshape(-1, 1),
        "HF rows": [{"bytes": b, "path": f"name{i}.jpg"} for i, b in enumerate(blobs)],
        "HF rows without bytes": [{"bytes": None, "path": p} for p in paths],
        "HF-like Column": RowColumn([{"bytes": b, "path": None} for b in blobs]),
        "mixed": [blobs[0], paths[1], io.BytesIO(blobs[2]), {"bytes": blobs[3], "path": None},
                  Image.open(paths[4]), np.asarray(Image.open(paths[5]))],
    }


FORMS = ["bytes", "bytearray", "memoryview", "BytesIO", "object array", "Series", "arrow Series",
         "one-column DataFrame", "(n, 1) array", "HF rows", "HF rows without bytes", "HF-like Column", "mixed"]


@pytest.mark.parametrize("form", FORMS)
def test_each_encoded_form_gives_exactly_the_file_rows(form, fitted, jpegs, path_rows):
    forms = encoded_forms(*jpegs)
    assert list(forms) == FORMS
    X = forms[form]
    np.testing.assert_array_equal(fitted.transform(X), path_rows)


def test_open_files_are_read_from_the_start_left_open_and_where_they_were(fitted, jpegs, path_rows):
    paths, blobs = jpegs
    handles = [open(p, "rb") for p in paths]
    try:
        for i, handle in enumerate(handles):
            handle.read(i)  # each left at another position
        buffer = io.BytesIO(blobs[0])
        buffer.seek(7)
        X = [buffer] + handles[1:]
        before = list(X)
        np.testing.assert_array_equal(fitted.transform(X), path_rows)
        assert X == before and X[0] is buffer  # the list is not modified
        assert buffer.tell() == 7 and buffer.getvalue() == blobs[0]
        assert [h.tell() for h in handles[1:]] == list(range(1, len(paths)))
        assert not any(h.closed for h in handles)
    finally:
        for handle in handles:
            handle.close()


def test_bytes_decode_as_the_file_reduced_scale_jpeg_and_exif(tmp_path, sample_photos):
    # A full-size photo: decoding for a 32 px network uses JPEG draft (DCT scaling), from a file and from bytes.
    big = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(sample_photos[1]).save(big, exif=exif)
    data = big.read_bytes()
    from_file = read_image_file(big, min_side=36)
    from_bytes, key = as_image_source([data]).load_keyed(0, min_side=36)
    assert torch.equal(from_bytes, from_file)
    assert from_bytes.shape[1] > from_bytes.shape[2]  # EXIF rotation applied: the 427x640 photo stands upright
    assert from_bytes.shape[1] < 640  # decoded at reduced scale
    assert key == as_image_source([str(big)]).load_keyed(0, min_side=36)[1]


class TestCache:
    def test_a_file_and_its_bytes_share_one_cache_row(self, tmp_path, jpegs, count_images):
        paths, blobs = jpegs
        first = featurizer(cache=tmp_path / "cache").fit(paths[:1])
        from_paths = first.transform(paths)
        assert count_images["images"] == len(paths)
        from_bytes = featurizer(cache=tmp_path / "cache").fit(paths[:1]).transform(pd.Series(blobs))
        assert count_images["images"] == len(paths)  # every row came from the cache
        np.testing.assert_array_equal(from_bytes, from_paths)

    def test_bytes_first_then_files_and_file_objects(self, tmp_path, jpegs, count_images):
        paths, blobs = jpegs
        cached = featurizer(cache=tmp_path / "cache").fit(paths[:1])
        cached.transform([bytearray(b) for b in blobs[:3]])
        assert count_images["images"] == 3
        cached.transform(paths[:3] + [io.BytesIO(b) for b in blobs[3:]])
        assert count_images["images"] == 6  # only the three new images were embedded
        assert as_image_source([blobs[0]]).content_key(0) == as_image_source(paths[:1]).content_key(0)


class TestBadBytes:
    def test_the_error_names_index_length_and_signature(self, fitted, jpegs):
        paths, blobs = jpegs
        with pytest.raises(ImageReadError, match=r"X\[1\], an encoded image of 19 bytes starting 6e 6f 74 20 61 6e "
                                                 r"20 69: not a recognised image format") as info:
            fitted.transform([blobs[0], b"not an image at all"])
        assert info.value.index == 1 and info.value.path is None
        with pytest.raises(ImageReadError, match=r"X\[2\], an encoded image of 300 bytes starting ff d8 ff"):
            fitted.transform(pd.Series([blobs[0], blobs[1], blobs[2][:300]]))  # a truncated JPEG
        with pytest.raises(ImageReadError, match=r"X\[0\], an encoded image of 0 bytes:"):
            fitted.transform([b""])

    def test_on_error_warn_gives_a_nan_row(self, jpegs, path_rows):
        paths, blobs = jpegs
        lenient = featurizer(on_error="warn", batch_size=2).fit(paths[:1])
        X = [blobs[0], b"\x89PNG\r\n\x1a\n broken", blobs[2], {"bytes": b"junk", "path": None}]
        with pytest.warns(ImageReadWarning, match=r"2 of 4 image\(s\) could not be read.*X\[1\].*89 50 4e 47"):
            Z = lenient.transform(X)
        assert np.isnan(Z[[1, 3]]).all()
        np.testing.assert_array_equal(Z[[0, 2]], path_rows[[0, 2]])

    def test_a_closed_file_object_is_a_read_error_of_its_index(self, fitted, jpegs):
        closed = io.BytesIO(jpegs[1][0])
        closed.close()
        with pytest.raises(ImageReadError, match=r"X\[1\], a BytesIO: ValueError: I/O operation on closed file"):
            fitted.transform([jpegs[1][0], closed])

    def test_the_decompression_bomb_limit_stays_in_force(self, fitted, jpegs, monkeypatch):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 72x72 = 5184 pixels: over twice the limit
        with pytest.raises(ImageReadError, match=r"X\[0\], an encoded image.*DecompressionBombError"):
            fitted.transform([jpegs[1][0]])

    def test_wrong_kinds_are_refused_clearly(self, fitted, jpegs, tmp_path):
        paths, blobs = jpegs
        with pytest.raises(TypeError, match=r"X is a single encoded image \([\d,]+ bytes starting ff d8"):
            fitted.transform(blobs[0])
        with pytest.raises(TypeError, match=r"single encoded image \(a BytesIO\)"):
            fitted.transform(io.BytesIO(blobs[0]))
        with pytest.raises(ValueError, match="drops trailing zero bytes"):
            fitted.transform(np.array(blobs))  # numpy "S" dtype
        with pytest.raises(ValueError, match="value_range applies to arrays and tensors only"):
            featurizer(value_range=(0, 16)).fit(blobs)
        with pytest.raises(TypeError, match=r"X\[0\] is a dict with keys \['bytes', 'path'\]"):
            fitted.transform([{"bytes": None, "path": None}])
        (tmp_path / "t.jpg").write_bytes(blobs[0])
        with open(tmp_path / "t.jpg") as text_file, pytest.raises(TypeError, match="binary mode"):
            fitted.transform([text_file])


def test_pickling_a_featurizer_that_saw_bytes_stores_no_bytes(jpegs):
    paths, blobs = jpegs
    model = featurizer(cache=None).fit(blobs)
    model.transform(blobs)
    state = pickle.dumps(model)
    assert all(blob[100:164] not in state for blob in blobs)


def test_column_transformer_with_a_bytes_column(jpegs, path_rows):
    from sklearn.compose import ColumnTransformer

    paths, blobs = jpegs
    frame = pd.DataFrame({"image": blobs, "size_kb": [len(b) / 1024 for b in blobs]})
    columns = ColumnTransformer([("img", featurizer(), ["image"])], remainder="passthrough")
    out = columns.set_output(transform="pandas").fit_transform(frame)
    assert out.shape == (len(blobs), 512 + 1)
    np.testing.assert_array_equal(out.iloc[:, :512].to_numpy(dtype=np.float32), path_rows)


def test_featurize_dask_over_a_parquet_binary_column(tmp_path, fitted, jpegs, path_rows):
    import dask
    import dask.dataframe as dd

    from sklearn_tl import featurize_dask

    paths, blobs = jpegs
    pd.DataFrame({"image": blobs, "label": [0, 0, 0, 1, 1, 1]}).to_parquet(tmp_path / "images.parquet")
    table = dd.read_parquet(tmp_path / "images.parquet").repartition(npartitions=2)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(featurize_dask(fitted, table["image"]).compute(), path_rows)
        np.testing.assert_array_equal(featurize_dask(fitted, table[["image"]]).compute(), path_rows)


def tiny_backbone():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())


def test_the_fine_tuner_fits_and_predicts_on_bytes_as_on_paths(jpegs):
    paths, blobs = jpegs
    y = np.array([0, 0, 0, 1, 1, 1])

    def tuner():
        torch.manual_seed(0)
        return FineTuneClassifier(tiny_backbone(), weights=None, image_size=16, max_epochs=1, random_state=0,
                                  augment=False, batch_size=4, lr=1e-2)

    on_paths = tuner().fit(paths, y)
    on_bytes = tuner().fit(pd.Series(blobs), y)
    np.testing.assert_allclose(on_bytes.predict_proba(paths), on_paths.predict_proba(paths), rtol=1e-5, atol=1e-6)
    encoded = [io.BytesIO(blobs[0]), bytearray(blobs[1]), {"bytes": blobs[2], "path": None}, *blobs[3:]]
    np.testing.assert_array_equal(on_paths.predict(encoded), on_paths.predict(paths))
    np.testing.assert_array_equal(on_paths.predict_proba(encoded), on_paths.predict_proba(paths))
    np.testing.assert_array_equal(on_paths.transform(blobs), on_paths.transform(paths))
    assert all(blob[100:164] not in pickle.dumps(on_bytes) for blob in blobs)
    with pytest.raises(ValueError, match="looks like one image"):
        on_paths.predict(np.asarray(Image.open(paths[0])))


class TestOnnxImages:
    def test_prepare_images_on_bytes_equals_on_paths(self, jpegs):
        from sklearn_tl.onnx_images import prepare_images

        paths, blobs = jpegs
        expected = prepare_images(paths, crop_size=32, resize_size=36)
        buffer = io.BytesIO(blobs[0])
        buffer.seek(3)
        forms = [blobs, pd.Series(blobs), pd.DataFrame({"image": blobs}), [memoryview(b) for b in blobs],
                 [buffer] + [{"bytes": b, "path": None} for b in blobs[1:]]]
        for X in forms:
            np.testing.assert_array_equal(prepare_images(X, crop_size=32, resize_size=36), expected)
        assert buffer.tell() == 3
        with pytest.raises(ValueError, match=r"images\[1\] \(7 bytes starting 6e 6f 74"):
            prepare_images([blobs[0], b"not jpg"], crop_size=32, resize_size=36)
        with pytest.raises(TypeError, match="single bytes"):
            prepare_images(blobs[0], crop_size=32, resize_size=36)
        with pytest.raises(ValueError, match="looks like one image"):
            prepare_images(np.asarray(Image.open(paths[0])), crop_size=32, resize_size=36)

    def test_prepare_images_on_bytes_without_torch(self, jpegs, tmp_path):
        from sklearn_tl import onnx_images
        from sklearn_tl.onnx_images import prepare_images

        paths, blobs = jpegs
        script = textwrap.dedent(f"""
            import importlib.util, sys
            import numpy as np
            sys.modules["torch"] = None  # `import torch` fails in this process
            spec = importlib.util.spec_from_file_location("onnx_images", {onnx_images.__file__!r})
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            blobs = [open(p, "rb").read() for p in {paths!r}]
            np.save({str(tmp_path / "batch.npy")!r}, module.prepare_images(blobs, crop_size=32, resize_size=36))
        """)
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        np.testing.assert_array_equal(np.load(tmp_path / "batch.npy"), prepare_images(paths, 32, 36))


class TestOneImageIsNotABatch:
    def test_an_hwc_array_is_refused_with_how_to_pass_it(self, fitted, sample_photos):
        photo = sample_photos[0][:64, :80]
        with pytest.raises(ValueError, match=r"shape \(64, 80, 3\), which looks like one image \(H, W, C\)") as info:
            fitted.transform(photo)
        for advice in ("X[None]", "[X]", "X[..., None]", "(n, H, W, 1)"):
            assert advice in str(info.value)
        with pytest.raises(ValueError, match="looks like one image"):
            fitted.transform(np.dstack([photo, photo[..., :1]]))  # RGBA
        np.testing.assert_array_equal(fitted.transform(photo[None]), fitted.transform([photo]))

    def test_tensors_one_chw_or_hwc_image_is_refused(self, fitted):
        image = torch.rand(3, 20, 24)
        with pytest.raises(ValueError, match=r"looks like one image \(C, H, W\).*X\[None\].*X\[:, None\]"):
            fitted.transform(image)
        with pytest.raises(ValueError, match=r"looks like one image \(H, W, C\).*permute"):
            fitted.transform(image.permute(1, 2, 0))
        assert fitted.transform(image[None]).shape == (1, 512)

    def test_unambiguous_grayscale_batches_still_work(self, fitted):
        rng = np.random.default_rng(0)
        gray = rng.integers(0, 256, (5, 12, 9), dtype=np.uint8)
        assert fitted.transform(gray).shape == (5, 512)
        assert fitted.transform(torch.from_numpy(gray)).shape == (5, 512)
        # Width 3 is fine where a batch is declared: flattened rows with image_shape, or a channel axis.
        narrow = rng.integers(0, 256, (4, 10, 3), dtype=np.uint8)
        declared = featurizer(image_shape=(10, 3)).fit(narrow.reshape(4, -1))
        np.testing.assert_array_equal(declared.transform(narrow.reshape(4, -1)), fitted.transform(narrow[..., None]))


class TestBoundedMessages:
    def test_a_series_of_large_non_image_bytes(self, fitted):
        junk = pd.Series([bytes(range(256)) * 250] * 3)  # 64,000 bytes each
        with pytest.raises(ImageReadError) as info:
            fitted.transform(junk)
        assert len(str(info.value)) < MESSAGE_LIMIT and "X[0]" in str(info.value) and "64,000 bytes" in str(info.value)

    def test_base64_text_passed_as_a_path(self, fitted, jpegs):
        import base64

        text = base64.b64encode(jpegs[1][0]).decode()
        with pytest.raises(ImageReadError) as info:
            fitted.transform(pd.Series([text]))
        message = str(info.value)
        assert len(message) < MESSAGE_LIMIT and "base64.b64decode" in message and "(index 0)" in message
        with pytest.raises(TypeError) as single:
            fitted.transform(text)
        assert len(str(single.value)) < MESSAGE_LIMIT

    def test_other_quotes_of_user_data(self, tmp_path, fitted):
        from sklearn_tl.onnx_images import prepare_images

        long_name = "x" * 5000
        listing = tmp_path / "list.txt"
        listing.write_text("a/" * 1000 + "image.jpg\n")  # 2,009 characters, every component short
        from sklearn_tl.data.folders import read_image_list

        cases = [
            (lambda: read_image_list(listing), FileNotFoundError),
            (lambda: featurizer(mean=list(range(3000))).fit(np.zeros((1, 8, 8), np.uint8)), ValueError),
            (lambda: fitted.transform([tmp_path / long_name[:200] / long_name[:200]]), ImageReadError),
            (lambda: prepare_images([long_name], crop_size=8, resize_size=8), ValueError),
        ]
        for call, error in cases:
            with pytest.raises(error) as info:
                call()
            assert len(str(info.value)) < MESSAGE_LIMIT, str(info.value)[:300]
