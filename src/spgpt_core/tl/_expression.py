"""The expression values a mapping reads: what scale a dataset's X holds (raw counts, normalised linear
values, log1p), its values on a linear scale over chosen genes, read whole or streamed in chunks of rows,
and the log-normalised expression block of the features."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..io import iter_row_chunks
from ..params import MIN_SHARED_GENES
from ._genes import SharedGenes

#: Per-cell library size after normalisation of the training genes.
TARGET_SUM = 1e4


def counts_block(adata, idx: np.ndarray) -> sp.csr_matrix:
    """Rows x selected genes as float64 CSR (works for backed, sparse and dense AnnData)."""
    if adata.X is None:
        raise InputError("the data has no expression matrix (X is None); put the counts in X")
    X = adata[:, idx].to_memory().X if adata.isbacked else adata.X[:, idx]
    M = sp.csr_matrix(X, dtype=np.float64)
    if M.nnz and (not np.isfinite(M.data).all() or (M.data < 0).any()):
        raise InputError("the expression matrix has NaN, infinite or negative values; pass raw counts or "
                         "non-negative normalised values")
    return M


def row_totals(adata, scale: dict | None = None) -> np.ndarray:
    """Total counts per row over all genes, read chunk by chunk (on the linear scale: log1p undone)."""
    out = np.zeros(adata.n_obs, dtype=np.float64)
    for start, stop, X in iter_row_chunks(adata):
        if scale is not None and scale["scale"] == "log1p":
            X = X.copy()
            X.data = np.expm1(X.data)
        out[start:stop] = np.asarray(X.sum(axis=1)).ravel()
    return out


def log_normalise(counts: sp.csr_matrix, totals: np.ndarray | None = None) -> np.ndarray:
    """``log1p(counts / totals * 1e4)`` as dense float32; ``totals`` default to the row sums."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    if totals is None:
        totals = np.asarray(counts.sum(axis=1)).ravel()
    totals = np.asarray(totals, dtype=np.float64)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p((sp.diags(scale) @ counts).toarray()).astype(np.float32)


class StreamedBlock:
    """A slide's linear values (:func:`linear_block`) of selected genes, read ``chunk_size`` rows at a
    time from X (also when backed): the separable methods never hold the whole slide in memory."""

    def __init__(self, adata, idx: np.ndarray, scale: dict):
        self.adata, self.idx, self.scale = adata, np.asarray(idx, dtype=np.int64), scale
        self.shape = (adata.n_obs, len(self.idx))

    def columns(self, keep) -> "StreamedBlock":
        return StreamedBlock(self.adata, self.idx[keep], self.scale)

    def chunks(self, chunk_size: int):
        for start, stop, X in iter_row_chunks(self.adata, chunk_size):
            B = sp.csr_matrix(X[:, self.idx], dtype=np.float64)
            if B.nnz and (not np.isfinite(B.data).all() or (B.data < 0).any()):
                raise InputError("the expression matrix has NaN, infinite or negative values; pass raw counts or "
                                 "non-negative normalised values")
            if self.scale["scale"] == "log1p":
                B.data = np.expm1(B.data)
            yield start, stop, B

    def column_nnz(self, chunk_size: int) -> np.ndarray:
        out = np.zeros(len(self.idx), dtype=np.int64)
        for _, _, B in self.chunks(chunk_size):
            out += np.diff(B.tocsc().indptr)
        return out


def block_rows(spots, chunk_size: int):
    """(start, stop, rows) of a slide block ``chunk_size`` rows at a time: a :class:`StreamedBlock` reads
    them from X, a matrix is sliced."""
    if isinstance(spots, StreamedBlock):
        yield from spots.chunks(chunk_size)
        return
    spots = sp.csr_matrix(spots)
    n = spots.shape[0]
    for s in range(0, n, chunk_size):
        yield s, min(n, s + chunk_size), spots[s:min(n, s + chunk_size)]


def expressed_blocks(spatial, reference, genes: SharedGenes, what: str, scales: tuple[dict, dict] | None = None,
                     stream_slide: bool = False, chunk_size: int = 50_000):
    """Linear values (:func:`linear_block`) of ``genes`` in both datasets, keeping the genes expressed in
    both (Tangram needs non-zero columns). Returns (genes kept, slide block, reference block); the slide
    block is a :class:`StreamedBlock` with ``stream_slide``."""
    scales = scales or ({"scale": "counts"}, {"scale": "counts"})
    C_ref = linear_block(reference, genes.b_idx, scales[1])
    if stream_slide:
        C_sp = StreamedBlock(spatial, genes.a_idx, scales[0])
        sp_nnz = C_sp.column_nnz(chunk_size)
    else:
        C_sp = linear_block(spatial, genes.a_idx, scales[0])
        sp_nnz = np.asarray((C_sp > 0).sum(axis=0)).ravel()
    nonzero = (sp_nnz > 0) & (np.asarray((C_ref > 0).sum(axis=0)).ravel() > 0)
    if nonzero.sum() < MIN_SHARED_GENES:
        raise InputError(f"only {int(nonzero.sum())} {what} are expressed in both the slide and the reference; "
                         "check that both hold counts of the same genes")
    C_sp = C_sp.columns(nonzero) if stream_slide else C_sp[:, nonzero]
    return genes.subset(nonzero), C_sp, C_ref[:, nonzero]


# ------------------------------------------------------------------------------ input scale

#: Rows sampled to tell the scale of X (the first ones; enough to see hundreds of values per row).
_SCALE_ROWS = 500


def _integer_ratio_share(rows: list[np.ndarray]) -> float:
    """Median over rows of the share of a row's values that are whole multiples of its smallest value.

    Counts scaled per row by one factor (volume-normalised MERFISH, counts per 10,000) keep that
    structure: value = count x factor, and the smallest value is usually a count of 1. Rows with fewer
    than 3 distinct values say nothing and are skipped; ratios above 50 are left out (too coarse to test).
    """
    shares = []
    for v in rows:
        if len(np.unique(v)) < 3:
            continue
        q = v / v.min()
        q = q[q <= 50]
        shares.append(float(np.mean(np.abs(q - np.round(q)) < 0.02)))
    return float(np.median(shares)) if shares else float("nan")


def detect_scale(adata, what: str = "slide", declared: str = "auto", option: str = "--input-scale") -> dict:
    """What ``adata.X`` holds, so nothing already normalised is normalised again.

    Returns ``{"scale": "counts" | "normalised" | "log1p", "detected": bool, "reason": str}``:

    * ``counts``: >= 99% of the stored values are whole numbers (raw counts; also log1p of raw counts
      after ``expm1``, reported as ``log1p`` with ``"log1p_of": "counts"``).
    * ``normalised``: non-integer, linear values whose rows are whole multiples of one per-row factor
      (volume-normalised counts, counts per 10,000), or any non-integer values above 30 (no log1p of
      expression reaches that: log1p(1e6) = 13.8).
    * ``log1p``: ``expm1`` of the values has that structure (scanpy's normalize_total + log1p), or the
      values are non-integer below 30 and ``uns['log1p']`` is set.

    Anything else below 30 (e.g. rounded log values, or small normalised values without the integer
    structure) is ambiguous: an :class:`InputError` asks for ``option`` (log1p or normalised) or a counts
    layer. Negative values (centred / scaled data) are refused: mixing proportions need linear values.
    """
    if declared != "auto":
        return {"scale": declared, "detected": False, "reason": f"given ({option} {declared})"}
    X = adata.X
    if X is None:
        raise InputError(f"the {what} has no expression matrix (X is None); put the counts in X")
    block = X[: min(adata.n_obs, _SCALE_ROWS)]
    if hasattr(block, "to_memory"):
        block = block.to_memory()
    block = sp.csr_matrix(block, dtype=np.float64)
    vals = block.data[block.data != 0]
    if vals.size == 0:
        return {"scale": "counts", "detected": True, "reason": "no non-zero values in the first rows"}
    if not np.isfinite(vals).all() or (vals < 0).any():
        raise InputError(f"the {what}'s X has negative, NaN or infinite values (centred or scaled data?); mapping "
                         "needs non-negative values: pass raw counts (--counts-layer / --reference-counts-layer) or "
                         "non-negative normalised values")
    if float(np.mean(vals == np.round(vals))) > 0.99:
        return {"scale": "counts", "detected": True, "reason": "whole numbers (raw counts)"}
    rows = [block.data[block.indptr[i]:block.indptr[i + 1]] for i in range(block.shape[0])]
    rows = [r[r > 0] for r in rows if (r > 0).sum() >= 3]
    top = float(vals.max())
    linear = _integer_ratio_share(rows)
    logged = _integer_ratio_share([np.expm1(r) for r in rows])
    if linear > 0.9:  # checked first: at tiny values log1p is nearly linear and both tests pass
        return {"scale": "normalised", "detected": True,
                "reason": f"non-integer, each row a multiple of one factor ({linear:.0%} of values): scaled counts"}
    expm1 = np.expm1(vals)
    if float(np.mean(np.abs(expm1 - np.round(expm1)) < 1e-3)) > 0.99:
        return {"scale": "log1p", "log1p_of": "counts", "detected": True,
                "reason": "expm1 of the values are whole numbers: log1p of raw counts"}
    if logged > 0.9:
        return {"scale": "log1p", "detected": True,
                "reason": f"expm1 of each row is a multiple of one factor ({logged:.0%} of values): log1p of "
                          "normalised counts"}
    if top > 30:
        return {"scale": "normalised", "detected": True,
                "reason": f"non-integer values up to {top:.1f}: too large for log1p values, taken as linear"}
    if "log1p" in adata.uns:
        return {"scale": "log1p", "detected": True, "reason": "non-integer values below 30 and uns['log1p'] is set"}
    raise InputError(
        f"cannot tell how the {what}'s X is scaled: non-integer values up to {top:.2f} that are neither scaled "
        f"counts nor log1p of scaled counts. Say which: {option} log1p (log-normalised values) or {option} "
        "normalised (linear normalised values, e.g. volume-normalised), or give raw counts "
        "(--counts-layer / --reference-counts-layer)")


def linear_block(adata, idx: np.ndarray, scale: dict) -> sp.csr_matrix:
    """:func:`counts_block` on a linear scale: ``expm1`` undoes a detected log1p."""
    M = counts_block(adata, idx)
    if scale["scale"] == "log1p":
        M.data = np.expm1(M.data)
    return M


def scale_totals(block: sp.csr_matrix, scale: dict) -> np.ndarray:
    """Per-row divisors for :func:`log_normalise`.

    Counts: each row's own total (library-size normalisation, as always). Normalised or log1p values
    were normalised by their producer (per cell volume, per library): normalising each row again
    would replace that choice by ours, so every row gets the same divisor (the median row total),
    which only brings the values to the counts-per-10,000 range log1p is used at. log1p of raw counts
    (``expm1`` gives counts back) is normalised like counts."""
    totals = np.asarray(block.sum(axis=1)).ravel()
    if scale["scale"] == "counts" or scale.get("log1p_of") == "counts":
        return totals
    positive = totals[totals > 0]
    return np.full(len(totals), float(np.median(positive)) if positive.size else 1.0)


def log_expression(block: sp.csr_matrix, scale: dict) -> np.ndarray:
    """The expression block of the features: log1p of the linear values over :func:`scale_totals` x 1e4."""
    return log_normalise(block, scale_totals(block, scale))
