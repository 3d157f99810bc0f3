"""Evaluation metrics of scGPT-spatial (paper Methods 4.5.2 and 4.5.3) and a few spatial extras.

* Clustering / integration (4.5.2), following scib: :func:`ari`, :func:`nmi`, :func:`asw_label`,
  :func:`asw_batch`, :func:`graph_connectivity`, :func:`cluster_for_metrics`, :func:`avg_bio`
  (= mean of ARI, NMI, ASW_label), :func:`avg_batch` (= mean of ASW_batch, graph connectivity) and
  :func:`integration_scores` (all of them at once).
* Deconvolution and imputation (4.5.3): :func:`macro_f1` on dominant cell types,
  :func:`pearson_per_gene` on held-out genes, and :func:`jensen_shannon` between proportion tables.
* Spatial autocorrelation: :func:`morans_i`.

Missing labels (None, NaN, and strings such as ``"NA"`` used by DLPFC's ``layer`` column) are
dropped before scoring (see :func:`valid_label_mask`), as benchmark papers do. Every function
validates its inputs and raises :class:`~spgpt_core.errors.InputError` saying what to fix.
"""

from __future__ import annotations

from typing import Sequence

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import (
    adjusted_rand_score,
    f1_score,
    normalized_mutual_info_score,
    silhouette_samples,
    silhouette_score,
)

from .errors import InputError
from .neighbors import knn_indices, louvain_on_graph, neighbors

__all__ = [
    "MISSING_LABELS",
    "valid_label_mask",
    "ari",
    "nmi",
    "asw_label",
    "asw_batch",
    "graph_connectivity",
    "cluster_for_metrics",
    "avg_bio",
    "avg_batch",
    "integration_scores",
    "macro_f1",
    "pearson_per_gene",
    "jensen_shannon",
    "morans_i",
]

#: Label strings treated as "not annotated" (compared case-insensitively after stripping).
MISSING_LABELS = frozenset({"", "na", "nan", "none", "null", "<na>"})
#: scib's resolution grid for the optimal-clustering search: 0.1, 0.2, ..., 2.0.
DEFAULT_RESOLUTIONS = tuple(round(0.1 * i, 1) for i in range(1, 21))


# ----------------------------------------------------------------------------- input helpers


def _labels(labels, name: str) -> np.ndarray:
    """1-D object array of labels (accepts lists, arrays, Series, Categoricals)."""
    arr = np.asarray(labels, dtype=object)
    if arr.ndim != 1:
        raise InputError(f"{name} must be one label per cell/spot (1-D); got shape {arr.shape}.")
    if arr.size == 0:
        raise InputError(f"{name} is empty; pass one label per cell/spot.")
    return arr


def valid_label_mask(labels) -> np.ndarray:
    """Boolean mask, True where a label is present (not None/NaN/"NA"/"" ...; see MISSING_LABELS).

    Why: annotated datasets mark unannotated spots in different ways; scores must ignore them.
    """
    arr = _labels(labels, "labels")
    missing = pd.isna(arr) | np.array(
        [isinstance(v, str) and v.strip().lower() in MISSING_LABELS for v in arr], dtype=bool
    )
    return ~missing


def _check_length(n: int, other: int, what: str) -> None:
    if n != other:
        raise InputError(f"{what} have different lengths ({n} vs {other}); pass one value per cell/spot in the same order.")


def _embedding(emb, name: str = "emb") -> np.ndarray:
    X = emb.toarray() if sp.issparse(emb) else np.asarray(emb, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise InputError(f"{name} must be a 2-D array (cells x dimensions) with at least 2 rows; got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise InputError(f"{name} contains NaN or infinite values; remove or impute those cells first.")
    return X.astype(np.float64, copy=False)


def _paired_labels(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    """Both label vectors with cells missing either label dropped; needs >= 2 true labels."""
    t, p = _labels(labels_true, "labels_true"), _labels(labels_pred, "labels_pred")
    _check_length(t.size, p.size, "labels_true and labels_pred")
    keep = valid_label_mask(t) & valid_label_mask(p)
    t, p = t[keep].astype(str), p[keep].astype(str)
    if np.unique(t).size < 2:
        raise InputError(
            f"labels_true has {np.unique(t).size} distinct non-missing label(s) after dropping missing ones; "
            "clustering scores need at least 2 ground-truth labels."
        )
    return t, p


def _labels_for_embedding(X: np.ndarray, labels, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Labels as strings and the mask of annotated cells; checks length and >= 2 labels."""
    lab = _labels(labels, name)
    _check_length(X.shape[0], lab.size, f"the embedding rows and {name}")
    keep = valid_label_mask(lab)
    lab = lab.astype(str)
    if np.unique(lab[keep]).size < 2:
        raise InputError(f"{name} needs at least 2 distinct non-missing labels; got {np.unique(lab[keep]).size}.")
    return lab, keep


# ------------------------------------------------------------------------ clustering metrics


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index (1 = identical partitions, ~0 = chance), missing labels dropped."""
    t, p = _paired_labels(labels_true, labels_pred)
    return float(adjusted_rand_score(t, p))


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as scib), missing dropped."""
    t, p = _paired_labels(labels_true, labels_pred)
    return float(normalized_mutual_info_score(t, p, average_method="arithmetic"))


def asw_label(emb, labels) -> float:
    """Cell-type average silhouette width scaled to [0, 1] as scib does: (silhouette + 1) / 2.

    Euclidean silhouette of the annotated cells in the embedding; 1 = compact, separated labels.
    """
    X = _embedding(emb)
    lab, keep = _labels_for_embedding(X, labels)
    if keep.sum() <= np.unique(lab[keep]).size:
        raise InputError("asw_label needs more annotated cells than labels; pass a larger embedding.")
    return float((silhouette_score(X[keep], lab[keep]) + 1.0) / 2.0)


def asw_batch(emb, batch, labels) -> float:
    """scib's batch ASW: per cell-type label, mean of 1 - |silhouette w.r.t. batch|, averaged over labels.

    1 = batches perfectly mixed within every cell type, 0 = batches fully separated. Labels present
    in only one batch (or with one cell per batch) are skipped, as in scib.
    """
    X = _embedding(emb)
    lab, keep = _labels_for_embedding(X, labels)
    bat = _labels(batch, "batch")
    _check_length(X.shape[0], bat.size, "the embedding rows and batch")
    keep &= valid_label_mask(bat)
    bat = bat.astype(str)
    if np.unique(bat[keep]).size < 2:
        raise InputError("asw_batch needs at least 2 batches; pass the batch (slide/modality) of every cell.")
    per_label = []
    for group in np.unique(lab[keep]):
        idx = keep & (lab == group)
        n_batches = np.unique(bat[idx]).size
        if n_batches == 1 or n_batches == idx.sum():
            continue
        per_label.append(np.mean(1.0 - np.abs(silhouette_samples(X[idx], bat[idx]))))
    if not per_label:
        raise InputError(
            "asw_batch: no cell-type label occurs in more than one batch, so batch mixing is undefined; "
            "check that batch and labels are the right columns."
        )
    return float(np.mean(per_label))


def _knn_graph(X: np.ndarray, k: int) -> sp.csr_matrix:
    """Symmetric kNN adjacency; k counts the cell itself, like scanpy's n_neighbors."""
    n_neighbors = min(k, X.shape[0])
    idx = np.column_stack([np.arange(X.shape[0]), knn_indices(X, n_neighbors - 1)])
    rows = np.repeat(np.arange(X.shape[0]), n_neighbors)
    A = sp.csr_matrix((np.ones(rows.size), (rows, idx.ravel())), shape=(X.shape[0], X.shape[0]))
    return (A + A.T).tocsr()


def graph_connectivity(emb_or_graph, labels, k: int = 15) -> float:
    """scib's graph connectivity: mean over labels of the largest connected component's share.

    ``emb_or_graph`` is an embedding (a symmetric kNN graph with ``k`` neighbours is built, like
    ``sc.pp.neighbors``) or a precomputed square sparse adjacency such as
    ``adata.obsp['connectivities']``. 1 = every label forms one connected piece of the graph.
    """
    if sp.issparse(emb_or_graph) and emb_or_graph.shape[0] == emb_or_graph.shape[1]:
        graph = sp.csr_matrix(emb_or_graph)
        if graph.shape[0] < 2:
            raise InputError("graph_connectivity needs a graph with at least 2 nodes.")
    else:
        if k < 2:
            raise InputError(f"k={k}: the kNN graph needs k >= 2 (k counts the cell itself).")
        graph = _knn_graph(_embedding(emb_or_graph, "emb_or_graph"), k)
    lab = _labels(labels, "labels")
    _check_length(graph.shape[0], lab.size, "the graph nodes and labels")
    keep = valid_label_mask(lab)
    lab = lab.astype(str)
    if np.unique(lab[keep]).size < 2:
        raise InputError("graph_connectivity needs at least 2 distinct non-missing labels.")
    shares = []
    for group in np.unique(lab[keep]):
        idx = np.flatnonzero(keep & (lab == group))
        _, comp = connected_components(graph[idx][:, idx], directed=True, connection="strong")
        shares.append(np.bincount(comp).max() / idx.size)
    return float(np.mean(shares))


def cluster_for_metrics(
    emb,
    labels,
    method: str = "leiden",
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    n_neighbors: int = 15,
    seed: int = 0,
) -> np.ndarray:
    """scib-style optimal clustering: the resolution (0.1..2.0) whose clusters maximise NMI to labels.

    Builds scanpy's kNN graph on the embedding, then clusters every cell at each resolution with
    ``method``: ``"leiden"`` (``sc.tl.leiden(flavor="igraph", n_iterations=2, directed=False)``) or
    ``"louvain"`` (igraph's multilevel algorithm with the resolution parameter; scanpy's own louvain
    needs the separate ``louvain`` package, and its igraph flavour ignores the resolution). The paper
    followed scib's Louvain; Leiden is the default because it is faster and guarantees connected
    clusters. Returns one cluster label (str) per cell; missing truth labels are ignored for NMI.
    """
    if method not in ("leiden", "louvain"):
        raise InputError(f"method={method!r}: choose 'leiden' or 'louvain'.")
    if len(resolutions) == 0 or min(resolutions) <= 0:
        raise InputError("resolutions must be a non-empty list of positive numbers, e.g. 0.1..2.0.")
    X = _embedding(emb)
    lab, keep = _labels_for_embedding(X, labels)
    adata = neighbors(X, min(n_neighbors, X.shape[0] - 1), seed)

    best, best_score = None, -np.inf
    for res in resolutions:
        if method == "leiden":
            sc.tl.leiden(adata, resolution=res, flavor="igraph", n_iterations=2, directed=False,
                         random_state=seed, key_added="_cluster")
            clusters = adata.obs["_cluster"].to_numpy(dtype=str)
        else:
            clusters = louvain_on_graph(adata.obsp["connectivities"], res, seed).astype(str)
        score = normalized_mutual_info_score(lab[keep], clusters[keep])
        if score > best_score:
            best, best_score = clusters, score
    return best


def avg_bio(emb, labels, clusters=None, method: str = "leiden") -> float:
    """AvgBIO = (ARI + NMI + ASW_label) / 3 (paper Methods 4.5.2).

    ARI and NMI compare ``labels`` with ``clusters`` (default: :func:`cluster_for_metrics`).
    """
    if clusters is None:
        clusters = cluster_for_metrics(emb, labels, method=method)
    return float(np.mean([ari(labels, clusters), nmi(labels, clusters), asw_label(emb, labels)]))


def avg_batch(emb, batch, labels) -> float:
    """AvgBATCH = (ASW_batch + graph connectivity) / 2 (paper Methods 4.5.2)."""
    return float(np.mean([asw_batch(emb, batch, labels), graph_connectivity(emb, labels)]))


def integration_scores(emb, labels, batch=None, method: str = "leiden", seed: int = 0) -> dict[str, float]:
    """All integration metrics at once (one clustering search, shared by ARI and NMI).

    Returns ``ari``, ``nmi``, ``asw_label``, ``avg_bio`` and, when ``batch`` is given,
    ``asw_batch``, ``graph_connectivity`` and ``avg_batch``. ``seed``: of the clustering search
    (benchmarks report the spread over seeds).
    """
    clusters = cluster_for_metrics(emb, labels, method=method, seed=seed)
    scores = {"ari": ari(labels, clusters), "nmi": nmi(labels, clusters), "asw_label": asw_label(emb, labels)}
    scores["avg_bio"] = float(np.mean([scores["ari"], scores["nmi"], scores["asw_label"]]))
    if batch is not None:
        scores["asw_batch"] = asw_batch(emb, batch, labels)
        scores["graph_connectivity"] = graph_connectivity(emb, labels)
        scores["avg_batch"] = float(np.mean([scores["asw_batch"], scores["graph_connectivity"]]))
    return scores


# ------------------------------------------------------------- deconvolution and imputation


def macro_f1(true_dominant, pred_dominant) -> float:
    """Macro F1 of dominant cell-type calls (paper Methods 4.5.3): the unweighted mean of per-type F1.

    Types come from both vectors, so predicting a type absent from the truth costs an F1 of 0.
    Spots with a missing label on either side are dropped.
    """
    t = _labels(true_dominant, "true_dominant")
    p = _labels(pred_dominant, "pred_dominant")
    _check_length(t.size, p.size, "true_dominant and pred_dominant")
    keep = valid_label_mask(t) & valid_label_mask(p)
    if not keep.any():
        raise InputError("macro_f1: no spot has both a true and a predicted dominant type.")
    return float(f1_score(t[keep].astype(str), p[keep].astype(str), average="macro", zero_division=0))


def _table(x, name: str) -> tuple[np.ndarray, pd.Index | None, pd.Index | None]:
    """(values, row names, column names) of a DataFrame, AnnData, sparse or dense 2-D array."""
    if isinstance(x, anndata.AnnData):
        values, rows, cols = x.X, x.obs_names, x.var_names
    elif isinstance(x, pd.DataFrame):
        values, rows, cols = x.to_numpy(), x.index, x.columns
    else:
        values, rows, cols = x, None, None
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.size == 0:
        raise InputError(f"{name} must be a non-empty 2-D table (cells/spots x genes or types); got shape {values.shape}.")
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must hold numbers: {err}.") from None
    if not np.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values; fill or drop them first.")
    return values, rows, cols


def _aligned(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """Two tables with b's rows and columns put in a's order when both are labelled."""
    A, rows_a, cols_a = _table(a, name_a)
    B, rows_b, cols_b = _table(b, name_b)
    if cols_a is not None and cols_b is not None:
        missing = pd.Index(cols_a).difference(cols_b)
        if len(missing):
            raise InputError(f"{name_b} lacks columns of {name_a}: {list(missing[:5])}; pass matching genes/types.")
        B = B[:, pd.Index(cols_b).get_indexer(cols_a)]
    if rows_a is not None and rows_b is not None and not pd.Index(rows_a).equals(pd.Index(rows_b)):
        if set(rows_a) != set(rows_b) or not pd.Index(rows_b).is_unique:
            raise InputError(f"{name_a} and {name_b} describe different cells/spots; pass the same ones.")
        B = B[pd.Index(rows_b).get_indexer(rows_a)]
    if A.shape != B.shape:
        raise InputError(f"{name_a} has shape {A.shape} but {name_b} has {B.shape}; pass the same cells/spots and columns.")
    names = pd.Index(cols_a) if cols_a is not None else (pd.Index(cols_b) if cols_b is not None else pd.RangeIndex(A.shape[1]))
    return A, B, names


def pearson_per_gene(measured, imputed) -> pd.Series:
    """Pearson r between measured and imputed expression of each gene across cells/spots (4.5.3).

    Inputs: DataFrames / AnnData (aligned by gene and cell names) or arrays of equal shape.
    A gene that is constant in either input has no defined correlation and gets NaN (use
    ``nanmedian`` to summarise).
    """
    Y, Yhat, genes = _aligned(measured, imputed, "measured", "imputed")
    if Y.shape[0] < 2:
        raise InputError("pearson_per_gene needs at least 2 cells/spots.")
    Yc, Hc = Y - Y.mean(axis=0), Yhat - Yhat.mean(axis=0)
    denom = np.sqrt((Yc**2).sum(axis=0) * (Hc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (Yc * Hc).sum(axis=0) / denom, np.nan)
    return pd.Series(np.clip(r, -1.0, 1.0), index=genes, name="pearson")


def jensen_shannon(p, q) -> np.ndarray:
    """Jensen-Shannon divergence per spot between two proportion tables (base 2, so in [0, 1]).

    Rows are normalised to sum to 1 first; labelled tables are aligned by column (cell type) and row
    names. 0 = identical compositions, 1 = no cell type in common. This is the divergence, not
    scipy's ``jensenshannon`` distance (its square root).
    """
    P, Q, _ = _aligned(p, q, "p", "q")
    if (P < 0).any() or (Q < 0).any():
        raise InputError("Proportions must be non-negative; pass cell-type proportions or abundances.")
    for name, M in (("p", P), ("q", Q)):
        if (M.sum(axis=1) <= 0).any():
            raise InputError(f"{name} has rows summing to 0; every spot needs some positive proportion.")
    P = P / P.sum(axis=1, keepdims=True)
    Q = Q / Q.sum(axis=1, keepdims=True)
    M = 0.5 * (P + Q)

    def kl(A: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(A > 0, A * np.log2(A / M), 0.0).sum(axis=1)

    return np.clip(0.5 * kl(P) + 0.5 * kl(Q), 0.0, 1.0)


# ------------------------------------------------------------------------------------ spatial


def morans_i(values, coords, k: int = 6):
    """Moran's I with row-standardised kNN spatial weights (k=6 = the Visium hexagon ring).

    ``values``: one value per spot (returns a float) or a spots x features table (returns a Series
    per column, named by DataFrame/AnnData columns). ~1 = smooth spatial pattern, ~-1/(n-1) =
    spatially random, negative = checkerboard. Constant features give NaN.
    """
    is_vector = not sp.issparse(values) and np.ndim(values) == 1 and not isinstance(values, pd.DataFrame)
    V, _, cols = _table(values, "values")
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise InputError(f"coords must be an (n, 2) array of spot positions; got shape {xy.shape}.")
    _check_length(V.shape[0], xy.shape[0], "values and coords")
    if not np.isfinite(xy).all():
        raise InputError("coords contain NaN or infinite values; drop those spots first.")
    n = V.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k={k}: need 1 <= k < number of spots ({n}).")
    # knn_indices excludes each spot itself, even at duplicated coordinates.
    # Row-standardised weights are 1/k, so the sum of all weights S0 equals n and I = z'Wz / z'z.
    neighbours = knn_indices(xy, k)
    Z = V - V.mean(axis=0)
    lag = Z[neighbours].mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = np.where((Z**2).sum(axis=0) > 0, (Z * lag).sum(axis=0) / (Z**2).sum(axis=0), np.nan)
    if is_vector:
        return float(stat[0])
    return pd.Series(stat, index=cols if cols is not None else pd.RangeIndex(V.shape[1]), name="morans_i")


# ------------------------------------------------- summaries for deconvolution and imputation
# (added for the downstream-task benchmark; the functions above are unchanged)


def dominant_labels(proportions, ambiguous=None) -> np.ndarray:
    """Arg-max cell type per spot of a proportion table (DataFrame columns name the types).

    Spots whose maximum is shared by several types get ``ambiguous`` (default None, i.e. a missing
    label that :func:`macro_f1` drops), because their dominant type is undefined.
    """
    P, _, cols = _table(proportions, "proportions")
    names = np.asarray(cols if cols is not None else np.arange(P.shape[1]), dtype=object)
    best = P.max(axis=1, keepdims=True)
    tied = (np.isclose(P, best, rtol=0, atol=1e-12).sum(axis=1) > 1) | (best[:, 0] <= 0)
    out = names[P.argmax(axis=1)].astype(object)
    out[tied] = ambiguous
    return out


def deconvolution_scores(true_proportions, pred_proportions) -> dict[str, float]:
    """Macro F1 and accuracy of dominant types, mean Jensen-Shannon divergence and mean per-type
    Pearson r of proportions (tables aligned by spot and type names when labelled).

    Types present in only one table are added to the other with proportion 0. Spots whose true
    dominant type is tied are left out of the F1 / accuracy (counted in ``n_spots_ambiguous``).
    """
    T, P = _frame(true_proportions, "true_proportions"), _frame(pred_proportions, "pred_proportions")
    if not T.index.equals(P.index) and len(T) == len(P) and (T.index.equals(pd.RangeIndex(len(T)))
                                                            or P.index.equals(pd.RangeIndex(len(P)))):
        P.index = T.index
    types = T.columns.union(P.columns)
    T, P = T.reindex(columns=types, fill_value=0.0), P.reindex(columns=types, fill_value=0.0)
    t_dom, p_dom = dominant_labels(T), dominant_labels(P)
    ok = valid_label_mask(t_dom) & valid_label_mask(p_dom)
    r = pearson_per_gene(T, P)
    return {
        "macro_f1": macro_f1(t_dom, p_dom),
        "accuracy": float(np.mean(t_dom[ok].astype(str) == p_dom[ok].astype(str))) if ok.any() else float("nan"),
        "jsd_mean": float(np.mean(jensen_shannon(T, P))),
        "pearson_per_type_mean": float(np.nanmean(r.to_numpy())) if np.isfinite(r.to_numpy()).any() else float("nan"),
        "n_spots": int(len(T)), "n_spots_ambiguous": int((~valid_label_mask(t_dom)).sum()),
    }


def _frame(x, name: str) -> pd.DataFrame:
    values, rows, cols = _table(x, name)
    return pd.DataFrame(values, index=pd.Index(rows) if rows is not None else pd.RangeIndex(values.shape[0]),
                        columns=pd.Index(cols).astype(str) if cols is not None else pd.RangeIndex(values.shape[1]).astype(str))


def imputation_scores(measured, imputed) -> dict[str, float]:
    """Median and mean per-gene Pearson r between measured and imputed expression (Methods 4.5.3).

    Genes constant in either table have no correlation and are not counted (``n_genes_scored``).
    """
    r = pearson_per_gene(measured, imputed).to_numpy()
    ok = np.isfinite(r)
    return {
        "median_pearson": float(np.median(r[ok])) if ok.any() else float("nan"),
        "mean_pearson": float(np.mean(r[ok])) if ok.any() else float("nan"),
        "n_genes": int(r.size), "n_genes_scored": int(ok.sum()),
    }
