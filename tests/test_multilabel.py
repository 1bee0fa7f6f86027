"""FineTuneClassifier with several labels per image: a 0/1 indicator y (sklearn's multilabel-indicator)."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.multiclass import OneVsRestClassifier
from torch import nn

from sklearn_tl.data.transforms import tta_views

from .test_finetune import stripe_images, tiny


def _head_logits(clf, X):
    return clf.module_.head(torch.from_numpy(clf.transform(X))).detach().numpy()


@pytest.fixture(scope="module")
def tagged():
    """Stripe images with three labels each: bright (half are dimmed), red (a saturated red channel), horizontal."""
    X, names = stripe_images(seed=2)
    X = X.copy()
    dim = np.arange(len(X)) % 4 < 2
    red = np.arange(len(X)) % 2 == 0  # independent of dim
    X[dim] = (X[dim] * 0.4).astype(np.uint8)
    X[red, :, :, 0] = 230
    Y = np.stack([~dim, red, names == "horizontal"], axis=1).astype(np.int64)
    return X, Y


class TestOutputs:
    def test_shapes_types_classes_and_loss(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=2).fit(X, Y)
        assert clf.multilabel_ and isinstance(clf.criterion_, nn.BCEWithLogitsLoss)
        np.testing.assert_array_equal(clf.classes_, [0, 1, 2])  # label columns, as MLPClassifier
        proba = clf.predict_proba(X)
        assert proba.shape == (24, 3) and proba.dtype == np.float32
        assert ((proba >= 0) & (proba <= 1)).all() and not np.allclose(proba.sum(axis=1), 1)
        predicted = clf.predict(X)
        assert predicted.shape == (24, 3) and predicted.dtype == np.int64
        np.testing.assert_array_equal(predicted, (proba >= 0.5).astype(int))
        assert clf.transform(X).shape == (24, clf.n_features_out_)
        assert 0 <= clf.score(X, Y) <= 1  # subset accuracy, as sklearn's ClassifierMixin
        clf.set_params(threshold=0.9)
        np.testing.assert_array_equal(clf.predict(X), (proba >= 0.9).astype(int))
        assert clf.predict(X).sum() < predicted.sum()
        assert clf.__sklearn_tags__().classifier_tags.multi_label

    def test_it_learns_the_labels(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=4).fit(X, Y)
        accuracy = (clf.predict(X) == Y).mean(axis=0)
        # Each label is present in half the images (0.5 by chance); BatchNorm in training mode blurs brightness.
        assert accuracy.min() >= 0.7 and accuracy.mean() >= 0.85, accuracy

    def test_tta_averages_the_label_probabilities_of_the_views(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=1, augment="auto").fit(X, Y)
        plain = clf.predict_proba(X)
        clf.set_params(tta=True)
        views = tta_views(clf.data_config_, clf._tta_policy())
        expected = np.mean(
            [torch.sigmoid(torch.from_numpy(clf._forward_source(clf.module_, X, view))).numpy() for view in views],
            axis=0,
        )
        np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-6)
        assert not np.allclose(clf.predict_proba(X), plain)
        assert clf.predict(X).shape == (24, 3)

    def test_hybrid_with_one_vs_rest(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=1, final_estimator=OneVsRestClassifier(LogisticRegression())).fit(X, Y)
        embeddings = clf.transform(X)
        np.testing.assert_array_equal(clf.predict(X), clf.final_estimator_.predict(embeddings))
        assert clf.predict(X).shape == clf.predict_proba(X).shape == (24, 3)

    def test_onnx_export_agrees_with_torch(self, tagged, tmp_path):
        import onnxruntime

        from sklearn_tl import export_onnx
        from sklearn_tl.onnx_images import prepare_images, preprocessing_of

        X, Y = tagged
        clf = tiny(max_epochs=1, backend="torch", threshold=0.4).fit(X, Y)
        export_onnx(clf, tmp_path / "tagger.onnx")
        session = onnxruntime.InferenceSession(str(tmp_path / "tagger.onnx"), providers=["CPUExecutionProvider"])
        exact = X[:, : clf.data_config_.resize_size, : clf.data_config_.resize_size]  # no resize: the same pixels
        label, proba = session.run(["label", "probabilities"],
                                   {"images": prepare_images(list(exact), **preprocessing_of(session))})
        np.testing.assert_allclose(proba, clf.predict_proba(exact), atol=1e-4)
        assert label.dtype == np.int64 and label.shape == (24, 3)
        np.testing.assert_array_equal(label, clf.predict(exact))

    def test_skops_file_round_trip_as_data(self, tagged, tmp_path):
        from sklearn_tl import FineTuneClassifier, load_model, save_model

        X, Y = tagged
        clf = FineTuneClassifier("mobilenet_v3_small", weights=None, image_size=32, max_epochs=1, random_state=0,
                                 backend="torch", class_weight="balanced", threshold=0.3).fit(X, Y)
        save_model(clf, tmp_path / "tagger.skops")
        loaded = load_model(tmp_path / "tagger.skops")
        assert loaded.multilabel_ and loaded.threshold == 0.3
        np.testing.assert_array_equal(loaded.criterion_.pos_weight.cpu().numpy(), clf.pos_weight_)
        np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-6)
        np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))

    def test_pickle_round_trip(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=1).fit(X, Y)
        loaded = pickle.loads(pickle.dumps(clf))
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        assert loaded.multilabel_


class TestHeadFit:
    def test_head_fit_is_one_vs_rest_logistic_regression(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=0).fit(X, Y)
        embeddings = clf.transform(X)  # the frozen backbone: what the head was fitted on
        reference = OneVsRestClassifier(LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)).fit(embeddings, Y)
        np.testing.assert_allclose(_head_logits(clf, X), reference.decision_function(embeddings), atol=5e-3)
        coef = np.vstack([e.coef_ for e in reference.estimators_])
        np.testing.assert_allclose(clf.module_.head[-1].weight.detach().numpy(), coef, atol=5e-3)

    def test_balanced_class_weight_is_a_per_label_pos_weight(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=0, class_weight="balanced").fit(X, Y)
        positives = Y.sum(axis=0)
        np.testing.assert_allclose(clf.pos_weight_, (len(Y) - positives) / positives)
        np.testing.assert_allclose(clf.criterion_.pos_weight.cpu().numpy(), clf.pos_weight_)
        embeddings = clf.transform(X)
        for label, weight in enumerate(clf.pos_weight_):
            reference = LogisticRegression(class_weight={0: 1.0, 1: weight}, tol=1e-10, max_iter=10000)
            reference.fit(embeddings, Y[:, label])
            np.testing.assert_allclose(
                _head_logits(clf, X)[:, label], reference.decision_function(embeddings), atol=5e-3
            )
        dict_weights = tiny(max_epochs=0, class_weight={2: 3.0}).fit(X, Y)
        np.testing.assert_array_equal(dict_weights.pos_weight_, [1.0, 1.0, 3.0])

    def test_sample_weight_zero_is_leaving_the_image_out(self, tagged):
        X, Y = tagged
        weights = np.ones(len(X))
        weights[:6] = 0
        weighted = tiny(max_epochs=0, batchnorm_stats="frozen").fit(X, Y, sample_weight=weights)
        subset = tiny(max_epochs=0, batchnorm_stats="frozen").fit(X[6:], Y[6:])
        for name, value in subset.module_.head.state_dict().items():
            torch.testing.assert_close(weighted.module_.head.state_dict()[name], value, rtol=0, atol=5e-3)
        trained = tiny(max_epochs=1, class_weight="balanced").fit(X, Y, sample_weight=weights)
        assert np.isfinite(trained.history[-1, "train_loss"])


class TestSklearn:
    def test_cross_val_score_f1_samples(self, tagged):
        X, Y = tagged
        scores = cross_val_score(tiny(max_epochs=1), X, Y, scoring="f1_samples", cv=KFold(2))
        assert scores.shape == (2,) and np.isfinite(scores).all() and (scores > 0).all()

    def test_grid_search(self, tagged):
        X, Y = tagged
        search = GridSearchCV(tiny(max_epochs=1), {"threshold": [0.3, 0.7]}, scoring="f1_samples", cv=KFold(2))
        search.fit(X, Y)
        assert search.best_params_["threshold"] in (0.3, 0.7)
        assert search.predict(X).shape == (24, 3)

    def test_partial_fit_and_early_stopping(self, tagged):
        X, Y = tagged
        clf = tiny(max_epochs=1)
        clf.partial_fit(X, Y).partial_fit(X, Y)
        assert len(clf.history) == 2
        stopped = tiny(max_epochs=2, early_stopping=1, validation_fraction=0.25).fit(X, Y)
        assert "valid_acc" in stopped.history[-1]  # subset accuracy on an unstratified split


class TestErrors:
    @pytest.mark.parametrize(
        "Y, match",
        [
            (np.tile([[0, 2, 1]], (24, 1)), "0/1 multilabel indicator"),
            (np.tile([[0.5, 1.0]], (24, 1)), "0/1 multilabel indicator"),
            (np.tile([[0, 1, np.nan]], (24, 1)), "NaN"),
        ],
    )
    def test_bad_indicator(self, tagged, Y, match):
        with pytest.raises(ValueError, match=match):
            tiny().fit(tagged[0], Y)

    def test_classes_columns_and_shape_mismatches(self, tagged):
        X, Y = tagged
        with pytest.raises(ValueError, match="classes names its 3 columns; got 2 names"):
            tiny(classes=["bright", "red"]).fit(X, Y)
        with pytest.raises(ValueError, match="partial_fit's classes does not apply to a multilabel y"):
            tiny().partial_fit(X, Y, classes=[0, 1])
        named = tiny(max_epochs=0, classes=["bright", "red", "horizontal"]).fit(X, Y)
        assert named.classes_.tolist() == ["bright", "red", "horizontal"] and named.predict(X).shape == (24, 3)
        clf = tiny(max_epochs=1).fit(X, Y)
        with pytest.raises(ValueError, match="y has 4 label columns; this model was fitted on 3"):
            clf.set_params(warm_start=True).fit(X, np.tile([[0, 1, 1, 0]], (24, 1)))
        with pytest.raises(ValueError, match="fitted on a multilabel y"):
            clf.partial_fit(X, Y[:, 0])
        with pytest.raises(ValueError, match="X has 24 images but y has 23"):
            tiny().fit(X, Y[:23])
        with pytest.raises(ValueError, match="label columns 0..2"):
            tiny(class_weight={"cat": 2.0}).fit(X, Y)


class TestCommandLine:
    def test_train_with_a_labels_csv_then_predict(self, sample_photos, tmp_path, capsys):
        from PIL import Image

        from sklearn_tl.cli import main

        rng = np.random.default_rng(0)
        names = ("china", "flower")
        rows = ["path,labels"]
        for i in range(12):
            tile = np.full((48, 48, 3), 128, np.uint8)  # grey where no photo is drawn
            present = [name for name in names if rng.random() < 0.6] or ["china"]
            for quadrant, name in enumerate(present):
                photo = sample_photos[names.index(name)]
                top, left = rng.integers(0, 400, 2)
                tile[24 * quadrant : 24 * quadrant + 24, :24] = photo[top : top + 24, left : left + 24]
            Image.fromarray(tile).save(tmp_path / f"tile{i}.png")
            rows.append(f"tile{i}.png,{';'.join(present)}")
        (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
        model = tmp_path / "tagger.skops"  # the safe default format
        assert main([
            "train", "--labels", str(tmp_path / "labels.csv"), "--mode", "hybrid", "--weights", "none",
            "--image-size", "32", "--max-epochs", "1", "--cv", "2", "-o", str(model),
            "--report", str(tmp_path / "report.html"), "-q",
        ]) == 0
        out = capsys.readouterr().out
        assert "12 images with 2 labels: china (" in out and "cross-validated samples-F1" in out
        assert "precision" in out and "recall" in out  # per-label, in place of the confusion matrix
        page = (tmp_path / "report.html").read_text()
        assert "Per-label precision, recall and F1" in page and "tile" in page
        assert main(["predict", str(model), str(tmp_path / "tile0.png"), str(tmp_path / "tile1.png"),
                     "--csv", str(tmp_path / "out.csv"), "-q"]) == 0
        lines = (tmp_path / "out.csv").read_text().splitlines()
        assert lines[0].startswith("path,label,probability,p_china,p_flower")
        assert all(set(line.split(",")[1].split(";")) <= {"china", "flower", ""} for line in lines[1:])

    def test_bad_labels_files(self, tmp_path):
        from sklearn_tl.cli.training import load_labelled_csv

        (tmp_path / "a.png").write_bytes(b"")
        (tmp_path / "no_header.csv").write_text("a.png;cat\n")
        with pytest.raises(ValueError, match="columns 'path' and 'labels'"):
            load_labelled_csv(tmp_path / "no_header.csv")
        (tmp_path / "missing.csv").write_text("path,labels\na.png,cat;dog\nb.png,cat\n")
        with pytest.raises(FileNotFoundError, match="line 3: image 'b.png' does not exist"):
            load_labelled_csv(tmp_path / "missing.csv")
        (tmp_path / "one.csv").write_text("path,labels\na.png,cat\n")
        with pytest.raises(ValueError, match="names 1 label"):
            load_labelled_csv(tmp_path / "one.csv")


def test_a_short_run_holds_out_a_tenth_unstratified(tagged):
    X, Y = tagged
    X, Y = np.concatenate([X] * 5), np.concatenate([Y] * 5)  # 120 images: 12 held out, no class stratification
    clf = tiny(max_epochs=1).fit(X, Y)
    assert "valid_loss" in clf.history[-1] and "best_epoch" in clf.history[-1]
    split = clf.get_params()["train_split"]
    assert split == "auto" and not clf._stratified_split
    assert clf.predict(X).shape == Y.shape
