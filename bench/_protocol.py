"""Benchmark protocol helpers: stratified cell splits, gene folds, resource measurement."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd


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
