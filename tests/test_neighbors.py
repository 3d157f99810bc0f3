"""The one kNN search behind every graph: identical to scanpy's below 8,192 cells, working above it."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

from spgpt_core import neighbors as nb
from spgpt_core.tl._cluster import cluster_embedding


def _mixture(n: int, n_groups: int = 6, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_groups, dim))
    truth = rng.integers(0, n_groups, size=n)
    return (centres[truth] + rng.normal(size=(n, dim))).astype(np.float32), truth


def test_graph_equals_scanpy_below_its_exact_limit():
    X, _ = _mixture(3000)
    ref = ad.AnnData(np.zeros((len(X), 0), dtype=np.float32))
    ref.obsm["X"] = X
    sc.pp.neighbors(ref, use_rep="X", n_neighbors=15, random_state=0)
    ours = nb.neighbors(X, 15, 0)
    assert (ours.obsp["connectivities"] != ref.obsp["connectivities"]).nnz == 0
    assert (ours.obsp["distances"] != ref.obsp["distances"]).nnz == 0
    assert ours.uns["neighbors"]["params"]["n_neighbors"] == 15


def test_approximate_search_above_the_limit(monkeypatch):
    """Above EXACT_MAX_CELLS the graph comes from pynndescent: high recall, csr_matrix, Leiden runs."""
    X, truth = _mixture(12_000)
    exact = nb.knn_indices(X, 10)
    monkeypatch.setattr(nb, "EXACT_MAX_CELLS", 5_000)
    assert not nb.uses_exact_search(*X.shape)
    approx = nb.knn_indices(X, 10)
    assert approx.shape == (12_000, 10)
    assert not (approx == np.arange(12_000)[:, None]).any()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.85, recall  # 0.89 here: isotropic 32-d noise is a hard case; embeddings are easier
    labels, info = cluster_embedding(X, n_clusters=6)
    assert info["n_clusters_found"] == 6
    assert adjusted_rand_score(truth, labels) > 0.95


@pytest.mark.parametrize("exact", [True, False])
def test_knn_indices_never_return_the_point_itself(monkeypatch, exact):
    X, _ = _mixture(600, dim=8)
    X[1::2] = X[::2]  # every point has an exact duplicate
    if not exact:
        monkeypatch.setattr(nb, "EXACT_MAX_CELLS", 100)
    idx = nb.knn_indices(X, 5)
    assert not (idx == np.arange(600)[:, None]).any()
    with pytest.raises(ValueError, match="need 1 <= k"):
        nb.knn_indices(X, 600)


def test_spatial_coordinates_always_search_exactly():
    """2-D points take the exact k-d tree at any size (the spatial smoothing and Moran's I path)."""
    assert nb.uses_exact_search(1_000_000, 2)
    assert not nb.uses_exact_search(1_000_000, 32)
