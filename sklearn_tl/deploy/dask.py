"""Scaling out on Dask: featurize a collection too large for one machine.

Model search needs nothing from this module: ``GridSearchCV(..., n_jobs=-1)``
runs on a ``dask.distributed`` cluster under ``joblib.parallel_backend("dask")``
like any scikit-learn estimator. :func:`featurize_dask` covers the other case,
a collection of images (paths, or encoded bytes such as a Parquet table's
binary column) that does not fit in one machine's memory.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["featurize_dask"]

DASK_EXTRA_HINT = "pip install 'sklearn_tl[dask]'"


def _import_dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError(f"Dask support needs dask and distributed: {DASK_EXTRA_HINT}") from exc
    return dask, da


def _transform_partition(featurizer, images) -> np.ndarray:
    images = list(images)  # a partition: a pandas Series, a list or a numpy array
    if not images:
        return np.empty((0, featurizer.n_features_out_), dtype=np.float32)
    return featurizer.transform(images)


def featurize_dask(featurizer, paths):
    """Embed a Dask collection of images (paths or encoded bytes), partition by partition, on the workers.

    Parameters
    ----------
    featurizer : PretrainedCNNFeaturizer
        A *fitted* featurizer. It enters the task graph once, as one key, so
        each worker receives it once, however many partitions it computes.
        Its ``cache`` (on storage all workers share) is used by every worker.
    paths : dask.bag.Bag, dask.array.Array (1-D), or dask DataFrame column
        Images as ``transform`` accepts them as list items: file paths, or
        encoded images (``bytes``, e.g. the binary column of a Parquet table
        read with ``dask.dataframe.read_parquet``, or image rows
        ``{"bytes": ..., "path": ...}``).

    Returns
    -------
    embeddings : dask.array.Array of shape (n_images, n_features_out_), float32
        One chunk per input partition, in input order. Nothing is computed
        until you ask (``.compute()``, ``.to_zarr()``, ``da.store``...).

    Examples
    --------
    >>> import dask, dask.bag as db, numpy as np, pathlib, tempfile
    >>> from PIL import Image
    >>> from sklearn_tl import PretrainedCNNFeaturizer, featurize_dask
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> paths = [str(folder / f"{i}.png") for i in range(6)]
    >>> for i, path in enumerate(paths):
    ...     Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(path)
    >>> featurizer = PretrainedCNNFeaturizer("resnet18", weights=None, image_size=32, random_state=0)
    >>> embeddings = featurize_dask(featurizer.fit(paths[:1]), db.from_sequence(paths, npartitions=3))
    >>> embeddings.shape, embeddings.numblocks
    ((6, 512), (3, 1))
    >>> with dask.config.set(scheduler="synchronous"):  # or a distributed Client
    ...     embeddings.compute().shape
    (6, 512)
    """
    from sklearn.utils.validation import check_is_fitted

    dask, da = _import_dask()
    check_is_fitted(featurizer)
    partitions, lengths = _partitions(paths, dask)
    model = dask.delayed(featurizer, pure=True)  # one key in the graph, shipped once per worker
    width = featurizer.n_features_out_
    blocks = [
        da.from_delayed(dask.delayed(_transform_partition)(model, part), shape=(n, width), dtype=np.float32)
        for part, n in zip(partitions, lengths)
    ]
    if not blocks:
        raise ValueError("paths is an empty Dask collection.")
    return da.concatenate(blocks, axis=0)


def _partitions(paths, dask):
    """Delayed partitions of ``paths`` and their lengths."""
    import dask.array as da

    if isinstance(paths, da.Array):
        if paths.ndim != 1:
            raise ValueError(f"A Dask array of images must be 1-D; got shape {paths.shape}.")
        lengths = [int(n) for n in paths.chunks[0]]
        return list(paths.to_delayed().ravel()), lengths
    if hasattr(paths, "to_delayed") and hasattr(paths, "map_partitions"):  # Bag, Series, DataFrame
        dataframes = sys.modules.get("dask.dataframe")
        if dataframes is not None and isinstance(paths, dataframes.DataFrame):
            if len(paths.columns) != 1:
                raise ValueError("Pass one column of images, e.g. df['path'] or df['image'], not a whole DataFrame.")
            paths = paths[paths.columns[0]]
        lengths = [int(n) for n in paths.map_partitions(len).compute()]  # cheap: counts, not images
        return list(paths.to_delayed()), lengths
    raise TypeError(
        f"paths is a {type(paths).__name__}; expected a dask bag, a 1-D dask array or a dask "
        "DataFrame column of image paths or encoded images (use featurizer.transform for in-memory data)."
    )
