"""FineTuneRegressor: continuous targets over the fine-tuner's shared machinery."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetRegressor
from torch import nn

from sklearn_tl import FineTuneRegressor
from sklearn_tl.finetune.lr_finder import LRFinderResult
from sklearn_tl.data.transforms import tta_views

from .test_finetune import stripe_images, tiny_backbone


def tiny_regressor(**params):
    defaults = dict(weights=None, image_size=16, max_epochs=2, random_state=0, augment=False, lr=1e-2, batch_size=8,
                    batchnorm_stats="update", backend="torch")
    backbone = params.pop("backbone", None) or tiny_backbone()
    return FineTuneRegressor(backbone, **{**defaults, **params})


@pytest.fixture(scope="module")
def dimmed():
    """Stripe images dimmed by a known factor in [0.3, 1]: y is that factor."""
    X, names = stripe_images(seed=3)
    factor = np.linspace(0.3, 1.0, len(X))[np.random.default_rng(0).permutation(len(X))]
    X = (X * factor[:, None, None, None]).astype(np.uint8)
    return X, factor


class TestOutputs:
    def test_shapes_types_and_score(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor().fit(X, y)
        assert isinstance(reg, NeuralNetRegressor) and isinstance(reg.criterion_, nn.MSELoss)
        predicted = reg.predict(X)
        assert predicted.shape == (24,) and predicted.dtype == np.float64
        assert reg.n_outputs_ == 1 and reg.target_mean_.shape == reg.target_scale_.shape == (1,)
        assert isinstance(reg.score(X, y), float)
        assert reg.transform(X).shape == (24, reg.n_features_out_)
        assert reg.get_feature_names_out()[0] == "finetuneregressor0"
        two = np.stack([y, 10 * y[::-1]], axis=1)
        multi = tiny_regressor().fit(X, two)
        assert multi.predict(X).shape == (24, 2) and multi.n_outputs_ == 2
        column = tiny_regressor().fit(X, y[:, None])
        assert column.predict(X).shape == (24,)  # one target: 1-D, as MLPRegressor

    def test_it_learns_the_target(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=8).fit(X, y)
        assert reg.score(X, y) > 0.5  # in the units of y: a wrong scale or offset would score below 0

    def test_standardisation_is_restored_exactly(self, dimmed):
        X, y = dimmed
        unit = tiny_regressor(max_epochs=2).fit(X, y)
        shifted = tiny_regressor(max_epochs=2).fit(X, 1000.0 + 500.0 * y)  # same standardised targets
        np.testing.assert_allclose(shifted.target_mean_, 1000 + 500 * y.mean())
        np.testing.assert_allclose(shifted.target_scale_, 500 * y.std())
        np.testing.assert_allclose(shifted.predict(X), 1000.0 + 500.0 * unit.predict(X), rtol=1e-6)
        network = unit._forward_source(unit.module_, X)[:, 0].astype(np.float64)  # the network's own output
        np.testing.assert_allclose(unit.predict(X), network * y.std() + y.mean(), rtol=1e-12)
        constant = tiny_regressor(max_epochs=1).fit(X, np.full(24, 7.0))  # zero variance: scale 1
        assert constant.target_scale_[0] == 1.0 and np.isfinite(constant.predict(X)).all()

    def test_tta_averages_the_predictions_of_the_views(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=1, augment="auto", tta=True).fit(X, y)
        views = tta_views(reg.data_config_, reg._tta_policy())
        standardised = np.mean([reg._forward_source(reg.module_, X, view) for view in views], axis=0)[:, 0]
        np.testing.assert_allclose(reg.predict(X), standardised * y.std() + y.mean(), rtol=1e-5)

    def test_hybrid_with_any_regressor(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=1, final_estimator=Ridge(alpha=0.5)).fit(X, y)
        np.testing.assert_allclose(reg.predict(X), reg.final_estimator_.predict(reg.transform(X)))
        assert reg.final_estimator_.coef_.shape == (reg.n_features_out_,)  # fitted on y in its own units
        np.testing.assert_allclose(reg.final_estimator_.intercept_ + reg.transform(X).mean(0) @ reg.final_estimator_.coef_,
                                   y.mean(), rtol=1e-4)

    def test_other_criterion_pickle_and_lr_find(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=1, criterion=nn.HuberLoss).fit(X, y)
        assert isinstance(reg.criterion_, nn.HuberLoss)
        loaded = pickle.loads(pickle.dumps(reg))
        np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))
        result = reg.lr_find(X, y, num_iter=5)
        assert isinstance(result, LRFinderResult) and len(result.lrs) >= 2


def test_onnx_export_agrees_with_torch(dimmed, tmp_path):
    import onnxruntime

    from sklearn_tl import export_onnx
    from sklearn_tl.onnx_images import prepare_images, preprocessing_of

    X, y = dimmed
    reg = tiny_regressor(max_epochs=1).fit(X, np.stack([y, 100 + 10 * y], axis=1))
    export_onnx(reg, tmp_path / "reg.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "reg.onnx"), providers=["CPUExecutionProvider"])
    exact = X[:, : reg.data_config_.resize_size, : reg.data_config_.resize_size]  # no resize: the same pixels
    (variable,) = session.run(None, {"images": prepare_images(list(exact), **preprocessing_of(session))})
    assert [o.name for o in session.get_outputs()] == ["variable"] and variable.shape == (24, 2)
    np.testing.assert_allclose(variable, reg.predict(exact), rtol=1e-5, atol=1e-4)  # in the units of y


class TestHeadFit:
    def test_head_fit_is_ridge_on_the_frozen_embeddings(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=0, alpha=1.0).fit(X, y)
        embeddings = reg.transform(X)  # the backbone is untouched: these are what the head was fitted on
        reference = Ridge(alpha=1.0).fit(embeddings, (y - y.mean()) / y.std())
        np.testing.assert_allclose(reg.module_.head[-1].weight.detach().numpy()[0], reference.coef_, atol=2e-3)
        # Ridge is linear in y: the restored scale is Ridge on y itself.
        np.testing.assert_allclose(reg.predict(X), Ridge(alpha=1.0).fit(embeddings, y).predict(embeddings), atol=2e-3)
        weaker = tiny_regressor(max_epochs=0, alpha=100.0).fit(X, y)
        assert np.abs(weaker.module_.head[-1].weight.detach().numpy()).sum() < np.abs(reference.coef_).sum()

    def test_sample_weight_zero_is_leaving_the_image_out(self, dimmed):
        X, y = dimmed
        weights = np.ones(len(X))
        weights[:6] = 0
        weighted = tiny_regressor(max_epochs=0, batchnorm_stats="frozen").fit(X, y, sample_weight=weights)
        embeddings = weighted.transform(X)
        target = (y - y.mean()) / y.std()  # standardised on all of y: weights weigh losses, not the scale
        reference = Ridge(alpha=1.0).fit(embeddings[6:], target[6:])
        np.testing.assert_allclose(weighted.module_.head[-1].weight.detach().numpy()[0], reference.coef_, atol=2e-3)
        trained = tiny_regressor(max_epochs=1).fit(X, np.stack([y, y], 1), sample_weight=weights)
        assert np.isfinite(trained.history[-1, "train_loss"])


class TestSklearn:
    def test_cross_val_score_mean_absolute_error(self, dimmed):
        X, y = dimmed
        scores = cross_val_score(tiny_regressor(max_epochs=1), X, y, scoring="neg_mean_absolute_error", cv=KFold(2))
        assert scores.shape == (2,) and (scores < 0).all() and (scores > -1).all()

    def test_grid_search(self, dimmed):
        X, y = dimmed
        search = GridSearchCV(tiny_regressor(max_epochs=1), {"alpha": [0.1, 10.0]}, cv=KFold(2)).fit(X, y)
        assert search.best_params_["alpha"] in (0.1, 10.0)
        assert search.predict(X).shape == (24,)

    def test_partial_fit_keeps_the_first_scale_and_early_stopping(self, dimmed):
        X, y = dimmed
        reg = tiny_regressor(max_epochs=1).partial_fit(X, y)
        mean = reg.target_mean_.copy()
        reg.partial_fit(X, y + 5)
        np.testing.assert_array_equal(reg.target_mean_, mean)
        assert len(reg.history) == 2
        stopped = tiny_regressor(max_epochs=2, early_stopping=1, validation_fraction=0.25).fit(X, y)
        assert "valid_loss" in stopped.history[-1]  # an unstratified split of continuous targets


class TestErrors:
    def test_bad_targets(self, dimmed):
        X, y = dimmed
        with pytest.raises(ValueError, match="NaN"):
            tiny_regressor().fit(X, np.where(np.arange(24) == 3, np.nan, y))
        with pytest.raises(ValueError, match="1-D or 2-D"):
            tiny_regressor().fit(X, y.reshape(24, 1, 1))
        with pytest.raises(ValueError, match="X has 24 images but y has 23 targets"):
            tiny_regressor().fit(X, y[:23])
        with pytest.raises(ValueError, match="requires y"):
            tiny_regressor().fit(X, None)
        reg = tiny_regressor(max_epochs=1).fit(X, y)
        with pytest.raises(ValueError, match="y has 2 targets; this model was fitted on 1"):
            reg.partial_fit(X, np.stack([y, y], 1))
        with pytest.raises(ValueError, match="alpha"):
            tiny_regressor(alpha=-1.0).fit(X, y)


# sklearn's common checks feed random 2-D numeric data; an image model needs images in [0, 1].
NOT_IMAGES = "sklearn's check data are arbitrary 2-D floats (negative, above 1), not images; covered by "
COVERED = "tests/test_regressor.py::"
SKORCH = "skorch's NeuralNet design: "
FINETUNE = "tests/test_finetune.py::"  # the machinery the regressor shares with the classifier
SHAPES = COVERED + "TestOutputs::test_shapes_types_and_score"
INPUT = FINETUNE + "TestFitPredict::test_integer_labels_and_input_formats (the shared input path)"
WEIGHTS = COVERED + "TestHeadFit::test_sample_weight_zero_is_leaving_the_image_out"
EXPECTED_FAILED_CHECKS = {
    "check_no_attributes_set_in_init": SKORCH + "__init__ sets history_, initialized_ and virtual_params_",
    "check_dict_unchanged": NOT_IMAGES + SHAPES,
    "check_dont_overwrite_parameters": NOT_IMAGES + FINETUNE + "TestFitPredict::test_user_backbone_is_not_modified",
    "check_dtype_object": NOT_IMAGES + "object arrays are paths; tests/test_featurizer.py (shared input path)",
    "check_estimators_dtypes": NOT_IMAGES + INPUT,
    "check_f_contiguous_array_estimator": NOT_IMAGES + INPUT,
    "check_readonly_memmap_input": NOT_IMAGES + INPUT,
    "check_regressor_data_not_an_array": NOT_IMAGES + INPUT,
    "check_fit2d_1feature": NOT_IMAGES + INPUT,
    "check_fit2d_predict1d": NOT_IMAGES + INPUT,
    "check_fit2d_1sample": NOT_IMAGES + "one image is valid input; " + INPUT,
    "check_n_features_in": NOT_IMAGES + "n_features_in_ is set for flattened images only; " + INPUT,
    "check_n_features_in_after_fitting": NOT_IMAGES + INPUT,
    "check_transformer_data_not_an_array": NOT_IMAGES + INPUT,
    "check_estimators_nan_inf": NOT_IMAGES + "NaN/inf images are refused by the shared input path; tests/test_images.py",
    "check_positive_only_tag_during_fit": NOT_IMAGES
    + "negative values are refused by the shared input path; tests/test_images.py",
    "check_estimators_fit_returns_self": NOT_IMAGES + SHAPES,
    "check_fit_score_takes_y": NOT_IMAGES + SHAPES,
    "check_regressors_train": NOT_IMAGES + COVERED + "TestOutputs::test_it_learns_the_target",
    "check_regressors_int": NOT_IMAGES + COVERED + "TestOutputs::test_standardisation_is_restored_exactly",
    "check_regressors_no_decision_function": NOT_IMAGES + SHAPES,
    "check_regressor_multioutput": NOT_IMAGES + SHAPES,
    "check_supervised_y_2d": NOT_IMAGES + SHAPES,
    "check_methods_sample_order_invariance": NOT_IMAGES + SHAPES,
    "check_methods_subset_invariance": NOT_IMAGES + SHAPES,
    "check_estimators_overwrite_params": NOT_IMAGES + FINETUNE + "TestSklearnBehaviour::test_clone_and_params",
    "check_estimators_partial_fit_n_features": NOT_IMAGES
    + COVERED + "TestSklearn::test_partial_fit_keeps_the_first_scale_and_early_stopping",
    "check_estimators_pickle": NOT_IMAGES + COVERED + "TestOutputs::test_other_criterion_pickle_and_lr_find",
    "check_fit_check_is_fitted": NOT_IMAGES + FINETUNE + "TestErrors::test_bad_params_and_unfitted",
    "check_fit_idempotent": NOT_IMAGES + COVERED + "TestOutputs::test_standardisation_is_restored_exactly",
    "check_pipeline_consistency": NOT_IMAGES + COVERED + "TestOutputs::test_hybrid_with_any_regressor",
    "check_transformer_general": NOT_IMAGES
    + FINETUNE + "TestHybrid::test_transform_frozen_equals_featurizer_and_tuned_differs",
    "check_transformer_preserve_dtypes": NOT_IMAGES
    + FINETUNE + "TestHybrid::test_transform_frozen_equals_featurizer_and_tuned_differs",
    "check_sample_weight_equivalence_on_dense_data": NOT_IMAGES + WEIGHTS,
    "check_sample_weights_list": NOT_IMAGES + WEIGHTS,
    "check_sample_weights_not_an_array": NOT_IMAGES + WEIGHTS,
    "check_sample_weights_not_overwritten": NOT_IMAGES + WEIGHTS,
    "check_sample_weights_pandas_series": NOT_IMAGES + WEIGHTS,
    "check_sample_weights_shape": NOT_IMAGES + WEIGHTS,
}


@parametrize_with_checks(
    [FineTuneRegressor(tiny_backbone(), weights=None, image_size=8, image_shape=(2, 2), max_epochs=1, random_state=0)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_skops_file_round_trip_as_data(dimmed, tmp_path):
    import skops.io

    from sklearn_tl import load_model, save_model, skops_trusted_types

    X, y = dimmed
    reg = FineTuneRegressor("mobilenet_v3_small", weights=None, image_size=32, max_epochs=1, random_state=0,
                            backend="torch").fit(X, np.stack([y, 3 * y], 1))
    save_model(reg, tmp_path / "reg.skops")
    assert set(skops.io.get_untrusted_types(file=tmp_path / "reg.skops")) <= set(skops_trusted_types())
    loaded = load_model(tmp_path / "reg.skops")
    assert type(loaded) is FineTuneRegressor and loaded.n_outputs_ == 2
    np.testing.assert_array_equal(loaded.target_mean_, reg.target_mean_)
    np.testing.assert_allclose(loaded.predict(X), reg.predict(X), rtol=1e-6)


def test_short_runs_hold_out_a_tenth_unstratified_and_a_harmful_one_ends_at_the_probe():
    X = np.concatenate([stripe_images(seed=s)[0] for s in range(20, 25)])  # 120 images
    y = np.linspace(0.3, 1.0, len(X))[np.random.default_rng(1).permutation(len(X))]
    X = (X * y[:, None, None, None]).astype(np.uint8)
    probe = tiny_regressor(max_epochs=0).fit(X, y)
    kept = tiny_regressor(max_epochs=2, lr=30.0, backbone_lr_scale=1.0).fit(X, y)
    assert "valid_loss" in kept.history[-1] and kept.best_epoch_ == 0  # 30 steps: 12 images held out
    assert sum(b["valid_batch_size"] for b in kept.history[-1]["batches"] if "valid_batch_size" in b) == 12
    np.testing.assert_allclose(kept.predict(X), probe.predict(X), atol=2e-3)  # the ridge head on all 120 again
    assert "valid_loss" not in tiny_regressor(max_epochs=4).fit(X, y).history[-1]  # 60 steps: none
