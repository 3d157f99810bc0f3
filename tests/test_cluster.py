"""Clustering with a planted truth: well-separated blobs and a spatial layout with label noise."""

import numpy as np
import pytest

from spgpt_core.tl._cluster import cluster_embedding, smooth_labels
from spgpt_core.errors import InputError
from spgpt_core.metrics import ari


def _blobs(n_per=60, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, 16))
    X = np.concatenate([c + rng.normal(0, 0.5, (n_per, 16)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("method", ["leiden", "louvain", "kmeans"])
def test_every_method_finds_k_planted_clusters(method):
    X, truth = _blobs()
    labels, info = cluster_embedding(X, n_clusters=4, method=method, seed=0)
    assert info["n_clusters_found"] == 4 and info["method"] == method
    assert ari(truth, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["leiden", "louvain"])
def test_graph_methods_accept_a_resolution(method):
    X, _ = _blobs()
    few, info_few = cluster_embedding(X, resolution=0.05, method=method)
    many, info_many = cluster_embedding(X, resolution=3.0, method=method)
    assert info_few["resolution"] == 0.05 and len(np.unique(few)) <= len(np.unique(many))


def test_smoothing_repairs_isolated_label_noise():
    side = 20
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(float)
    truth = (xy[:, 0] >= side / 2).astype(int)
    noisy = truth.copy()
    flip = np.random.default_rng(1).choice(len(truth), 20, replace=False)
    noisy[flip] = 1 - noisy[flip]
    fixed = smooth_labels(noisy, xy, k=6)
    assert (fixed != truth).sum() < (noisy != truth).sum() / 2


def test_unknown_method_is_an_input_error():
    X, _ = _blobs()
    with pytest.raises(InputError, match="louvain"):
        cluster_embedding(X, n_clusters=4, method="spectral")


def test_record_keeps_the_k_asked_beside_the_k_found():
    import anndata as ad

    from spgpt_core import tl

    X, _ = _blobs(n_per=30, k=3)
    a = ad.AnnData(np.zeros((len(X), 1), dtype=np.float32))
    a.obsm["X_spgpt"] = X
    tl.cluster(a, n_clusters=5, method="leiden")  # 3 tight blobs: Leiden may not reach 5
    params = a.uns["spgpt_domain"]["params"]
    assert params["n_clusters"] == 5
    assert params["n_clusters_found"] == a.obs["spgpt_domain"].nunique()
