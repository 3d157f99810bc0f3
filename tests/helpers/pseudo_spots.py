"""Pseudo-spots: deconvolution ground truth from labelled single-cell-resolution slides.

Cells are binned on a square grid over their coordinates; every bin holding at least
``min_cells`` cells becomes one spot whose counts are the sum of its cells' raw counts, whose
position is the mean of its cells' positions, and whose true proportions are the shares of its
cells' labels. The bin side is chosen so that bins hold ``target_cells`` cells on average over the
bounding box (or given explicitly as ``bin_size``).

Used by the deconvolution tests and by ``bench/tasks.py``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_pseudo_spots(cells: ad.AnnData, label_key: str, *, target_cells: float = 8.0, bin_size: float | None = None,
                      min_cells: int = 2) -> ad.AnnData:
    """Bin labelled cells into pseudo-spots with known cell-type proportions (see module docstring)."""
    xy = np.asarray(cells.obsm["spatial"], dtype=np.float64)[:, :2]
    if bin_size is None:
        extent = np.ptp(xy, axis=0)
        bin_size = float(np.sqrt(extent[0] * extent[1] * target_cells / cells.n_obs))
    ij = np.floor((xy - xy.min(axis=0)) / bin_size).astype(np.int64)
    key = ij[:, 0] * (ij[:, 1].max() + 1) + ij[:, 1]
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    keep_bins = np.flatnonzero(counts >= min_cells)
    remap = np.full(len(uniq), -1)
    remap[keep_bins] = np.arange(len(keep_bins))
    spot = remap[inv]
    member = spot >= 0
    n = len(keep_bins)
    A = sp.csr_matrix((np.ones(member.sum()), (spot[member], np.flatnonzero(member))), shape=(n, cells.n_obs))
    X = sp.csr_matrix(A @ sp.csr_matrix(cells.X, dtype=np.float64)).astype(np.float32)
    labels = cells.obs[label_key].astype(str).to_numpy()
    types = sorted(set(labels))
    onehot = (labels[:, None] == np.array(types)[None, :]).astype(np.float64)
    n_cells = np.asarray(A.sum(axis=1)).ravel()
    props = (A @ onehot) / n_cells[:, None]
    names = [f"spot_{i:04d}" for i in range(n)]
    out = ad.AnnData(X=X, obs=pd.DataFrame({"n_cells": n_cells.astype(int)}, index=names),
                     var=pd.DataFrame(index=cells.var_names.copy()))
    out.obsm["spatial"] = (A @ xy) / n_cells[:, None]
    out.obsm["true_proportions"] = pd.DataFrame(props, index=names, columns=types)
    out.uns["pseudo_spots"] = {"label_key": label_key, "bin_size": float(bin_size), "min_cells": int(min_cells),
                               "n_cells_used": int(member.sum()), "n_cells_total": int(cells.n_obs)}
    return out
