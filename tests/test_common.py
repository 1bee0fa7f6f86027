"""scikit-learn's estimator checks.

sklearn's generic check data are small 2-D tables of arbitrary floats (values
above 1, a handful of "features"), which are not images: the featurizer refuses
them by design. Each check that fails for that reason is listed with the test
that covers its contract on image input instead.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_tl import PretrainedCNNFeaturizer

NOT_IMAGES = "sklearn's check data are arbitrary 2-D floats, not images; covered by "
COVERED = "tests/test_featurizer.py::"

FEATURIZER_EXPECTED_FAILURES = {
    "check_dict_unchanged": NOT_IMAGES + COVERED + "test_transform_does_not_change_the_estimator",
    "check_dont_overwrite_parameters": NOT_IMAGES + COVERED + "test_params_are_stored_untouched_and_fit_returns_self",
    "check_estimators_overwrite_params": NOT_IMAGES + COVERED + "test_params_are_stored_untouched_and_fit_returns_self",
    "check_estimators_fit_returns_self": NOT_IMAGES + COVERED + "test_params_are_stored_untouched_and_fit_returns_self",
    "check_fit_score_takes_y": NOT_IMAGES + COVERED + "test_fit_accepts_and_ignores_y",
    "check_dtype_object": NOT_IMAGES + "object arrays are paths; "
    + COVERED + "test_all_formats_give_the_same_embeddings",
    "check_estimators_dtypes": NOT_IMAGES + COVERED + "test_integer_and_float_dtypes_and_memory_layouts",
    "check_transformer_preserve_dtypes": NOT_IMAGES + COVERED + "test_integer_and_float_dtypes_and_memory_layouts",
    "check_f_contiguous_array_estimator": NOT_IMAGES + COVERED + "test_integer_and_float_dtypes_and_memory_layouts",
    "check_estimators_empty_data_messages": NOT_IMAGES + COVERED + "TestBadInput::test_clear_errors",
    "check_estimators_nan_inf": NOT_IMAGES + COVERED + "TestBadInput::test_clear_errors",
    "check_fit2d_1feature": NOT_IMAGES + COVERED + "TestBadInput::test_clear_errors",
    "check_fit2d_1sample": NOT_IMAGES + "one image is valid input; " + COVERED + "test_images_of_different_sizes",
    "check_fit2d_predict1d": NOT_IMAGES + COVERED + "TestBadInput::test_clear_errors",
    "check_estimators_pickle": NOT_IMAGES + COVERED + "test_pickled_state_is_on_the_cpu",
    "check_pipeline_consistency": NOT_IMAGES + COVERED + "test_pipeline_gives_the_same_result_as_the_steps",
    "check_readonly_memmap_input": NOT_IMAGES + COVERED + "test_input_is_never_modified_and_may_be_read_only",
    "check_transformer_data_not_an_array": NOT_IMAGES + COVERED + "test_all_formats_give_the_same_embeddings",
    "check_transformer_general": NOT_IMAGES + COVERED + "test_same_image_same_row_whatever_the_batch",
    "check_methods_sample_order_invariance": NOT_IMAGES + COVERED + "test_same_image_same_row_whatever_the_batch",
    "check_methods_subset_invariance": NOT_IMAGES + COVERED + "test_same_image_same_row_whatever_the_batch",
    "check_fit_idempotent": NOT_IMAGES + COVERED + "test_fit_is_idempotent_and_deterministic",
    "check_fit_check_is_fitted": NOT_IMAGES + COVERED + "test_transform_before_fit_raises",
    "check_n_features_in": NOT_IMAGES + "n_features_in_ is set for flattened images only; "
    + COVERED + "test_flattened_images_need_image_shape",
    "check_n_features_in_after_fitting": NOT_IMAGES + COVERED + "test_flattened_images_need_image_shape",
}


def _expected_failed_checks(estimator):
    if isinstance(estimator, PretrainedCNNFeaturizer):
        return FEATURIZER_EXPECTED_FAILURES
    return {}


@parametrize_with_checks(
    [PretrainedCNNFeaturizer("mobilenet_v3_small", weights=None, image_size=32, random_state=0)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
