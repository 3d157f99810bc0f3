"""What spatial domains are found from: the slide's own expression, the model's embedding, or both,
each optionally next to the mean of its spatial neighbours.

* **expression**: log1p of counts per 10,000, the most variable genes scaled to unit variance,
  principal components (the features of the strongest simple baselines, so a pipeline that includes
  them starts from there);
* **embedding**: the foundation model's spot embeddings;
* **fused**: both blocks, each centred and scaled to unit total variance, the embedding given a share
  ``embedding_weight`` of the variance (the paper stacks expression and embeddings for mapping, Eq. 13;
  here the same idea serves domains);
* **spatial_weight** (BANKSY-style, Singhal et al. 2024): each spot's features beside the mean of its
  ``spatial_k`` nearest spots' features, the neighbour block given a share ``spatial_weight`` of the
  variance. Domains are contiguous, so a spot's neighbourhood carries what a single noisy spot lacks.

The result is reduced to ``n_pcs`` principal components, so the clustering sees a compact, decorrelated
space whatever the blocks' widths.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.decomposition import PCA

from ..io import iter_row_chunks
from ..neighbors import knn_indices
from ..pp.hvg import highly_variable_mask

FEATURES = ("embedding", "expression", "fused")
TARGET_SUM = 1e4
#: principal components of the expression block, as the same-run baselines compute them; the combined
#: features are reduced to ``n_pcs`` afterwards, so the block keeps its detail whatever ``n_pcs`` is
EXPRESSION_PCS = 30


#: From this many cells expression PCs come from the gene x gene covariance accumulated chunk by chunk
#: (exact PCA, memory O(genes^2) instead of a log-normalised copy of the slide: 1.2 GB per 1M cells x 150
#: expressed genes, more with arpack's temporaries). Below it, arpack on the sparse matrix as before, so
#: results on benchmark-sized slides are unchanged.
STREAMED_PCA_FROM = 200_000


def _log_chunks(adata, cols: np.ndarray, chunk_size: int):
    """log1p(counts per 1e4) of the chosen genes, ``chunk_size`` rows at a time (float32 CSR).

    The library size is the spot's total over all its genes, as scanpy's ``normalize_total`` before
    the gene selection: divided by its total over the selected genes only, a transcriptome-wide slide's
    spots were scaled by a few abundant variable genes (HER2ST dev sections: 0.36 against 0.45 ARI)."""
    for start, stop, X in iter_row_chunks(adata, chunk_size):
        totals = np.asarray(X.sum(axis=1), dtype=np.float32).ravel()
        X = sp.csr_matrix(X[:, cols], dtype=np.float32)
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
        X = sp.diags(scale) @ X
        X.data = np.log1p(X.data)
        yield start, stop, X


def expression_pcs(adata, *, n_top_genes: int | None = 3000, n_pcs: int = 30, seed: int = 0,
                   chunk_size: int = 4096, solver: str = "auto", info: dict | None = None) -> np.ndarray:
    """Principal components of log1p(counts per 1e4) over the ``n_top_genes`` most variable genes, each
    gene scaled to unit variance (scanpy's ``pp.scale`` without clipping).

    ``solver``: ``arpack`` keeps the rows sparse (genes divided by their standard deviation, centring
    implicit: scanpy, arpack), which equals PCA of the z-scored matrix without densifying it;
    ``covariance`` never holds the slide: it accumulates the genes' covariance over chunks of rows,
    takes its leading eigenvectors and projects the chunks again (the same PCA up to float rounding and
    each component's sign, fixed so its largest loading is positive). ``auto``: covariance from
    :data:`STREAMED_PCA_FROM` cells. ``info`` (a dict) receives the solver used."""
    if solver not in ("auto", "arpack", "covariance"):
        raise ValueError(f"solver={solver!r}: use 'auto', 'arpack' or 'covariance'")
    hv = highly_variable_mask(adata, n_top_genes, chunk_size=chunk_size) if n_top_genes else None
    cols = np.flatnonzero(hv) if hv is not None else np.arange(adata.n_vars)
    if solver == "auto":
        solver = "covariance" if adata.n_obs >= STREAMED_PCA_FROM else "arpack"
    if info is not None:
        info["pca_solver"] = solver
    if solver == "covariance":
        return _covariance_pcs(adata, cols, n_pcs, chunk_size)
    blocks = [X for _, _, X in _log_chunks(adata, cols, chunk_size)]
    X = sp.vstack(blocks).tocsr()
    del blocks
    # one copy of the slide's values at a time: the squares share X's indices, and the scaling to unit
    # variance is done in place
    mean = np.asarray(X.mean(axis=0)).ravel()
    squares = sp.csr_matrix((X.data * X.data, X.indices, X.indptr), shape=X.shape, copy=False)
    var = np.asarray(squares.mean(axis=0)).ravel() - mean ** 2
    del squares
    std = np.sqrt(np.maximum(var, 0))
    scale_columns_in_place(X, np.divide(1.0, std, out=np.zeros_like(std), where=std > 0).astype(np.float32))
    work = ad.AnnData(X)
    n_comps = max(1, min(n_pcs, work.n_vars - 1, work.n_obs - 1))
    sc.pp.pca(work, n_comps=n_comps, random_state=seed, svd_solver="arpack")
    return np.asarray(work.obsm["X_pca"], dtype=np.float32)


def _covariance_pcs(adata, cols: np.ndarray, n_pcs: int, chunk_size: int) -> np.ndarray:
    """:func:`expression_pcs` by the covariance of the z-scored genes, two passes over chunks of rows."""
    g, n = len(cols), adata.n_obs
    total, gram = np.zeros(g), np.zeros((g, g))
    for _, _, X in _log_chunks(adata, cols, chunk_size):
        X = X.astype(np.float64)
        total += np.asarray(X.sum(axis=0)).ravel()
        gram += (X.T @ X).toarray()
    mean = total / n
    cov = gram / n - np.outer(mean, mean)  # population covariance, as the arpack path's variance
    std = np.sqrt(np.maximum(np.diag(cov), 0))
    inv = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    corr = cov * np.outer(inv, inv)
    k = max(1, min(n_pcs, g - 1, n - 1))
    vals, vecs = np.linalg.eigh(corr)
    V = vecs[:, np.argsort(vals)[::-1][:k]]
    V *= np.sign(V[np.abs(V).argmax(axis=0), np.arange(k)])  # deterministic sign per component
    W = V * inv[:, None]  # z-scoring folded into the projection
    offset = mean @ W
    out = np.empty((n, k), dtype=np.float32)
    for start, stop, X in _log_chunks(adata, cols, chunk_size):
        out[start:stop] = np.asarray(X @ W) - offset
    return out


def scale_columns_in_place(X: sp.csr_matrix, factors: np.ndarray, rows_per_step: int = 65_536) -> None:
    """``X @ diag(factors)`` without a second copy of X, bit for bit as scipy computes it: the same float32
    products, and each row's entries in the order scipy's product leaves them (reversed), so what reads
    X afterwards (arpack's matrix-vector products) sums in the same order and returns the same PCs."""
    X.data *= factors[X.indices]
    for a in range(0, X.shape[0], rows_per_step):
        b = min(X.shape[0], a + rows_per_step)
        s, e = X.indptr[a], X.indptr[b]
        if e == s:
            continue
        ptr = X.indptr[a:b + 1] - s
        row = np.repeat(np.arange(b - a), np.diff(ptr))
        rev = ptr[row] + ptr[row + 1] - 1 - np.arange(e - s)
        X.data[s:e] = X.data[s:e][rev]
        X.indices[s:e] = X.indices[s:e][rev]
    X.has_sorted_indices = False


#: From this many spots the combined features are float32: half the memory (0.75 GB per 1M spots x 188
#: columns) at a precision far below the features' noise. Below it float64, as the benchmark tables were
#: measured.
FLOAT32_FROM = STREAMED_PCA_FROM
_ROWS = 65_536  # rows per step where a temporary the size of the block would otherwise be made


def features_dtype(n_obs: int) -> type:
    return np.float32 if n_obs >= FLOAT32_FROM else np.float64


def _centre_scale_into(out: np.ndarray, F: np.ndarray, weight: float) -> None:
    """``out[:] = weight * F`` centred and scaled to unit total variance, with no temporary the size of F
    (``out`` may be a column slice of a wider array)."""
    out[...] = F
    out -= out.mean(axis=0, dtype=np.float64).astype(out.dtype)
    squares = sum(float(np.square(out[a:a + _ROWS], dtype=np.float64).sum()) for a in range(0, len(out), _ROWS))
    total = np.sqrt(squares / max(len(out), 1))
    out *= out.dtype.type(weight / total if total > 0 else weight)


def stacked_blocks(blocks: list[tuple[np.ndarray, float]], dtype, spare: int = 0) -> np.ndarray:
    """The blocks side by side in one new array, each centred with total variance ``weight**2``, and
    ``spare`` more columns left for the caller (the neighbour means)."""
    n = len(blocks[0][0])
    width = sum(np.shape(B)[1] for B, _ in blocks)
    out = np.empty((n, width + spare), dtype=dtype)
    col = 0
    for B, weight in blocks:
        _centre_scale_into(out[:, col:col + np.shape(B)[1]], B, weight)
        col += np.shape(B)[1]
    return out


def unit_variance(F: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Centred, scaled so the block's total variance is 1 (blocks of different widths weigh the same)."""
    return stacked_blocks([(F, 1.0)], dtype)


def neighbour_mean(F: np.ndarray, coords: np.ndarray, k: int, seed: int = 0,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Mean of each spot's ``k`` nearest spots' features (the spot itself left out), into ``out`` if given.
    Gathered a chunk of rows at a time: ``F[idx]`` whole would be an n x k x d copy (4.5 GB for 1M spots x 6
    neighbours x 94 columns)."""
    k = min(k, len(F) - 1)
    idx = knn_indices(np.asarray(coords, dtype=np.float64), k, seed)
    if out is None:
        dtype = F.dtype if np.issubdtype(F.dtype, np.floating) else np.float64
        out = np.empty(np.shape(F), dtype=dtype)
    for a in range(0, len(F), _ROWS):
        rows = idx[a:a + _ROWS]
        acc = F[rows[:, 0]].astype(out.dtype, copy=False)
        for j in range(1, k):
            acc += F[rows[:, j]]
        acc /= k
        out[a:a + len(rows)] = acc
    return out


def feature_blocks(features: str, expression, embedding, embedding_weight: float) -> list[tuple[np.ndarray, float]]:
    """The (block, weight) pairs ``features`` combines: each block is later centred at total variance
    ``weight**2``, so fused blocks share unit variance with the embedding's share ``embedding_weight``."""
    w = float(embedding_weight)
    return {"embedding": [(embedding, 1.0)], "expression": [(expression, 1.0)],
            "fused": [(expression, np.sqrt(1 - w)), (embedding, np.sqrt(w))]}[features]


def with_neighbourhood(out: np.ndarray, width: int, coords: np.ndarray, *, spatial_weight: float, k: int,
                       seed: int, groups: np.ndarray | None = None) -> None:
    """BANKSY-style features in place: ``out[:, :width]`` (at unit variance) beside its neighbour means in
    ``out[:, width:]``, the latter with share ``spatial_weight`` of the variance. With ``groups`` (one
    slide name per row) neighbours are looked for within each row's own group only."""
    own, nbr = out[:, :width], out[:, width:]
    if groups is None:
        neighbour_mean(own, coords, k, seed, out=nbr)
    else:
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            nbr[rows] = neighbour_mean(own[rows], coords[rows], k, seed) if len(rows) > 1 else own[rows]
    own *= out.dtype.type(np.sqrt(1 - spatial_weight))
    nbr *= out.dtype.type(np.sqrt(spatial_weight))


def reduce(F: np.ndarray, n_pcs: int, seed: int = 0) -> np.ndarray:
    """The first ``n_pcs`` principal components (all columns when there are fewer)."""
    n = min(n_pcs, F.shape[1], F.shape[0] - 1)
    if n >= F.shape[1]:
        return np.asarray(F, dtype=np.float32)
    return PCA(n_components=n, random_state=seed).fit_transform(F).astype(np.float32)


def domain_features(*, expression: np.ndarray | None, embedding: np.ndarray | None, coords: np.ndarray,
                    features: str, embedding_weight: float, spatial_weight: float, spatial_k: int, n_pcs: int,
                    seed: int = 0, info: dict | None = None) -> np.ndarray:
    """The matrix spatial domains are clustered on (rows: the spots given, in order). The embedding
    alone without neighbours is returned as the model gives it (the paper's zero-shot path). One array of
    the combined width is filled in place (float32 from :data:`FLOAT32_FROM` spots; ``info`` receives the
    dtype), so the peak is that array and a chunk, not several copies of it."""
    if features == "embedding" and spatial_weight <= 0:
        return np.asarray(embedding, dtype=np.float32)
    blocks = feature_blocks(features, expression, embedding, embedding_weight)
    dtype = features_dtype(len(coords))
    if info is not None:
        info["features_dtype"] = np.dtype(dtype).name
    width = sum(np.shape(B)[1] for B, _ in blocks)
    F = stacked_blocks(blocks, dtype, spare=width if spatial_weight > 0 else 0)
    if spatial_weight > 0:
        with_neighbourhood(F, width, coords, spatial_weight=spatial_weight, k=spatial_k, seed=seed)
    return reduce(F, n_pcs, seed)


#: Spots each spot is averaged with in the consensus's second view of the slide: the "PCA smoothed"
#: baseline's k (bench/protocols/unseen_tissue.yaml, ``baselines: smooth_k``).
SMOOTHED_K = 6


def smoothed_features(*, expression: np.ndarray | None, embedding: np.ndarray | None, coords: np.ndarray,
                      features: str, embedding_weight: float, k: int = SMOOTHED_K, seed: int = 0) -> np.ndarray:
    """The base block (expression PCs, the embedding or both fused, at unit variance) averaged over each
    spot and its ``k`` nearest spots: the strongest same-run baseline's view of the slide, which
    :func:`spgpt_core.tl._cluster.consensus_cluster` clusters beside :func:`domain_features`."""
    B = stacked_blocks(feature_blocks(features, expression, embedding, embedding_weight), features_dtype(len(coords)))
    return smoothed(B, coords, k, seed).astype(np.float32, copy=False)


def smoothed(F: np.ndarray, coords: np.ndarray, k: int = SMOOTHED_K, seed: int = 0) -> np.ndarray:
    """Each row averaged with its ``k`` nearest spots' rows (itself counted once): the "PCA smoothed"
    baseline's features when ``F`` is the PCs."""
    out = neighbour_mean(F, coords, k, seed)
    k = min(k, len(F) - 1)
    out *= out.dtype.type(k)
    out += F
    out /= out.dtype.type(k + 1)
    return out
