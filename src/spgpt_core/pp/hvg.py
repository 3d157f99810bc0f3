"""Highly variable genes, computed in one streaming pass (works on backed slides).

scGPT practice (and the paper's deconvolution protocol, Methods 4.5) is to give the model a
slide's informative genes rather than all of them: a cell's context holds at most
``max_seq_len - 1`` expressed genes, and on a transcriptome-wide slide a random subset of all
expressed genes is mostly housekeeping genes. The expression baselines (PCA) use the same
selection, so both see the same inputs.

The selection is scanpy's ``flavor="seurat"``: on counts scaled to 10,000 per cell, each gene's
dispersion (variance / mean) is log-transformed and z-scored within 20 bins of log1p(mean); the
genes with the highest normalised dispersion are kept. Mean and variance are accumulated chunk
by chunk, so memory does not grow with the number of cells.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import iter_row_chunks
from ..params import DEFAULT_N_TOP_GENES

log = logging.getLogger(__name__)

def gene_moments(adata, *, target_sum: float = 1e4, chunk_size: int = 4096,
                 genes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and (unbiased) variance of counts scaled to ``target_sum`` per cell.

    ``genes`` (bool mask over var): the per-cell totals are taken over these genes only."""
    n_vars = adata.n_vars
    s1 = np.zeros(n_vars, dtype=np.float64)
    s2 = np.zeros(n_vars, dtype=np.float64)
    n = 0
    for _, _, X in iter_row_chunks(adata, chunk_size):
        if genes is not None:
            X = X.multiply(genes[None, :].astype(np.float32)).tocsr()
        tot = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(target_sum, tot, out=np.zeros_like(tot, dtype=np.float64), where=tot > 0)
        Xn = X.multiply(scale[:, None]).tocsr()
        s1 += np.asarray(Xn.sum(axis=0)).ravel()
        s2 += np.asarray(Xn.multiply(Xn).sum(axis=0)).ravel()
        n += X.shape[0]
    if n < 2:
        raise InputError("highly variable genes need at least 2 cells")
    mean = s1 / n
    var = (s2 - n * mean**2) / (n - 1)
    return mean, np.maximum(var, 0.0)


def seurat_dispersion_rank(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Normalised dispersion per gene (NaN for genes never expressed), as scanpy's seurat flavour."""
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.where(mean > 0, var / mean, np.nan)
        disp = np.where(disp > 0, np.log(disp), np.nan)
        log_mean = np.log1p(mean)
    expressed = mean > 0
    bins = pd.cut(pd.Series(log_mean[expressed]), bins=n_bins)
    d = pd.Series(disp[expressed])
    grouped = d.groupby(bins.to_numpy(), observed=False)
    mu = grouped.transform("mean").to_numpy()
    sd = grouped.transform("std").to_numpy()
    # a bin with one gene has no spread: like scanpy, its gene gets normalised dispersion 1
    single = ~np.isfinite(sd) | (sd == 0)
    z = np.where(single, 1.0, (d.to_numpy() - mu) / np.where(single, 1.0, sd))
    out = np.full(len(mean), np.nan)
    out[expressed] = z
    return out


def highly_variable_mask(adata, n_top_genes: int | None = DEFAULT_N_TOP_GENES, *, genes: np.ndarray | None = None,
                         chunk_size: int = 4096) -> np.ndarray | None:
    """Bool mask over ``adata.var`` of the ``n_top_genes`` most variable genes among ``genes``.

    Returns None (use every gene) when ``n_top_genes`` is None / 0 or not smaller than the number of
    candidate genes, so small targeted panels are never cut."""
    n_candidates = adata.n_vars if genes is None else int(np.sum(genes))
    if not n_top_genes or n_top_genes >= n_candidates:
        return None
    if n_top_genes < 0:
        raise InputError(f"n_top_genes must be >= 0 (0 = every gene), got {n_top_genes}")
    mean, var = gene_moments(adata, genes=genes, chunk_size=chunk_size)
    score = seurat_dispersion_rank(mean, var)
    if genes is not None:
        score = np.where(genes, score, np.nan)
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), kind="stable")
    n_ok = int(np.isfinite(score).sum())
    keep = order[: min(n_top_genes, n_ok)]
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[keep] = True
    return mask
