"""Benchmark helpers: pseudo-spots from labelled single cells, gene folds, resource measurement.

Pseudo-spots (the usual way to get deconvolution ground truth from single-cell-resolution slides):
cells are binned on a square grid over their coordinates; every bin holding at least
``min_cells`` cells becomes one spot whose counts are the sum of its cells' raw counts, whose
position is the mean of its cells' positions, and whose true proportions are the shares of its
cells' labels. The bin side is chosen so that bins hold ``target_cells`` cells on average over the
bounding box (or given explicitly as ``bin_size``).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

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


def split_cells(labels: pd.Series, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split of cells (positions) into two parts, ``fraction`` of each label in the first."""
    rng = np.random.default_rng(seed)
    lab = labels.astype(str).to_numpy()
    first = []
    for t in sorted(set(lab)):
        idx = rng.permutation(np.flatnonzero(lab == t))
        first.append(idx[: int(round(fraction * len(idx)))])
    a = np.sort(np.concatenate(first))
    b = np.setdiff1d(np.arange(len(lab)), a)
    return a, b


def gene_folds(genes, n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Random partition of ``genes`` into ``n_folds`` held-out sets (leave-genes-out cross-validation)."""
    rng = np.random.default_rng(seed)
    g = np.array(list(genes), dtype=object)[rng.permutation(len(genes))]
    return [list(map(str, part)) for part in np.array_split(g, n_folds)]


class _Sampler:
    """Peak resident memory of this process, sampled every 20 ms on a thread (psutil)."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


@contextmanager
def measure(record: dict):
    """Fill ``record`` with wall seconds, CPU seconds, peak RSS and the peak RSS increase (MB) of the block."""
    t0, c0 = time.perf_counter(), time.process_time()
    with _Sampler() as s:
        yield record
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["cpu_seconds"] = round(time.process_time() - c0, 2)
    record["peak_rss_mb"] = round(s.peak / 2**20, 1)
    record["peak_increase_mb"] = round((s.peak - s.start) / 2**20, 1)
