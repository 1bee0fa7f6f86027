"""Scaling out: a real dask.distributed LocalCluster (2 worker processes)."""

import dask.array as dask_array  # noqa: E402  (the dask extra is part of `make test`)
import dask.bag as dask_bag  # noqa: E402
import distributed  # noqa: E402
import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_tl import PretrainedCNNFeaturizer, featurize_dask, load_textures

REAL_WEIGHTS = "IMAGENET1K_V1"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def texture_files(tmp_path_factory):
    """300 real texture patches written as PNG files."""
    X, y = load_textures(n_per_class=100, size=40, random_state=1, return_X_y=True)
    root = tmp_path_factory.mktemp("textures")
    paths = []
    for i, image in enumerate(X):
        paths.append(str(root / f"{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths, y


def featurizer():
    return PretrainedCNNFeaturizer("mobilenet_v2", weights=REAL_WEIGHTS, image_size=32, batch_size=32)


def test_grid_search_on_the_cluster_matches_the_local_run(client, texture_files):
    paths, y = texture_files
    X = np.array(paths[::3], dtype=object)
    y = y[::3]
    steps = [("features", featurizer()), ("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))]
    pipe = Pipeline(steps)
    grid = {"clf__C": [0.1, 1.0]}
    local = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(pipe, grid, cv=3, n_jobs=-1).fit(X, y)
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(remote.predict_proba(X), local.predict_proba(X), rtol=1e-5, atol=1e-6)
    # The work really ran on both workers.
    assert len(client.scheduler_info()["workers"]) == 2


def test_featurize_a_dask_bag_of_paths(client, texture_files):
    paths, _ = texture_files
    fitted = featurizer().fit(paths[:1])
    embeddings = featurize_dask(fitted, dask_bag.from_sequence(paths, npartitions=6))
    assert isinstance(embeddings, dask_array.Array) and embeddings.shape == (300, 1280)
    assert embeddings.numblocks[0] == 6
    np.testing.assert_allclose(embeddings.compute(), fitted.transform(paths), rtol=1e-4, atol=1e-5)


def test_featurize_a_dask_array_and_dataframe_column(client, texture_files):
    import dask.dataframe as dd
    import pandas as pd

    paths, _ = texture_files
    paths = paths[:40]
    fitted = featurizer().fit(paths[:1])
    expected = fitted.transform(paths)
    from_array = featurize_dask(fitted, dask_array.from_array(np.array(paths, dtype=object), chunks=15))
    np.testing.assert_allclose(from_array.compute(), expected, rtol=1e-4, atol=1e-5)
    frame = dd.from_pandas(pd.DataFrame({"path": paths}), npartitions=3)
    np.testing.assert_allclose(featurize_dask(fitted, frame["path"]).compute(), expected, rtol=1e-4, atol=1e-5)


def test_the_model_is_one_key_in_the_graph(texture_files):
    paths, _ = texture_files
    fitted = featurizer().fit(paths[:1])
    graph = dict(featurize_dask(fitted, dask_bag.from_sequence(paths, npartitions=5)).__dask_graph__())
    holding_model = [key for key, value in graph.items() if value is fitted or getattr(value, "value", None) is fitted]
    assert len(holding_model) == 1  # shipped once per worker, not once per task


def _torch_threads_during_transform():
    # Runs on a worker: the engine must limit torch to the worker's one thread.
    probe = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            probe["threads"] = torch.get_num_threads()
            return x.mean((2, 3))

    PretrainedCNNFeaturizer(Probe(), image_size=8).fit_transform(np.zeros((2, 8, 8, 3), np.uint8))
    return probe["threads"]


def test_cpu_workers_do_not_oversubscribe_threads(client):
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(_torch_threads_during_transform, workers=[w], pure=False) for w in workers]
    assert client.gather(futures) == [1, 1]


def test_errors_name_the_problem(texture_files):
    paths, _ = texture_files
    fitted = featurizer().fit(paths[:1])
    with pytest.raises(TypeError, match="dask bag"):
        featurize_dask(fitted, paths)
    with pytest.raises(ValueError, match="1-D"):
        featurize_dask(fitted, dask_array.zeros((3, 3)))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        featurize_dask(featurizer(), dask_bag.from_sequence(paths))
