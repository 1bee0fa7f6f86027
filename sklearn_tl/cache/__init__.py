"""The embedding cache: the store, and the fingerprint computed from fields the estimators hand it."""
