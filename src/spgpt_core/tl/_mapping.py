"""The mapping engine behind ``tl.deconvolve`` and ``tl.impute`` (paper Methods 4.4.1, 4.5).

Both map a reference (single cells, or their centroids) onto a slide with Tangram's optimiser
(``tangram-sc``) on *enriched features*: the log-normalised expression of shared genes with the
model's embeddings stacked beside it (Eq. 13), or fit each spot as a non-negative mix (NNLS). This
module holds the mapping the two share: the training genes, the embedding block, the density prior,
the optimiser loop (cancellable, seeded) and the choice of method by size. Gene matching is in
:mod:`._genes`, the input scale and expression blocks in :mod:`._expression`; the two tasks'
docstrings describe each pipeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from scipy.optimize import nnls
from sklearn.neighbors import NearestNeighbors
from torch.nn.functional import softmax

from ..checkpoint import load_model
from ..errors import InputError
from ..progress import Progress, ensure_progress
from ._embed import compute_embedding
from ._expression import block_rows, row_totals
from ._genes import SharedGenes

log = logging.getLogger(__name__)

#: Mappings with fewer multiply-adds per epoch (sources x spots x features) run single-threaded.
SMALL_MAPPING = 2e8


# ------------------------------------------------------------------------------- features


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


def highest_variance(X: np.ndarray, n_top: int) -> np.ndarray:
    """Positions (sorted) of the ``n_top`` columns of ``X`` with the highest variance. On log-normalised data
    this keeps well-expressed variable genes; scanpy's dispersion-normalised ranking (:func:`select_hvg`)
    puts the sparsest genes first on a few hundred cells (a gene seen in 1 of 346 spots has a huge
    normalised dispersion), which cost imputation its signal on dev."""
    if X.shape[1] <= n_top:
        return np.arange(X.shape[1])
    return np.sort(np.argsort(-np.asarray(X).var(axis=0, dtype=np.float64), kind="stable")[:n_top])


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

    ``spots`` (spots x genes: a sparse matrix or a :class:`._expression.StreamedBlock`) and ``profiles`` (K x genes)
    on a linear scale; genes weighted by :func:`gene_weights`. Each spot is independent: rows are read
    and densified ``chunk_size`` at a time, so memory is set by the chunk, and progress / cancellation
    are checked per chunk."""

    progress = ensure_progress(progress)
    w = gene_weights(profiles)
    A = (np.asarray(profiles, dtype=np.float64) * w[None, :]).T  # genes x K
    n = spots.shape[0]
    chunks = block_rows(spots, chunk_size)
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
