"""The mapping engine behind ``tl.deconvolve`` and ``tl.impute`` (paper Methods 4.4.1, 4.5).

Both map a reference (single cells, or their centroids) onto a slide with Tangram's optimiser
(``tangram-sc``) on *enriched features*: the log-normalised expression of shared genes with the
model's embeddings stacked beside it (Eq. 13). This module holds what the two share: matching gene
names across datasets, the expression blocks, the embedding block, the density prior and the
optimiser loop (cancellable, seeded). The two tasks' docstrings describe each pipeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from scipy.optimize import nnls
from sklearn.neighbors import NearestNeighbors
from torch.nn.functional import softmax

from ..checkpoint import load_model
from ..errors import InputError
from ..io import iter_row_chunks
from ..params import MIN_SHARED_GENES
from ..progress import Progress, ensure_progress
from ._embed import compute_embedding

log = logging.getLogger(__name__)

#: Per-cell library size after normalisation of the training genes.
TARGET_SUM = 1e4
#: Mappings with fewer multiply-adds per epoch (sources x spots x features) run single-threaded.
SMALL_MAPPING = 2e8


# ------------------------------------------------------------------------------------ genes


def _string_columns(var: pd.DataFrame) -> list[str]:
    cols = []
    for c in var.columns:
        col = var[c]
        values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col
        if pd.api.types.is_string_dtype(values.dtype) or (
            pd.api.types.is_object_dtype(values.dtype) and pd.api.types.infer_dtype(values, skipna=True) == "string"
        ):
            cols.append(c)
    return cols


def _name_sources(adata, gene_col: str | None, what: str) -> list[tuple[str, pd.Index]]:
    if gene_col is not None:
        if gene_col in ("index", "var_names"):
            return [("var_names", pd.Index(adata.var_names.astype(str)))]
        if gene_col not in adata.var.columns:
            raise InputError(
                f"gene column '{gene_col}' is not in the {what}'s var (columns: {list(adata.var.columns) or 'none'}); "
                "pass one of these, or 'index' for var_names"
            )
        return [(f"var['{gene_col}']", pd.Index(adata.var[gene_col].astype(str)))]
    return [("var_names", pd.Index(adata.var_names.astype(str)))] + [
        (f"var['{c}']", pd.Index(adata.var[c].astype(str))) for c in _string_columns(adata.var)
    ]


def _first_keys(names: pd.Index) -> dict[str, int]:
    """Upper-case name -> first var position (missing names skipped)."""
    out: dict[str, int] = {}
    for i, n in enumerate(names):
        k = str(n).strip().upper()
        if k and k not in ("NAN", "NONE") and k not in out:
            out[k] = i
    return out


@dataclass
class SharedGenes:
    """Positions of the genes two datasets share, in a common order."""

    a_idx: np.ndarray
    b_idx: np.ndarray
    names: pd.Index  # the second dataset's (reference's) names, original case
    a_source: str
    b_source: str
    a_all: pd.Index  # every var's name in the chosen source of each dataset
    b_all: pd.Index

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: np.ndarray) -> "SharedGenes":
        return SharedGenes(self.a_idx[keep], self.b_idx[keep], self.names[keep], self.a_source, self.b_source,
                           self.a_all, self.b_all)


def match_genes(a, b, gene_col_a: str | None = None, gene_col_b: str | None = None,
                what_a: str = "slide", what_b: str = "reference") -> SharedGenes:
    """Genes shared by ``a`` and ``b``, matched case-insensitively over the best pair of name sources."""
    best = None
    for sa, na in _name_sources(a, gene_col_a, what_a):
        ka = _first_keys(na)
        for sb, nb in _name_sources(b, gene_col_b, what_b):
            kb = _first_keys(nb)
            shared = [k for k in kb if k in ka]  # reference order
            if best is None or len(shared) > len(best[0]):
                best = (shared, ka, kb, sa, sb, na, nb)
    shared, ka, kb, sa, sb, na, nb = best
    return SharedGenes(np.array([ka[k] for k in shared], dtype=np.int64), np.array([kb[k] for k in shared], dtype=np.int64),
                       pd.Index([nb[kb[k]] for k in shared]), sa, sb, na, nb)


def lookup_sources(adata, gene_col: str | None, what: str) -> list[tuple[str, pd.Index]]:
    """Name sources to look requested genes up in: ``gene_col``'s first (when given), then var_names and
    every text var column. A name is found in whichever source has it, so genes given as var_names
    (e.g. DLPFC's Ensembl ids) are found while ``--gene-col gene_symbol`` matches the datasets."""
    first = _name_sources(adata, gene_col, what) if gene_col is not None else []
    seen = {name for name, _ in first}
    return first + [(n, src) for n, src in _name_sources(adata, None, what) if n not in seen]


def gene_positions(adata, names, gene_col: str | None = None, what: str = "slide") -> np.ndarray:
    """Var positions of ``names`` (case-insensitive), each looked up in :func:`lookup_sources` order."""
    names = [str(g) for g in names]
    keys = [_first_keys(src) for _, src in lookup_sources(adata, gene_col, what)]
    out, missing = [], []
    for g in names:
        k = g.strip().upper()
        hit = next((kk[k] for kk in keys if k in kk), None)
        (missing if hit is None else out).append(g if hit is None else hit)
    if missing:
        raise InputError(f"{len(missing)} gene(s) are not in the {what}: {', '.join(missing[:10])}; "
                         "check the gene names (compared case-insensitively with var_names and every text var column)")
    return np.array(out, dtype=np.int64)


def no_shared_genes_error(a, b, what_a="slide", what_b="reference") -> InputError:
    ex_a = ", ".join(map(str, a.var_names[:5]))
    ex_b = ", ".join(map(str, b.var_names[:5]))
    return InputError(
        f"the {what_a} and the {what_b} share fewer than {MIN_SHARED_GENES} genes (compared case-insensitively over "
        f"var_names and every text var column; {what_a} genes e.g. {ex_a}; {what_b} genes e.g. {ex_b}). Use a "
        f"{what_b} of the same species and gene naming, or pass --gene-col / --reference-gene-col naming the var "
        "columns that hold comparable gene symbols"
    )


# ------------------------------------------------------------------------------- matrices


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


def select_hvg(ref_log: np.ndarray, n_top: int) -> np.ndarray:
    """Positions of the ``n_top`` most variable columns of log-normalised data (scanpy, seurat flavour)."""
    if ref_log.shape[1] <= n_top:
        return np.arange(ref_log.shape[1])
    a = ad.AnnData(ref_log.astype(np.float32))
    sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
    hv = np.flatnonzero(a.var["highly_variable"].to_numpy())
    if len(hv) < n_top:  # ties / bins can give a few less; fill with the most dispersed
        order = np.argsort(-a.var["dispersions_norm"].fillna(-np.inf).to_numpy(), kind="stable")
        rest = order[~np.isin(order, hv)]  # keeps the dispersion order
        hv = np.sort(np.concatenate([hv, rest[: n_top - len(hv)]]))
    return hv[:n_top]


def scale_embedding_block(emb: np.ndarray, expr: np.ndarray, weight: float | None) -> np.ndarray:
    """The embedding block stacked beside ``expr``. ``weight=None``: the embeddings as given (the
    paper). A number: each dimension centred within the dataset, then the block scaled to ``weight``
    x the expression block's Frobenius norm. Rows without an embedding (NaN) become zeros."""
    emb = np.asarray(emb, dtype=np.float64)
    ok = np.isfinite(emb).all(axis=1)
    out = np.zeros_like(emb)
    if weight is None:
        out[ok] = emb[ok]
    elif ok.sum() >= 2:
        centred = emb[ok] - emb[ok].mean(axis=0)
        norm = np.linalg.norm(centred)
        target = weight * np.linalg.norm(expr[ok].astype(np.float64))
        if norm > 0:
            out[ok] = centred * (target / norm)
    return out.astype(np.float32)


# -------------------------------------------------------------------------------- mapping


def rna_density(counts_total: np.ndarray) -> np.ndarray:
    """Tangram's ``rna_count_based`` density prior: each spot's share of all counts."""
    t = np.asarray(counts_total, dtype=np.float64)
    if t.sum() <= 0:
        raise InputError("the spots have no counts at all; check the slide's expression matrix")
    t = np.maximum(t, 0)
    return t / t.sum()


def density(spatial, prior: str, scale: dict | None = None) -> np.ndarray | None:
    """The target density over the slide's rows for ``prior`` (None: no density term)."""
    if prior == "rna_count_based":
        return rna_density(row_totals(spatial, scale))
    if prior == "uniform":
        return np.full(spatial.n_obs, 1.0 / spatial.n_obs)
    return None


def run_tangram(S: np.ndarray, G: np.ndarray, *, d: np.ndarray | None = None, d_source: np.ndarray | None = None,
                lambda_g1: float = 1.0, lambda_d: float = 1.0, lambda_g2: float = 0.0, lambda_r: float = 0.0,
                num_epochs: int = 1000, learning_rate: float = 0.1, seed: int = 0, device: str = "cpu",
                init: np.ndarray | None = None, progress: Progress | None = None,
                desc: str = "mapping") -> tuple[np.ndarray, dict]:
    """Tangram's optimizer (``tangram.mapping_optimizer.Mapper``) on feature matrices S (sources x
    features) and G (spots x features); returns the softmax mapping (sources x spots) and a summary.

    The initial logits are N(0, 1) from ``numpy.random.default_rng(seed)`` (reproducible for any
    seed, including 0, which Tangram itself would leave unseeded), or ``init`` when given. The epoch
    loop performs the same Adam updates as ``Mapper.train`` but calls ``progress.check()`` in between,
    so it can be cancelled.
    """
    if num_epochs < 1:
        raise InputError(f"num_epochs={num_epochs}: the mapping needs at least 1 epoch")
    try:  # tangram-sc is an optional extra: imported here so the rest of spgpt works without it
        from tangram.mapping_optimizer import Mapper
    except ImportError:
        raise InputError('the mapping needs tangram-sc: pip install "spgpt[tangram]"') from None
    progress = ensure_progress(progress)
    t0 = time.time()
    mapper = Mapper(S=np.asarray(S, np.float32), G=np.asarray(G, np.float32), d=d, d_source=d_source,
                    lambda_g1=lambda_g1, lambda_d=lambda_d if d is not None else 0, lambda_g2=lambda_g2,
                    lambda_r=lambda_r, device=device, random_state=None)
    if init is None:
        init = np.random.default_rng(seed).normal(0.0, 1.0, (S.shape[0], G.shape[0]))
    mapper.M = torch.tensor(init, device=device, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([mapper.M], lr=learning_rate)
    step = max(1, num_epochs // 50)
    progress.start(num_epochs, desc)
    threads = torch.get_num_threads()
    if device == "cpu" and S.shape[0] * G.shape[0] * S.shape[1] < SMALL_MAPPING:
        torch.set_num_threads(1)  # small problems: thread hand-offs cost more than they save (10x on busy CPUs)
    try:
        for t in range(num_epochs):
            loss = mapper._loss_fn(verbose=False)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (t + 1) % step == 0 or t + 1 == num_epochs:
                progress.update(step if (t + 1) % step == 0 else (t + 1) % step)
                progress.check()
        with torch.no_grad():
            M = softmax(mapper.M, dim=1).cpu().numpy()
            final = float(loss.detach().cpu())
    finally:
        torch.set_num_threads(threads)
        progress.close()
    return M, {"final_loss": final, "mapping_seconds": round(time.time() - t0, 3), "num_epochs": int(num_epochs),
               "learning_rate": float(learning_rate), "lambda_g1": lambda_g1, "lambda_d": lambda_d if d is not None else 0,
               "lambda_g2": lambda_g2, "lambda_r": lambda_r}


def column_cosine(pred: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Cosine similarity per column (Tangram's per-gene training score)."""
    num = (pred * obs).sum(axis=0)
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(obs, axis=0)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


# --------------------------------------------------------------------------- embeddings


def embed_rows(adata, idx_genes: np.ndarray, model, *, rep: str | None, what: str, seed: int, batch_size: int,
               progress: Progress | None, max_seq_len: int | None = None) -> np.ndarray:
    """Embeddings of ``adata``'s rows: ``obsm[rep]`` if given, else the model on the selected genes only."""
    if rep is not None:
        if rep not in adata.obsm:
            raise InputError(f"obsm['{rep}'] is not in the {what} (have: {list(adata.obsm) or 'none'}); embed it "
                             "first (`spgpt embed`) or drop the option to let the model embed it")
        emb = np.asarray(adata.obsm[rep], dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
            raise InputError(f"obsm['{rep}'] of the {what} has shape {emb.shape}; expected one row per cell/spot")
        return emb
    sub = adata[:, idx_genes]
    sub = sub.to_memory() if sub.isbacked else sub.copy()
    emb, prep = compute_embedding(sub, model, empty="drop", seed=seed, batch_size=batch_size, max_seq_len=max_seq_len,
                                  progress=progress)
    log.info("%s embedding: %s", what, prep.match.report())
    return emb


def enriched_features(spatial, reference, train: SharedGenes, E_sp: np.ndarray, E_ref: np.ndarray, model, *,
                      spatial_rep: str | None, reference_rep: str | None, embedding_weight: float | None, seed: int,
                      batch_size: int, max_seq_len: int | None = None, device=None, progress: Progress | None = None):
    """The enriched feature matrices H'_s, H'_c of Eq. 13: expression blocks with the scaled embeddings beside.

    Embeddings come from ``obsm`` when both reps are named, else from ``model`` (loaded once) on the
    training genes. Returns (G, S, reference embeddings, model description or None, seconds)."""
    t = time.time()
    mdl, model_info = None, None
    if spatial_rep is None or reference_rep is None:
        mdl = load_model(model, device=device)
        model_info = mdl.describe()
    H_sp = embed_rows(spatial, train.a_idx, mdl, rep=spatial_rep, what="slide", seed=seed, batch_size=batch_size,
                      max_seq_len=max_seq_len, progress=progress)
    H_ref = embed_rows(reference, train.b_idx, mdl, rep=reference_rep, what="reference", seed=seed,
                       batch_size=batch_size, max_seq_len=max_seq_len, progress=progress)
    if H_sp.shape[1] != H_ref.shape[1]:
        raise InputError(f"slide and reference embeddings differ in width ({H_sp.shape[1]} vs {H_ref.shape[1]}); "
                         "embed both with the same model")
    G = np.hstack([E_sp, scale_embedding_block(H_sp, E_sp, embedding_weight)])
    S = np.hstack([E_ref, scale_embedding_block(H_ref, E_ref, embedding_weight)])
    return G, S, H_ref, model_info, round(time.time() - t, 3)


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


# ------------------------------------------------------------------------------------ methods


@dataclass
class MethodChoice:
    method: str
    requested: str
    reason: str


def choose_method(requested: str, verb: str, n_spots: int, n_reference_cells: int) -> MethodChoice:
    """The mapping method to run, decided before any embedding or mapping (so a refusal comes early).

    ``auto``: the method the dev benchmark chose for ``verb`` (params.AUTO_METHOD), or its separable
    choice (AUTO_SEPARABLE_METHOD) from AUTO_SEPARABLE_FROM_SPOTS spots, or when cells mode would
    exceed MAX_CELLS_MODE_PAIRS. An explicit ``tangram_cells`` above that bound is refused."""
    # read at call time, so a session (or a test) that sets the limits in spgpt_core.params is obeyed
    from ..params import AUTO_METHOD, AUTO_SEPARABLE_FROM_SPOTS, AUTO_SEPARABLE_METHOD, MAX_CELLS_MODE_PAIRS

    pairs = int(n_spots) * int(n_reference_cells)
    separable = AUTO_SEPARABLE_METHOD[verb]
    if requested == "tangram_cells" and pairs > MAX_CELLS_MODE_PAIRS:
        raise InputError(
            f"--method tangram_cells maps every reference cell to every spot: {n_reference_cells:,} cells x "
            f"{n_spots:,} spots = {pairs:,} entries, above the {MAX_CELLS_MODE_PAIRS:,} this mode is allowed "
            f"(memory ~24 bytes and time per entry). Use --method {separable} or --method tangram_clusters "
            "(separable by spot, run in chunks), or a smaller reference (--max-cells-per-type)")
    if requested != "auto":
        return MethodChoice(requested, requested, "given")
    small = AUTO_METHOD[verb]
    if n_spots >= AUTO_SEPARABLE_FROM_SPOTS:
        return MethodChoice(separable, "auto", f"{n_spots:,} spots >= {AUTO_SEPARABLE_FROM_SPOTS:,}: a method "
                            "separable by spot, in chunks")
    if small == "tangram_cells" and pairs > MAX_CELLS_MODE_PAIRS:
        return MethodChoice(separable, "auto", f"cells mode would need {pairs:,} > {MAX_CELLS_MODE_PAIRS:,} "
                            "reference x spot entries")
    return MethodChoice(small, "auto", "the dev benchmark's choice for this size")


def spot_chunks(n: int, chunk_size: int, seed: int) -> list[np.ndarray]:
    """Spot positions in chunks of at most ``chunk_size``; one chunk (in order) when all fit.

    Several chunks are a seeded random partition, not contiguous blocks: Tangram's cluster-mode
    objective (gene-wise cosine over spots, class-size and density terms) on a random share of the
    spots estimates the same thing as on all of them, while a contiguous block (one tissue region)
    would be asked to hold the reference's whole class composition."""
    if n <= chunk_size:
        return [np.arange(n)]
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(c) for c in np.array_split(perm, int(np.ceil(n / chunk_size)))]


def gene_weights(profiles: np.ndarray) -> np.ndarray:
    """1 / (each gene's mean over the class profiles): every gene weighs alike in the NNLS fit.

    Scaling a gene in both the spot and the profiles keeps the mixture linear; without it the
    fit is decided by the few most expressed genes."""
    m = np.asarray(profiles, dtype=np.float64).mean(axis=0)
    return np.divide(1.0, m, out=np.zeros_like(m), where=m > 0)


def nnls_weights(spots, profiles: np.ndarray, *, chunk_size: int, progress: Progress | None = None,
                 desc: str = "NNLS") -> np.ndarray:
    """Non-negative weights W (spots x K) with spot ~ W @ profiles, one ``scipy.optimize.nnls`` per spot.

    ``spots`` (spots x genes: a sparse matrix or a :class:`StreamedBlock`) and ``profiles`` (K x genes)
    on a linear scale; genes weighted by :func:`gene_weights`. Each spot is independent: rows are read
    and densified ``chunk_size`` at a time, so memory is set by the chunk, and progress / cancellation
    are checked per chunk."""

    progress = ensure_progress(progress)
    w = gene_weights(profiles)
    A = (np.asarray(profiles, dtype=np.float64) * w[None, :]).T  # genes x K
    n = spots.shape[0]
    if isinstance(spots, StreamedBlock):
        chunks = spots.chunks(chunk_size)
    else:
        spots = sp.csr_matrix(spots)
        chunks = ((s, min(n, s + chunk_size), spots[s:min(n, s + chunk_size)]) for s in range(0, n, chunk_size))
    out = np.zeros((n, A.shape[1]), dtype=np.float64)
    progress.start(n, desc)
    try:
        for start, stop, block in chunks:
            Y = block.toarray() * w[None, :]
            for i in range(stop - start):
                if Y[i].any():
                    out[start + i] = nnls(A, Y[i], maxiter=50 * A.shape[1])[0]
            progress.update(stop - start)
            progress.check()
    finally:
        progress.close()
    return out


def tangram_chunked(S: np.ndarray, G: np.ndarray, *, d: np.ndarray | None, d_source: np.ndarray | None,
                    chunk_size: int, seed: int, progress: Progress | None = None, desc: str = "mapping",
                    **kw) -> tuple[np.ndarray, dict]:
    """:func:`run_tangram` on random chunks of spots (:func:`spot_chunks`), each with the density prior
    renormalised within it; the mapping's columns are put back in spot order. Sources x spots."""
    chunks = spot_chunks(G.shape[0], chunk_size, seed)
    M = np.zeros((S.shape[0], G.shape[0]), dtype=np.float32)
    info: dict = {}
    losses = []
    t0 = time.time()
    for i, idx in enumerate(chunks):
        dc = None
        if d is not None:
            dc = d[idx] / d[idx].sum()
        label = desc if len(chunks) == 1 else f"{desc} (chunk {i + 1}/{len(chunks)})"
        M[:, idx], info = run_tangram(S, G[idx], d=dc, d_source=d_source, seed=seed + i, progress=progress,
                                      desc=label, **kw)
        losses.append(info["final_loss"])
    info = {**info, "final_loss": float(np.mean(losses)), "mapping_seconds": round(time.time() - t0, 3),
            "n_chunks": len(chunks)}
    return M, info


def knn_average(query: np.ndarray, reference: np.ndarray, values: np.ndarray, *, k: int, chunk_size: int,
                progress: Progress | None = None, desc: str = "kNN imputation") -> np.ndarray:
    """Mean of ``values`` over each query row's ``k`` nearest ``reference`` rows by cosine similarity
    (rows L2-normalised, so Euclidean order = cosine order), queried ``chunk_size`` rows at a time."""

    def unit(X):
        X = np.asarray(X, dtype=np.float32)
        n = np.linalg.norm(X, axis=1, keepdims=True)
        return np.divide(X, n, out=np.zeros_like(X), where=n > 0)

    k = min(k, reference.shape[0])
    nn = NearestNeighbors(n_neighbors=k).fit(unit(reference))
    progress = ensure_progress(progress)
    out = np.zeros((query.shape[0], values.shape[1]), dtype=np.float32)
    progress.start(query.shape[0], desc)
    try:
        for start in range(0, query.shape[0], chunk_size):
            stop = min(query.shape[0], start + chunk_size)
            idx = nn.kneighbors(unit(query[start:stop]), return_distance=False)
            out[start:stop] = values[idx].mean(axis=1)
            progress.update(stop - start)
            progress.check()
    finally:
        progress.close()
    return out
