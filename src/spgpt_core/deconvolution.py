"""Cell-type deconvolution of spots (paper Methods 4.4.1), with ``tangram-sc`` doing the mapping.

Pipeline (every choice below is fixed and documented; none is tuned on benchmark labels):

1. **Reference**: cells without a cell-type label are dropped; each type is subsampled to at most
   ``max_cells_per_type`` cells (default 1000, seeded). At least two types are required.
2. **Genes**: genes shared by slide and reference are matched by name, case-insensitively, over
   the pair of gene-name sources (``var_names`` or a string ``var`` column, e.g. ``gene_symbol``)
   that shares the most genes (or the ``gene_col`` / ``reference_gene_col`` given). Genes with no
   count in either dataset are dropped (Tangram needs non-zero columns). Of these, the
   ``n_top_genes`` (default 1000) most variable genes of the reference (scanpy, ``flavor="seurat"``
   on log-normalised counts) are the *training genes*; with fewer shared genes, all are used.
3. **Expression block** (slide and reference alike): counts over the training genes scaled to
   10,000 per cell / spot, then ``log1p``.
4. **Embedding block** (``use_embeddings=True``): the model's spot / cell embeddings, computed on
   the training genes only (so both datasets are embedded from the same genes), or taken from
   ``obsm`` when ``spatial_rep`` / ``reference_rep`` name precomputed ones. By default
   (``embedding_weight=None``) they are stacked beside the expression block exactly as the model
   returns them (L2-normalised ``<cls>`` states), as the paper describes H'_s, H'_c (Eq. 13: "we
   stack the embedding matrices ... onto their respective gene expression profile matrices").
   Each embedding dimension is then one more column in Tangram's gene-wise cosine term, while the
   spot-wise term stays dominated by expression, whose rows have the larger norm.
   A number instead centres each dimension within its dataset and scales the block to
   ``embedding_weight`` times the expression block's Frobenius norm, which gives the embeddings
   a fixed share of the spot-wise term (an addition of ours, not the paper's: with the small
   CPU-trained model it scores lower macro-F1 than plain Tangram, so the default follows the paper;
   both are in bench/results/tasks.md).
5. **Mapping**: ``tangram.mapping_optimizer.Mapper`` in cells mode with the objective of the
   paper's Eq. 15: gene-wise (column) cosine ``lambda_g1=1`` *and* spot-wise (row) cosine
   ``lambda_g2=1`` (Tangram's own default leaves the latter out, ``lambda_g2=0``), plus Tangram's
   density KL term (``lambda_d=1``) against the spots' RNA-count-based prior, computed from raw
   counts over all genes (never from the embedding block). Adam, 1000 epochs, learning rate 0.1.
   The loop runs epoch by epoch here (same updates as ``Mapper.train``) so long mappings report
   progress and can be cancelled.
6. **Annotation transfer**: A = M^T A_c (Eq. 16) with A_c the one-hot cell types, normalised per
   spot to proportions; the dominant type is the arg-max.

With ``use_embeddings=False`` and ``lambda_g2=0`` the same code is plain Tangram on expression
(``tangram.map_cells_to_space`` in cells mode gives the same mapping from the same start; a test
checks it), so any difference to the baseline comes from the features and the objective, which
the benchmark separates with ablations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import InputError
from .progress import Progress, ensure_progress

log = logging.getLogger(__name__)

#: Per-cell library size after normalisation of the training genes.
TARGET_SUM = 1e4
#: Fewer shared genes than this is an error: no mapping can be trusted on so few.
MIN_SHARED_GENES = 5
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


def gene_positions(adata, names, gene_col: str | None = None, what: str = "slide") -> np.ndarray:
    """Var positions of ``names`` (case-insensitive) in the name source of ``adata`` that has most of them."""
    names = [str(g) for g in names]
    best = None
    for _, src in _name_sources(adata, gene_col, what):
        keys = _first_keys(src)
        hits = sum(g.strip().upper() in keys for g in names)
        if best is None or hits > best[0]:
            best = (hits, keys)
    keys = best[1]
    missing = [g for g in names if g.strip().upper() not in keys]
    if missing:
        raise InputError(f"{len(missing)} gene(s) are not in the {what}: {', '.join(missing[:10])}; "
                         "check the gene names (compared case-insensitively)")
    return np.array([keys[g.strip().upper()] for g in names], dtype=np.int64)


def _no_shared_genes_error(a, b, what_a="slide", what_b="reference") -> InputError:
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


def row_totals(adata) -> np.ndarray:
    """Total counts per row over all genes, read chunk by chunk."""
    from .io import iter_row_chunks

    out = np.zeros(adata.n_obs, dtype=np.float64)
    for start, stop, X in iter_row_chunks(adata):
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
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(ref_log.astype(np.float32))
    sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
    hv = np.flatnonzero(a.var["highly_variable"].to_numpy())
    if len(hv) < n_top:  # ties / bins can give a few less; fill with the most dispersed
        order = np.argsort(-a.var["dispersions_norm"].fillna(-np.inf).to_numpy(), kind="stable")
        rest = order[~np.isin(order, hv)]  # keeps the dispersion order
        hv = np.sort(np.concatenate([hv, rest[: n_top - len(hv)]]))
    return hv[:n_top]


def embedding_block_label(use_embeddings: bool, weight: float | None) -> str:
    """How the embeddings entered the features, for the run record."""
    if not use_embeddings:
        return "none"
    return "as returned (paper)" if weight is None else "centred and scaled"


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


DENSITY_PRIORS = ("rna_count_based", "uniform", "none")


def check_mapping_args(embedding_weight: float | None, num_epochs: int, density_prior: str) -> None:
    """Input checks shared by deconvolution and imputation (both map with the same optimiser)."""
    if embedding_weight is not None and embedding_weight < 0:
        raise InputError(f"embedding_weight={embedding_weight} must be >= 0")
    if num_epochs < 1:
        raise InputError(f"num_epochs={num_epochs}: the mapping needs at least 1 epoch")
    if density_prior not in DENSITY_PRIORS:
        raise InputError(f"density_prior={density_prior!r}: use 'rna_count_based', 'uniform' or 'none'")


def rna_density(counts_total: np.ndarray) -> np.ndarray:
    """Tangram's ``rna_count_based`` density prior: each spot's share of all counts."""
    t = np.asarray(counts_total, dtype=np.float64)
    if t.sum() <= 0:
        raise InputError("the spots have no counts at all; check the slide's expression matrix")
    t = np.maximum(t, 0)
    return t / t.sum()


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
    import torch
    from tangram.mapping_optimizer import Mapper
    from torch.nn.functional import softmax

    if num_epochs < 1:
        raise InputError(f"num_epochs={num_epochs}: the mapping needs at least 1 epoch")
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
               progress: Progress | None) -> np.ndarray:
    """Embeddings of ``adata``'s rows: ``obsm[rep]`` if given, else the model on the selected genes only."""
    if rep is not None:
        if rep not in adata.obsm:
            raise InputError(f"obsm['{rep}'] is not in the {what} (have: {list(adata.obsm) or 'none'}); embed it "
                             "first (`spgpt embed`) or drop the option to let the model embed it")
        emb = np.asarray(adata.obsm[rep], dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
            raise InputError(f"obsm['{rep}'] of the {what} has shape {emb.shape}; expected one row per cell/spot")
        return emb
    from .embed import embed

    sub = adata[:, idx_genes]
    sub = sub.to_memory() if sub.isbacked else sub.copy()
    emb, prep = embed(sub, model, empty="drop", seed=seed, batch_size=batch_size, progress=progress)
    log.info("%s embedding: %s", what, prep.match.report())
    return emb


# ------------------------------------------------------------------------------ the task


@dataclass
class DeconvolutionResult:
    proportions: pd.DataFrame  # spots x cell types, rows sum to 1
    dominant: pd.Series  # categorical, one per spot
    mapping: np.ndarray | None  # reference cells x spots (softmax), when keep_mapping
    info: dict = field(default_factory=dict)


def enriched_features(spatial, reference, train: SharedGenes, E_sp: np.ndarray, E_ref: np.ndarray, model, *,
                      spatial_rep: str | None, reference_rep: str | None, embedding_weight: float | None, seed: int,
                      batch_size: int, device=None, progress: Progress | None = None):
    """The enriched feature matrices H'_s, H'_c of Eq. 13: expression blocks with the scaled embeddings beside.

    Embeddings come from ``obsm`` when both reps are named, else from ``model`` (loaded once) on the
    training genes. Returns (G, S, reference embeddings, model description or None, seconds)."""
    t = time.time()
    mdl, model_info = None, None
    if spatial_rep is None or reference_rep is None:
        from .pretrained import load_model

        mdl = load_model(model, device=device)
        model_info = mdl.describe()
    H_sp = embed_rows(spatial, train.a_idx, mdl, rep=spatial_rep, what="slide", seed=seed, batch_size=batch_size,
                      progress=progress)
    H_ref = embed_rows(reference, train.b_idx, mdl, rep=reference_rep, what="reference", seed=seed,
                       batch_size=batch_size, progress=progress)
    if H_sp.shape[1] != H_ref.shape[1]:
        raise InputError(f"slide and reference embeddings differ in width ({H_sp.shape[1]} vs {H_ref.shape[1]}); "
                         "embed both with the same model")
    G = np.hstack([E_sp, scale_embedding_block(H_sp, E_sp, embedding_weight)])
    S = np.hstack([E_ref, scale_embedding_block(H_ref, E_ref, embedding_weight)])
    return G, S, H_ref, model_info, round(time.time() - t, 3)


def _reference_labels(reference, celltype_key: str) -> pd.Series:
    if celltype_key not in reference.obs.columns:
        raise InputError(
            f"the reference has no obs column '{celltype_key}' (columns: {list(reference.obs.columns) or 'none'}); "
            "pass --celltype-key naming the column that holds each cell's type"
        )
    from .metrics import valid_label_mask

    lab = reference.obs[celltype_key]
    ok = valid_label_mask(lab.to_numpy())
    lab = lab.astype(object).where(ok)
    types = pd.unique(lab[ok].astype(str))
    if len(types) < 2:
        raise InputError(
            f"the reference has {len(types)} cell type(s) in obs['{celltype_key}'] ({', '.join(types) or 'none'}); "
            "deconvolution needs at least 2 types to tell apart. Use a reference annotated with several cell types"
        )
    return lab


def subsample_per_type(labels: pd.Series, max_per_type: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_per_type`` labelled cells per type (all when None)."""
    rng = np.random.default_rng(seed)
    keep = []
    valid = labels.notna().to_numpy()
    lab = labels.astype(str).to_numpy()
    for t in sorted(set(lab[valid])):
        idx = np.flatnonzero(valid & (lab == t))
        if max_per_type is not None and len(idx) > max_per_type:
            idx = rng.choice(idx, max_per_type, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def deconvolve(spatial, reference, *, celltype_key: str, model="default", use_embeddings: bool = True,
               spatial_rep: str | None = None, reference_rep: str | None = None, gene_col: str | None = None,
               reference_gene_col: str | None = None, max_cells_per_type: int | None = 1000, n_top_genes: int = 1000,
               embedding_weight: float | None = None, num_epochs: int = 1000, learning_rate: float = 0.1,
               lambda_g2: float = 1.0, density_prior: str = "rna_count_based", seed: int = 0, device: str | None = None,
               batch_size: int = 64, keep_mapping: bool = False,
               progress: Progress | None = None) -> DeconvolutionResult:
    """Cell-type proportions of every spot of ``spatial`` from a labelled single-cell ``reference``.

    ``model`` is an :class:`~spgpt_core.SpGPT` or anything :func:`~spgpt_core.load_model` takes; it is
    not loaded when ``use_embeddings=False`` or when both ``*_rep`` embeddings are given. See the module
    docstring for every step. Returns a :class:`DeconvolutionResult`.
    """
    if max_cells_per_type is not None and max_cells_per_type < 1:
        raise InputError(f"max_cells_per_type={max_cells_per_type}: pass a positive number (or None for all cells)")
    if n_top_genes < MIN_SHARED_GENES:
        raise InputError(f"n_top_genes={n_top_genes}: use at least {MIN_SHARED_GENES} genes")
    check_mapping_args(embedding_weight, num_epochs, density_prior)
    if spatial.n_obs < 2:
        raise InputError(f"the slide has {spatial.n_obs} spot(s); deconvolution needs at least 2")
    from .device import choose_device

    device = str(choose_device(device, model if use_embeddings else None))
    timings: dict[str, float] = {}
    t_all = time.time()

    labels = _reference_labels(reference, celltype_key)
    keep = subsample_per_type(labels, max_cells_per_type, seed)
    ref = reference[keep]
    ref_labels = labels.iloc[keep].astype(str)

    shared = match_genes(spatial, ref, gene_col, reference_gene_col)
    if len(shared) < MIN_SHARED_GENES:
        raise _no_shared_genes_error(spatial, ref)
    C_sp = counts_block(spatial, shared.a_idx)
    C_ref = counts_block(ref, shared.b_idx)
    nonzero = (np.asarray((C_sp > 0).sum(axis=0)).ravel() > 0) & (np.asarray((C_ref > 0).sum(axis=0)).ravel() > 0)
    if nonzero.sum() < MIN_SHARED_GENES:
        raise InputError(f"only {int(nonzero.sum())} shared genes are expressed in both the slide and the reference; "
                         "check that both hold counts of the same genes")
    shared, C_sp, C_ref = shared.subset(nonzero), C_sp[:, nonzero], C_ref[:, nonzero]
    if (np.asarray(C_ref.sum(axis=1)).ravel() <= 0).any():
        n_bad = int((np.asarray(C_ref.sum(axis=1)).ravel() <= 0).sum())
        log.warning("%d reference cells have no counts on the shared genes; they carry no signal for the mapping",
                    n_bad)
    t = time.time()
    hv = select_hvg(log_normalise(C_ref), n_top_genes)
    timings["genes_seconds"] = round(time.time() - t, 3)
    train = shared.subset(hv)
    E_sp = log_normalise(C_sp[:, hv])
    E_ref = log_normalise(C_ref[:, hv])
    sp_total = row_totals(spatial) if density_prior == "rna_count_based" else None

    model_info = None
    if use_embeddings:
        G, S, _, model_info, timings["embedding_seconds"] = enriched_features(
            spatial, ref, train, E_sp, E_ref, model, spatial_rep=spatial_rep, reference_rep=reference_rep,
            embedding_weight=embedding_weight, seed=seed, batch_size=batch_size, device=device, progress=progress)
    else:
        G, S = E_sp, E_ref

    d = None
    if density_prior == "rna_count_based":
        d = rna_density(sp_total)
    elif density_prior == "uniform":
        d = np.full(spatial.n_obs, 1.0 / spatial.n_obs)
    M, map_info = run_tangram(S, G, d=d, lambda_g2=lambda_g2, num_epochs=num_epochs, learning_rate=learning_rate,
                              seed=seed, device=device, progress=progress, desc="deconvolution mapping")
    types = sorted(set(ref_labels))
    onehot = (ref_labels.to_numpy()[:, None] == np.array(types)[None, :]).astype(np.float64)
    A = M.T.astype(np.float64) @ onehot
    A = A / A.sum(axis=1, keepdims=True)
    props = pd.DataFrame(A, index=pd.Index(spatial.obs_names.astype(str)), columns=pd.Index(types))
    dominant = pd.Series(pd.Categorical(np.array(types)[A.argmax(axis=1)], categories=types), index=props.index)

    score = column_cosine(M.T @ E_ref, E_sp)
    timings["total_seconds"] = round(time.time() - t_all, 3)
    info = {
        "celltype_key": celltype_key, "use_embeddings": use_embeddings, "spatial_rep": spatial_rep,
        "reference_rep": reference_rep, "max_cells_per_type": max_cells_per_type, "n_top_genes": n_top_genes,
        "embedding_weight": embedding_weight if use_embeddings else 0.0,
        "embedding_block": embedding_block_label(use_embeddings, embedding_weight), "density_prior": density_prior, "seed": seed,
        "n_spots": int(spatial.n_obs), "n_reference_cells": int(len(keep)), "n_shared_genes": int(len(shared)),
        "n_training_genes": int(len(train)), "gene_sources": [train.a_source, train.b_source],
        "n_embedding_dims": int(G.shape[1] - E_sp.shape[1]),
        # two parallel lists, not a dict: cell-type names may contain '/' (e.g. "L2/3 IT")
        "reference_types": list(types),
        "reference_cells_per_type": [int((ref_labels == t_).sum()) for t_ in types],
        "train_score_mean": float(np.nanmean(score)), **map_info, **timings,
    }
    if model_info is not None:
        info["model"] = model_info
    return DeconvolutionResult(props, dominant, M if keep_mapping else None, info)
