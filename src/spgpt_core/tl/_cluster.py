"""``tl.cluster``: domains / cell states from an embedding, into a categorical ``obs`` column.

* ``leiden`` (scanpy, igraph flavour) or ``louvain`` (igraph multilevel, the algorithm of the
  paper's integration benchmark) on the embedding's kNN graph, at a given resolution or with a
  bisection search for the resolution that yields exactly ``n_clusters`` (the usual protocol
  when the number of domains is known, e.g. K=7 on DLPFC);
* ``kmeans`` (scikit-learn, k-means++, 10 restarts);
* optional spatial smoothing over each spot's ``smooth_k`` nearest spatial neighbours: a Potts prior
  (``spatial_prior`` > 0) or a majority vote (:mod:`._smoothing`).

Above ``SUBSAMPLE_ABOVE`` cells every method clusters a seeded random subsample of ``N_SUBSAMPLE``
cells and assigns each other cell to the nearest centroid of those clusters (k-means' own
assignment; for a Gaussian mixture, its most probable component). The kNN graph, the Leiden
resolution search and the mixture's fit then cost the same at 1M cells as at 50,000; only the
assignment and the spatial smoothing grow with the slide, linearly. The choice is recorded in
``uns`` (``clustered_on``, ``n_subsample``, ``assign``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from ..errors import InputError
from ..io import get_coordinates
from ..neighbors import louvain_on_graph, neighbors
from ..pl import category_colors
from ..progress import Progress, ensure_progress
from ..records import run_record
from ._smoothing import check_smoothing, spatial_smoothing

log = logging.getLogger(__name__)


GRAPH_METHODS = ("leiden", "louvain")
#: Methods that need K and give exactly K clusters.
K_METHODS = ("kmeans", "gmm", "gmm-tied")
#: Above this many cells, cluster a subsample and assign the rest: the full Leiden path (approximate kNN
#: graph, then a resolution search of up to 30 Leiden runs on it) costs minutes at 100k cells and grows
#: faster than linearly; bench/cluster_scale.py measures both paths' time and ARI.
SUBSAMPLE_ABOVE = 100_000
#: Cells clustered on the subsample path: at most EXACT_MAX_CELLS, so its kNN graph is the exact one a
#: 50,000-cell slide gets; 5 planted domains of 1% of a slide still hold ~500 cells of it.
N_SUBSAMPLE = 50_000
#: Rows assigned to centroids per chunk (memory: chunk x K distances).
ASSIGN_CHUNK = 65_536


def check_request(n_cells: int, *, n_clusters: int | None, resolution: float | None, method: str) -> None:
    """Refuse a clustering request that cannot run; called before any long work (embedding) starts."""
    if method not in (*GRAPH_METHODS, *K_METHODS):
        raise InputError(f"unknown clustering method {method!r}; use one of {', '.join((*GRAPH_METHODS, *K_METHODS))}")
    if method in K_METHODS:
        if n_clusters is None:
            raise InputError(f"{method} needs --n-clusters K; to search a Leiden resolution instead, pass "
                             "--method leiden with --resolution R")
    elif (n_clusters is None) == (resolution is None):
        raise InputError("give exactly one of --n-clusters K (resolution searched) or --resolution R")
    if n_clusters is not None and not 1 <= n_clusters <= n_cells:
        raise InputError(f"n_clusters={n_clusters} (--n-clusters) must be between 1 and the number of cells / "
                         f"spots ({n_cells:,}); choose a smaller K")
    if resolution is not None and not resolution > 0:
        raise InputError(f"--resolution {resolution} must be a positive number (1.0 is a usual start)")


def _check_embedding(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] < 2:
        raise InputError(f"need an (n_cells, n_dims) embedding with at least 2 cells, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise InputError("the embedding has NaN/inf rows (cells dropped as empty?); subset to finite rows first")
    return emb


def graph_labels(emb: np.ndarray, resolution: float, method: str = "leiden", n_neighbors: int = 15, seed: int = 0,
                 _graph=None) -> np.ndarray:
    """Leiden or Louvain communities of the embedding's kNN graph (scanpy's neighbours)."""
    a = _graph if _graph is not None else _neighbors(emb, n_neighbors, seed)
    if method == "louvain":
        return louvain_on_graph(a.obsp["connectivities"], resolution, seed)
    sc.tl.leiden(a, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed,
                 key_added="_c")
    return a.obs["_c"].astype(int).to_numpy()


def leiden_labels(emb: np.ndarray, resolution: float, n_neighbors: int = 15, seed: int = 0, _graph=None) -> np.ndarray:
    return graph_labels(emb, resolution, "leiden", n_neighbors, seed, _graph)


def _neighbors(emb, n_neighbors, seed):
    # n_neighbors - 1 other cells (scanpy's count includes the cell), as before at every size
    return neighbors(emb, min(n_neighbors, emb.shape[0] - 1), seed)


def leiden_n_clusters(emb: np.ndarray, n_clusters: int, n_neighbors: int = 15, seed: int = 0,
                      max_steps: int = 30, method: str = "leiden",
                      progress: Progress | None = None) -> tuple[np.ndarray, float]:
    """Bisection on the Leiden (or Louvain) resolution until exactly ``n_clusters`` clusters (or the closest)."""
    progress = ensure_progress(progress)
    progress.start(0, f"kNN graph of {emb.shape[0]:,} cells")
    g = _neighbors(emb, n_neighbors, seed)
    progress.check()
    lo, hi = 0.0, 3.0
    best = None
    # counted in resolutions tried: the search usually stops well before max_steps
    progress.start(max_steps, f"{method.title()} resolution search for K={n_clusters}", unit="run")
    for _ in range(max_steps):
        progress.check()
        res = (lo + hi) / 2
        labels = graph_labels(emb, res, method, seed=seed, _graph=g)
        k = len(np.unique(labels))
        progress.update(1)
        if best is None or abs(k - n_clusters) < abs(best[2] - n_clusters):
            best = (labels, res, k)
        if k == n_clusters:
            break
        if k < n_clusters:
            lo = res
        else:
            hi = res
    labels, res, k = best
    if k != n_clusters:
        log.warning("%s gave %d clusters at best (asked %d); use method='kmeans' for an exact K", method.title(), k,
                    n_clusters)
    return labels, res


def kmeans_labels(emb: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    return _kmeans(n_clusters, seed).fit_predict(emb)


def _kmeans(n_clusters: int, seed: int) -> KMeans:
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)


def gmm_labels(emb: np.ndarray, n_clusters: int, seed: int = 0, covariance: str = "full") -> np.ndarray:
    """Gaussian mixture, k-means start, seeded. ``covariance="tied"`` shares one full covariance between
    the components: mclust's EEE model, the one STAGATE and GraphST cluster with. With one covariance
    estimated from every spot instead of one per domain, small domains of small slides stay stable."""
    return _gmm(n_clusters, seed, covariance).fit_predict(np.asarray(emb, dtype=np.float64))


def _gmm(n_clusters: int, seed: int, covariance: str = "full") -> GaussianMixture:
    return GaussianMixture(n_components=n_clusters, covariance_type=covariance, reg_covar=1e-4, max_iter=200,
                           random_state=seed)


def cluster_embedding(emb: np.ndarray, *, n_clusters: int | None = None, resolution: float | None = None,
                      method: str = "leiden", coords: np.ndarray | None = None, smooth_k: int = 0,
                      spatial_prior: float = 0.0, n_neighbors: int = 15, seed: int = 0,
                      subsample_above: int | None = SUBSAMPLE_ABOVE, n_subsample: int = N_SUBSAMPLE,
                      progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """Cluster an embedding; returns (integer labels, parameters actually used).

    Above ``subsample_above`` cells (None: never) the clusters are found on ``n_subsample`` random cells
    and every cell is assigned to the nearest of their centroids (see the module's notes). With
    ``smooth_k`` the labels are then smoothed over that many spatial neighbours (:func:`spatial_smoothing`)."""
    emb = _check_embedding(emb)
    check_request(emb.shape[0], n_clusters=n_clusters, resolution=resolution, method=method)
    check_smoothing(smooth_k, spatial_prior, coords)
    progress = ensure_progress(progress)
    info: dict = {"method": method, "seed": seed, "smooth_k": smooth_k}
    n = emb.shape[0]
    sub = subsample_above is not None and n > subsample_above and n_subsample < n
    fit_on = np.sort(np.random.default_rng(seed).choice(n, n_subsample, replace=False)) if sub else slice(None)
    X = emb[fit_on]
    model = None
    if method == "kmeans":
        model = _kmeans(n_clusters, seed).fit(X)
        labels = model.labels_
    elif method in ("gmm", "gmm-tied"):
        X64 = np.asarray(X, dtype=np.float64)
        model = _gmm(n_clusters, seed, "tied" if method == "gmm-tied" else "full").fit(X64)
        labels = model.predict(X64)
    else:
        if n_clusters is not None:
            labels, res = leiden_n_clusters(X, n_clusters, n_neighbors, seed, method=method, progress=progress)
        else:
            progress.start(0, f"kNN graph and {method.title()} on {X.shape[0]:,} cells")
            labels, res = graph_labels(X, resolution, method, n_neighbors, seed), resolution
        info.update(resolution=float(res), n_neighbors=n_neighbors)
    if sub:
        labels = assign(emb, labels, fit_on, model, progress)
        info.update(clustered_on="subsample", n_subsample=int(n_subsample), subsample_above=int(subsample_above),
                    assign="most probable component" if method.startswith("gmm") else "nearest centroid")
    else:
        info.update(clustered_on="all cells")
    labels, smoothing = spatial_smoothing(labels, coords, emb, smooth_k=smooth_k, spatial_prior=spatial_prior,
                                          progress=progress)
    info.update(smoothing)
    info["n_clusters_found"] = int(len(np.unique(labels)))
    return labels, info


def assign(emb: np.ndarray, labels: np.ndarray, fit_on: np.ndarray, model=None,
           progress: Progress | None = None) -> np.ndarray:
    """Labels of every row of ``emb`` from the clusters ``labels`` of rows ``fit_on``: the fitted
    ``model``'s prediction (k-means, mixture) or, for graph communities, the nearest centroid. In
    chunks, so memory is chunk x K whatever the number of cells; the clustered rows keep their label."""
    progress = ensure_progress(progress)
    codes = np.unique(labels)
    centroids = None
    if model is None:
        fitted = emb[fit_on]
        centroids = np.stack([fitted[labels == c].mean(axis=0) for c in codes]).astype(np.float32)
        c_sq = (centroids ** 2).sum(axis=1)
    out = np.empty(emb.shape[0], dtype=labels.dtype)
    progress.start(emb.shape[0], f"assigning cells to {len(codes)} clusters", unit="cell")
    for start in range(0, emb.shape[0], ASSIGN_CHUNK):
        progress.check()
        block = emb[start:start + ASSIGN_CHUNK]
        if centroids is None:
            out[start:start + len(block)] = model.predict(np.asarray(block, dtype=np.float64) if
                                                          isinstance(model, GaussianMixture) else block)
        else:  # squared distances up to the row's own norm, which does not change the nearest
            out[start:start + len(block)] = codes[np.argmin(c_sq[None, :] - 2 * block @ centroids.T, axis=1)]
        progress.update(len(block))
    out[fit_on] = labels
    return out


# ------------------------------------------------------------------------ consensus


def consensus_labels(partitions: list[np.ndarray], n_clusters: int, seed: int = 0,
                     subsample_above: int | None = SUBSAMPLE_ABOVE, n_subsample: int = N_SUBSAMPLE) -> np.ndarray:
    """``n_clusters`` groups of the spots that the ``partitions`` (label arrays over the same spots) put
    together most often: spectral clustering of their co-association matrix without forming it (n x n).

    The partitions' one-hot columns, each scaled by its cluster's size^-1/2, form H (n x total clusters);
    the co-association's leading eigenvectors are H's leading left singular vectors, found from the small
    H'H, and k-means groups the spots' rows of them. Linear in spots."""
    n = len(partitions[0])
    blocks = []
    for p in partitions:
        _, inv = np.unique(p, return_inverse=True)
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), inv)), shape=(n, inv.max() + 1)))
    H = sp.hstack(blocks).tocsr()
    H = H @ sp.diags(1 / np.sqrt(np.asarray(H.sum(axis=0)).ravel()))
    vals, vecs = np.linalg.eigh((H.T @ H).toarray())
    Z = np.asarray(H @ vecs[:, np.argsort(vals)[::-1][:n_clusters]], dtype=np.float32)
    labels, _ = cluster_embedding(Z, n_clusters=n_clusters, method="kmeans", seed=seed,
                                  subsample_above=subsample_above, n_subsample=n_subsample)
    return labels


def consensus_cluster(feature_sets: list[np.ndarray], *, n_clusters: int, method: str, repeats: int,
                      coords: np.ndarray | None, smooth_k: int = 0, spatial_prior: float = 0.0, seed: int = 0,
                      subsample_above: int | None = SUBSAMPLE_ABOVE, n_subsample: int = N_SUBSAMPLE,
                      progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """One partition from ``repeats`` clusterings (seeds) of each feature set, by :func:`consensus_labels`,
    then smoothed as :func:`cluster_embedding` smooths one clustering (a Potts prior acts on the first
    feature set). Needs a method that gives exactly K.

    A single clustering of one feature set moves with its seed (GMMs: 0.02-0.04 ARI in a 7-slide mean);
    the consensus of several seeds and of two views of the slide moves less, and holds the strongest
    simple baseline's view as a member (docs/experiments/2026-12-06-domain-consensus.md)."""
    if method not in K_METHODS or n_clusters is None:
        raise InputError(f"a consensus of clusterings needs a method that gives exactly K ({', '.join(K_METHODS)}) "
                         "and --n-clusters; use --consensus 1 with Leiden / Louvain")
    check_smoothing(smooth_k, spatial_prior, coords)
    progress = ensure_progress(progress)
    progress.start(len(feature_sets) * repeats, f"consensus of {len(feature_sets) * repeats} clusterings",
                   unit="clustering")
    partitions, member_info = [], None
    for j, F in enumerate(feature_sets):
        for r in range(repeats):
            progress.check()
            member_seed = (1000 * seed + 10 * j + r) % 2**32  # scikit-learn's seeds stop at 2**32 - 1
            labels, info = cluster_embedding(F, n_clusters=n_clusters, method=method, seed=member_seed,
                                             subsample_above=subsample_above, n_subsample=n_subsample)
            partitions.append(labels)
            member_info = member_info or info
            progress.update(1)
    labels = consensus_labels(partitions, n_clusters, seed, subsample_above, n_subsample)
    labels, smoothing = spatial_smoothing(labels, coords, feature_sets[0], smooth_k=smooth_k,
                                          spatial_prior=spatial_prior, progress=progress)
    info = {"method": method, "seed": seed, "smooth_k": smooth_k, **smoothing, "consensus": repeats,
            "consensus_members": len(partitions), "consensus_of": len(feature_sets),
            **{k: v for k, v in member_info.items() if k in ("clustered_on", "n_subsample", "subsample_above",
                                                              "assign")},
            "n_clusters_found": int(len(np.unique(labels)))}
    return labels, info


# ------------------------------------------------------------------------ the verb


def check_domains_request(adata, *, n_clusters: int | None, method: str, resolution: float | None = None) -> None:
    """What spatial domains need, checked in seconds before the slide is embedded.

    Coordinates present and finite, and a clustering request that can run on this many spots.
    """
    try:
        get_coordinates(adata, required=True)
    except InputError as e:
        raise InputError(f"{e} Spatial domains need them; for clusters without a spatial view run `spgpt embed` "
                         "then `spgpt cluster --smooth-k 0`.") from None
    check_request(adata.n_obs, n_clusters=n_clusters, resolution=resolution, method=method)


def cluster(adata, *, use_rep: str = "X_spgpt", n_clusters: int | None = None, resolution: float | None = None,
            method: str = "leiden", smooth_k: int = 0, spatial_prior: float = 0.0, key_added: str = "spgpt_domain",
            seed: int = 0, subsample_above: int | None = SUBSAMPLE_ABOVE, n_subsample: int = N_SUBSAMPLE,
            progress: Progress | None = None):
    """Cluster ``obsm[use_rep]`` into a categorical ``obs[key_added]`` (+ colours, parameters).

    Above ``subsample_above`` cells the clusters are found on ``n_subsample`` cells and the rest
    assigned (:func:`cluster_embedding`); ``uns[key_added]`` says which."""
    if use_rep not in adata.obsm:
        raise InputError(f"obsm['{use_rep}'] not found (have: {list(adata.obsm)}); run `spgpt embed` first or "
                         "pass --use-rep with an existing embedding")
    emb = np.asarray(adata.obsm[use_rep])
    ok = np.isfinite(emb).all(axis=1)
    coords = get_coordinates(adata, required=smooth_k > 0)
    labels, info = cluster_embedding(emb[ok], n_clusters=n_clusters, resolution=resolution, method=method,
                                     coords=None if coords is None else coords[ok], smooth_k=smooth_k,
                                     spatial_prior=spatial_prior, seed=seed,
                                     subsample_above=subsample_above, n_subsample=n_subsample, progress=progress)
    write_labels(adata, labels, ok, key_added,
                 {"use_rep": use_rep, "n_clusters": n_clusters, "resolution": resolution, **info})
    return adata


def write_labels(adata, labels: np.ndarray, ok: np.ndarray, key_added: str, params: dict) -> None:
    """``labels`` of the rows ``ok`` as the categorical ``obs[key_added]`` (other rows missing), its
    colours and ``uns[key_added]`` (the run record of ``params``)."""
    full = np.full(adata.n_obs, None, dtype=object)
    full[ok] = labels.astype(str)
    cats = sorted({str(x) for x in labels}, key=lambda s: (len(s), s))
    adata.obs[key_added] = pd.Categorical(full, categories=cats)
    adata.uns[f"{key_added}_colors"] = category_colors(len(cats))
    adata.uns[key_added] = run_record(params)
