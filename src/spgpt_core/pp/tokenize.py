"""Preprocessing of Methods 4.1: quality filters, two-level mean normalisation, value binning.

Everything works on sparse CSR rows (a slide is never densified) and is deterministic:
random choices (binning ties, gene subsampling) use a counter-based hash of
``(seed, cell index, gene id)``, so a cell gets the same tokens whatever the chunking, batch size,
order or number of workers. The reference draws them from a global RNG, which is why its
embeddings change between runs (scGPT #281, #319; scGPT-spatial #1).

Two-level mean normalisation (paper 4.1):
1. slide level: divide every value by the mean of all non-zero values of the slide's matched
   genes (sequencing-depth / protocol scale);
2. corpus level: divide each gene's non-zero values by that gene's corpus mean, saved with the
   model as ``gene_stats.csv``. Fallback for genes the model has no mean for: the gene's mean
   non-zero slide-normalised value in this slide (as the reference does), i.e. the gene is
   scaled to mean 1 within the slide. A model without gene statistics (an imported scGPT-human
   checkpoint) skips step 2; step 1 alone does not change per-cell bins.

Binning (scGPT, 4.2.1): per cell, edges are the ``n_bins - 1`` quantiles (numpy "linear") of the
cell's non-zero values; a value gets bin ``#edges <= value`` in 1..n_bins-1 and zero stays 0.
A value equal to several edges (ties) gets a uniformly drawn bin among them, as in the reference,
but drawn from the seeded hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import CheckpointError

# ---------------------------------------------------------------------------------------------
# deterministic per-(cell, gene) randomness

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 arithmetic wraps, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, cells: np.ndarray, genes: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on (seed, stream, cell, gene)."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray([(seed & 0xFFFFFFFF) * 1_000_003 + stream], dtype=np.uint64))
        z = _mix(base + np.asarray(cells, dtype=np.uint64) * _GOLD)
        z = _mix(z + np.asarray(genes, dtype=np.uint64) * _GOLD + _GOLD)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------------------
# gene statistics saved with a model


@dataclass
class GeneStats:
    """Corpus-level mean of non-zero slide-normalised values per vocabulary id (NaN = unknown)."""

    means: np.ndarray  # float64, length = vocabulary size

    @classmethod
    def empty(cls, vocab_size: int) -> "GeneStats":
        return cls(np.full(vocab_size, np.nan))

    @property
    def n_known(self) -> int:
        return int(np.isfinite(self.means).sum())

    def save(self, path: Path, tokens: list[str]) -> None:
        ids = np.flatnonzero(np.isfinite(self.means))
        pd.DataFrame({"vocab_id": ids, "gene": [tokens[i] for i in ids], "mean": self.means[ids]}).to_csv(
            path, index=False
        )

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> "GeneStats":
        """Read ``gene_stats.csv`` (spgpt) or ``all_dict_mean_std.csv`` (scGPT-spatial: index = vocab id)."""
        try:
            df = pd.read_csv(path)
        except Exception as e:  # noqa: BLE001 - any parse failure is a broken checkpoint file
            raise CheckpointError(f"cannot read gene statistics {path}: {e}. Re-export the model directory.") from e
        if "vocab_id" not in df.columns:  # scGPT-spatial layout: first column is the vocab id
            df = df.rename(columns={df.columns[0]: "vocab_id"})
        if "mean" not in df.columns:
            raise CheckpointError(f"{path} has no 'mean' column (columns: {list(df.columns)}); it is not a gene statistics file")
        ids = pd.to_numeric(df["vocab_id"], errors="coerce").to_numpy()
        means = pd.to_numeric(df["mean"], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(ids) & np.isfinite(means) & (means > 0)
        ids = ids[ok].astype(np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
            raise CheckpointError(
                f"{path} refers to vocabulary id {int(ids.max())} but the vocabulary has {vocab_size} tokens: "
                "the statistics belong to another vocabulary"
            )
        out = np.full(vocab_size, np.nan)
        out[ids] = means[ok]
        return cls(out)


# ---------------------------------------------------------------------------------------------
# slide-level statistics (one streaming pass)


@dataclass
class SlideStats:
    """What the normalisation needs from one slide, over its vocabulary-matched genes."""

    nonzero_mean: float  # mean of all non-zero values (slide-level divisor)
    gene_nonzero_sum: np.ndarray  # per var
    gene_nonzero_count: np.ndarray  # per var
    cell_n_expressed: np.ndarray  # per cell: number of expressed matched genes
    n_cells: int

    @classmethod
    def from_chunks(cls, chunks, n_vars: int, used: np.ndarray) -> "SlideStats":
        """``chunks`` yields (start, stop, csr); ``used`` masks the vars matched to the vocabulary."""
        gsum = np.zeros(n_vars)
        gcnt = np.zeros(n_vars, dtype=np.int64)
        per_cell = []
        for _, _, X in chunks:
            X = X[:, used] if not used.all() else X
            X = X.tocsr()
            X.eliminate_zeros()
            gs = np.zeros(n_vars)
            gc = np.zeros(n_vars, dtype=np.int64)
            gs[used] = np.asarray(X.sum(axis=0)).ravel()
            gc[used] = np.bincount(X.indices, minlength=X.shape[1])
            gsum += gs
            gcnt += gc
            per_cell.append(np.diff(X.indptr))
        total, count = gsum.sum(), gcnt.sum()
        n_expr = np.concatenate(per_cell) if per_cell else np.zeros(0, dtype=np.int64)
        return cls(float(total / count) if count else 1.0, gsum, gcnt, n_expr, len(n_expr))


def gene_divisors(slide: SlideStats, vocab_ids: np.ndarray, gene_stats: GeneStats | None) -> tuple[np.ndarray, dict]:
    """Per-var divisor ``slide_mean * gene_mean`` of the two-level normalisation (+ a report).

    Vars not matched to the vocabulary get NaN (they are never tokenised).
    """
    used = vocab_ids >= 0
    div = np.full(len(vocab_ids), np.nan)
    div[used] = slide.nonzero_mean
    info = {"slide_nonzero_mean": slide.nonzero_mean, "gene_normalization": "none (model has no gene statistics)"}
    if gene_stats is None:
        return div, info
    model_mean = np.full(len(vocab_ids), np.nan)
    model_mean[used] = gene_stats.means[vocab_ids[used]]
    with np.errstate(invalid="ignore", divide="ignore"):
        fallback = slide.gene_nonzero_sum / slide.gene_nonzero_count / slide.nonzero_mean
    missing = used & ~np.isfinite(model_mean)
    model_mean[missing] = fallback[missing]
    model_mean[~np.isfinite(model_mean) | (model_mean <= 0)] = 1.0  # genes never expressed here: value irrelevant
    div[used] *= model_mean[used]
    info["gene_normalization"] = "two-level (slide mean x corpus gene mean)"
    info["n_genes_with_model_mean"] = int((used & ~missing).sum())
    info["n_genes_slide_fallback"] = int(missing.sum())
    return div, info


# ---------------------------------------------------------------------------------------------
# tokenisation of CSR rows


def _quantile_edges(sorted_vals: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n_edges: int) -> np.ndarray:
    """Per-row ``np.quantile(row, linspace(0, 1, n_edges))`` (method "linear") on row-sorted data."""
    q = np.linspace(0, 1, n_edges)
    virtual = q[None, :] * (lengths[:, None] - 1).astype(np.float64)
    prev = np.floor(virtual)
    gamma = virtual - prev
    prev = prev.astype(np.int64)
    nxt = np.minimum(prev + 1, lengths[:, None] - 1)
    a = sorted_vals[starts[:, None] + prev]
    b = sorted_vals[starts[:, None] + nxt]
    diff = b - a
    out = a + diff * gamma
    hi = gamma >= 0.5  # numpy's _lerp: exact at both ends
    out[hi] = (b - diff * (1 - gamma))[hi]
    return out


@dataclass
class TokenizedCells:
    """Variable-length token lists of a block of cells, stored flat (CSR-like)."""

    genes: np.ndarray  # int64 vocab ids, without <cls>
    values: np.ndarray  # float32 bin values
    offsets: np.ndarray  # len = n_cells + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def tokenize_rows(
    X: sp.csr_matrix,
    vocab_ids: np.ndarray,
    divisors: np.ndarray,
    *,
    first_cell: int,
    n_bins: int,
    max_genes: int,
    seed: int,
) -> TokenizedCells:
    """Normalise, bin and subsample the expressed genes of CSR rows.

    ``X`` columns are the slide's vars; vars with ``vocab_ids < 0`` are ignored. ``first_cell``
    is the global index of row 0 (it keys the deterministic randomness). Each cell keeps at most
    ``max_genes`` expressed genes (binning uses all of them first, as the reference does).
    """
    X = X.tocsr()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    cols = X.indices
    vals = X.data.astype(np.float64)
    keep = (vals > 0) & (vocab_ids[cols] >= 0)
    rows, cols, vals = rows[keep], cols[keep], vals[keep] / divisors[cols[keep]]
    genes = vocab_ids[cols]
    cells = rows + first_cell
    n_rows = X.shape[0]

    # sort by (row, value) for per-row quantiles
    order = np.lexsort((vals, rows))
    rows, genes, vals, cells = rows[order], genes[order], vals[order], cells[order]
    lengths = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    bins = np.zeros(len(vals), dtype=np.float32)
    nonempty = lengths > 0
    if nonempty.any():
        edges = np.zeros((n_rows, n_bins - 1))
        edges[nonempty] = _quantile_edges(vals, starts[nonempty], lengths[nonempty], n_bins - 1)
        left = np.zeros(len(vals), dtype=np.int64)  # edges <= v  (np.digitize right=False)
        right = np.zeros(len(vals), dtype=np.int64)  # edges <  v  (np.digitize right=True)
        for k in range(n_bins - 1):
            e = edges[rows, k]
            left += e <= vals
            right += e < vals
        u = hash_uniform(seed, cells, genes, stream=0)
        bins = np.ceil(u * (right - left) + left).astype(np.float32)

    # deterministic subsampling: keep the max_genes genes with the smallest hash key per cell
    if (lengths > max_genes).any():
        key = hash_uniform(seed, cells, genes, stream=1)
        order = np.lexsort((key, rows))
        rank = np.arange(len(rows)) - starts[rows[order]]
        sel = np.sort(order[rank < max_genes])
        rows, genes, bins = rows[sel], genes[sel], bins[sel]
        lengths = np.minimum(lengths, max_genes)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedCells(genes.astype(np.int64), bins, offsets)


def length_buckets(lengths: np.ndarray, max_cells: int, max_tokens: int) -> list[np.ndarray]:
    """Group cells of similar length so padding is small: sort by length, then cut batches that
    hold at most ``max_cells`` cells and ``max_tokens`` padded tokens."""
    order = np.argsort(lengths, kind="stable")
    batches, cur, cur_max = [], [], 0
    for i in order:
        L = int(lengths[i])
        new_max = max(cur_max, L)
        if cur and (len(cur) + 1 > max_cells or new_max * (len(cur) + 1) > max_tokens):
            batches.append(np.asarray(cur))
            cur, new_max = [], L
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(np.asarray(cur))
    return batches


def pad_batch(tok: TokenizedCells, idx: np.ndarray, cls_id: int, pad_id: int, pad_value: float):
    """Dense (B, 1 + Lmax) gene ids, values and padding mask with ``<cls>`` first (value = pad_value)."""
    lengths = tok.lengths[idx]
    L = int(lengths.max()) + 1 if len(idx) else 1
    genes = np.full((len(idx), L), pad_id, dtype=np.int64)
    values = np.full((len(idx), L), pad_value, dtype=np.float32)
    genes[:, 0] = cls_id
    for r, i in enumerate(idx):
        a, b = tok.offsets[i], tok.offsets[i + 1]
        genes[r, 1 : 1 + b - a] = tok.genes[a:b]
        values[r, 1 : 1 + b - a] = tok.values[a:b]
    pad = np.arange(L)[None, :] > lengths[:, None]
    return genes, values, pad


# ---------------------------------------------------------------------------------------------
# quality control (Methods 4.1)

MIN_GENE_CELL_FRACTION = 0.0003  # genes expressed in fewer than 0.03% of a slide's cells are dropped


def quality_masks(slide: SlideStats, vocab_ids: np.ndarray, min_genes_per_cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-modality QC of the paper: (cells to keep, vars to keep).

    Genes: matched to the vocabulary and expressed in >= 0.03% of cells (at least one cell).
    Cells: at least ``min_genes_per_cell`` expressed kept genes (10 imaging, 50 sequencing; see
    :mod:`spgpt_core.pp.modality`). Cell counts use all matched genes, a close upper bound that
    avoids a second pass over the slide.
    """
    min_cells = max(1, int(np.ceil(MIN_GENE_CELL_FRACTION * slide.n_cells)))
    genes = (vocab_ids >= 0) & (slide.gene_nonzero_count >= min_cells)
    cells = slide.cell_n_expressed >= min_genes_per_cell
    return cells, genes
