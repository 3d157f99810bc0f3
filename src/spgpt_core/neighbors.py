"""Every nearest-neighbour search and kNN graph in spgpt, and community detection on those graphs, in one place.

Why not plain ``sc.pp.neighbors``: scanpy 1.11 picks its own backend (exact distances below 8,192
cells, pynndescent above) and reads pynndescent's output through ``getnnz``, which the scipy
sparse *arrays* returned by pynndescent 0.7 do not have, so clustering crashed on every slide
above 8,192 cells. Here the search backend is ours and its output is always a ``csr_matrix``,
handed to scanpy through its documented ``transformer=`` argument; scanpy then computes the
same UMAP connectivities, Leiden and UMAP as before.

* exact search (scikit-learn, brute force, what scanpy itself uses on small data) for up to
  ``EXACT_MAX_CELLS`` cells and for low-dimensional points such as spatial coordinates (a k-d
  tree, exact and fast at any size);
* approximate search (pynndescent's NNDescent, with the parameters scanpy and UMAP use) above.

Below 8,192 cells the graphs are identical to what ``sc.pp.neighbors`` built before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import anndata as ad
import igraph
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import KNeighborsTransformer, NearestNeighbors

# Brute force costs n^2 * d: ~8 s at 50,000 x 64 on 2 cores, so beyond that the approximate
# search is faster and its recall on embeddings is high (tests/test_neighbors.py measures it).
EXACT_MAX_CELLS = 50_000
# Points with this few dimensions (spatial coordinates) always get an exact k-d tree search.
LOW_DIM = 3


def uses_exact_search(n_cells: int, n_dims: int) -> bool:
    return n_cells <= EXACT_MAX_CELLS or n_dims <= LOW_DIM


class KnnTransformer(TransformerMixin, BaseEstimator):
    """A scikit-learn style kNN transformer (scanpy's ``transformer=``) whose output is a csr_matrix.

    ``n_neighbors`` counts the cell itself, as in ``sc.pp.neighbors``.
    """

    def __init__(self, n_neighbors: int = 15, random_state: int = 0):
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return self.fit_transform(X)

    def fit_transform(self, X, y=None, **fit_params):
        X = np.asarray(X, dtype=np.float32)
        n, d = X.shape
        others = min(self.n_neighbors, n) - 1
        if uses_exact_search(n, d):
            # exactly what scanpy's own exact path runs (algorithm="brute"), so small graphs do not change
            algorithm = "brute" if n <= EXACT_MAX_CELLS else "kd_tree"
            out = KNeighborsTransformer(n_neighbors=others, algorithm=algorithm).fit_transform(X)
        else:
            # pynndescent compiles numba kernels on import (~seconds): only for large inputs
            from pynndescent import PyNNDescentTransformer

            # UMAP's and scanpy's defaults for the forest size and iterations
            out = PyNNDescentTransformer(n_neighbors=others, random_state=self.random_state, n_jobs=None,
                                         n_trees=min(64, 5 + round(n ** 0.5 / 20.0)),
                                         n_iters=max(5, round(np.log2(n)))).fit_transform(X)
        out = sp.csr_matrix(out)
        # a cell's distance to itself is 0, not the ~1e-6 brute force computes: UMAP's connectivities
        # take the nearest non-zero distance as each cell's scale (scanpy zeroes it the same way)
        rows = np.repeat(np.arange(n), np.diff(out.indptr))
        out.data[out.indices == rows] = 0.0
        return out


def neighbors(X: np.ndarray, n_neighbors: int = 15, seed: int = 0):
    """An AnnData holding scanpy's kNN graph of ``X`` (obsp connectivities / distances, uns['neighbors']).

    Ready for ``sc.tl.leiden`` / ``sc.tl.umap``; ``n_neighbors`` counts the cell itself and is
    capped at the number of cells.
    """
    X = np.asarray(X, dtype=np.float32)
    a = ad.AnnData(np.zeros((X.shape[0], 0), dtype=np.float32))
    a.obsm["X"] = X
    k = max(2, min(n_neighbors, X.shape[0]))
    sc.pp.neighbors(a, use_rep="X", transformer=KnnTransformer(k, seed), random_state=seed)
    return a


def knn_indices(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(n, k) indices of each row's k nearest *other* rows (never itself, even at duplicated points)."""
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    n, d = X.shape
    if not 1 <= k < n:
        raise ValueError(f"k={k}: need 1 <= k < number of points ({n})")
    if uses_exact_search(n, d):
        # kneighbors() without a query excludes each point itself
        return NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    from pynndescent import NNDescent  # compiles numba kernels on import (~seconds): only for large inputs


    idx, _ = NNDescent(X, n_neighbors=k + 1, random_state=seed, n_trees=min(64, 5 + round(n ** 0.5 / 20.0)),
                       n_iters=max(5, round(np.log2(n)))).neighbor_graph
    own = idx == np.arange(n)[:, None]
    drop = own.copy()
    drop[~own.any(axis=1), -1] = True  # rows where self was not returned lose their farthest neighbour
    return idx[~drop].reshape(n, k)


# ------------------------------------------------------------------- communities on a graph


@contextmanager
def _igraph_seed(seed: int) -> Iterator[None]:
    """Make igraph's community detection reproducible without leaving global state changed."""
    igraph.set_random_number_generator(random.Random(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def louvain_on_graph(connectivities, resolution: float, seed: int = 0) -> np.ndarray:
    """Louvain (igraph multilevel) on a weighted, undirected kNN graph at a given resolution."""
    upper = sp.triu(connectivities, k=1).tocoo()
    graph = igraph.Graph(n=connectivities.shape[0], edges=list(zip(upper.row.tolist(), upper.col.tolist())))
    with _igraph_seed(seed):
        part = graph.community_multilevel(weights=upper.data.tolist(), resolution=resolution)
    return np.asarray(part.membership)
