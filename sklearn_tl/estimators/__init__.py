"""The estimators: the featurizer and the fine-tuners."""
