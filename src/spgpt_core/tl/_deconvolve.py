"""``tl.deconvolve``: cell-type proportions of every spot from a labelled reference (paper Methods 4.4.1).

Four methods (``method``, :class:`spgpt_core.params.DeconvolveConfig`; the engine is :mod:`._mapping`):

* ``tangram_cells``: Tangram's optimiser maps every (subsampled) reference cell onto the spots (steps
  1-6 below; the paper's pipeline). Its mapping matrix is reference cells x spots, so it is refused
  above ``params.MAX_CELLS_MODE_PAIRS`` entries, before any embedding, naming the alternatives.
* ``tangram_clusters``: the same objective with one source per cell type, whose features are the class
  sum over the whole labelled reference (Tangram's cluster mode, ``scale=True``) and whose source density
  is the class's share of cells; proportions are M^T weighted by class size. The mapping is types x
  spots; above ``chunk_size`` spots it runs on seeded random chunks of spots (``_mapping.spot_chunks``).
* ``nnls``: each spot's linear values of the training genes fitted as a non-negative mix of the class
  means (``scipy.optimize.nnls``, every gene scaled by its mean over the classes so all genes weigh
  alike); proportions are the weights' shares. Separable by spot, run ``chunk_size`` spots at a time.
  Embeddings do not enter a linear mix, so no model is loaded.

* ``consensus``: the ``tangram_clusters`` and ``nnls`` proportions (both run), averaged with weights set by
  how well each explains the slide (``fit_r`` below). Tangram spreads each class's mass over the spots
  under a density prior; NNLS explains each spot alone as a linear mix. They fail on different slides:
  NNLS, for one, has no answer when the reference's genes are scaled differently from the slide's.

Every run records ``fit_r``, a label-free check of the proportions: the median over training genes of
the Pearson r across spots between measured expression and the mix of class profiles the proportions
predict (near 0: the proportions do not explain the slide; check the reference matches the tissue).

``auto`` (the default) is the method the dev benchmark chose (``params.AUTO_METHOD``) and a separable one
from ``params.AUTO_SEPARABLE_FROM_SPOTS`` spots; ``uns`` records the method and why.

**Input scale** (``_expression.detect_scale``, recorded in ``uns``): raw counts are normalised per spot as
below; values already normalised by their producer (volume-normalised MERFISH, counts per 10,000) keep
each row's scale and get one global factor; log1p values are ``expm1``-ed back first. Ambiguous values
are refused with a message naming ``--input-scale``.

The Tangram pipeline (every choice below is fixed and documented; none is tuned on benchmark labels):

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
   The loop runs epoch by epoch (same updates as ``Mapper.train``) so long mappings report
   progress and can be cancelled.
6. **Annotation transfer**: A = M^T A_c (Eq. 16) with A_c the one-hot cell types, normalised per
   spot to proportions; the dominant type is the arg-max.

With ``use_embeddings=False`` and ``lambda_g2=0`` the same code is plain Tangram on expression
(``tangram.map_cells_to_space`` in cells mode gives the same mapping from the same start; a test
checks it), so any difference to the baseline comes from the features and the objective, which
the benchmark separates with ablations. Options: :class:`spgpt_core.params.DeconvolveConfig`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..device import choose_device
from ..errors import InputError
from ..metrics import valid_label_mask
from ..params import MIN_SHARED_GENES, DeconvolveConfig, resolve
from ..pl import celltype_colors
from ..pp.counts import with_counts
from ..progress import Progress
from ..records import run_record
from ._expression import block_rows, detect_scale, expressed_blocks, log_expression
from ._genes import match_genes, no_shared_genes_error
from ._mapping import (choose_method, column_cosine, density, enriched_features, nnls_weights, run_tangram,
                       select_hvg, tangram_chunked)

log = logging.getLogger(__name__)


@dataclass
class DeconvolutionResult:
    proportions: pd.DataFrame  # spots x cell types, rows sum to 1
    dominant: pd.Series  # categorical, one per spot
    mapping: np.ndarray | None  # reference cells x spots (softmax), when keep_mapping
    info: dict = field(default_factory=dict)


def _reference_labels(reference, celltype_key: str) -> pd.Series:
    if celltype_key not in reference.obs.columns:
        raise InputError(
            f"the reference has no obs column '{celltype_key}' (columns: {list(reference.obs.columns) or 'none'}); "
            "pass --celltype-key naming the column that holds each cell's type"
        )
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


def fit_r(C_sp, profiles: np.ndarray, props: np.ndarray, chunk_size: int = 20_000) -> float:
    """How well proportions explain the slide, without labels: the median over genes of Pearson r across
    spots between each spot's measured expression and the one its proportions predict (the mix of the
    class profiles), both as log1p of counts per 10,000 over the training genes.

    ``C_sp``: spots x genes, linear (sparse or :class:`._expression.StreamedBlock`); ``profiles``: classes x
    genes, each row a class's mean relative expression; ``props``: spots x classes."""
    n_genes = profiles.shape[1]
    sums = np.zeros((5, n_genes))  # sum x, sum y, sum xy, sum x^2, sum y^2
    for start, stop, B in block_rows(C_sp, chunk_size):
        Y = B.toarray()
        Y = np.log1p(1e4 * Y / np.maximum(Y.sum(axis=1, keepdims=True), 1e-12))
        X = np.log1p(1e4 * props[start:stop] @ profiles)
        sums += [X.sum(0), Y.sum(0), (X * Y).sum(0), (X * X).sum(0), (Y * Y).sum(0)]
    n = C_sp.shape[0]
    cov = sums[2] - sums[0] * sums[1] / n
    var = (sums[3] - sums[0] ** 2 / n) * (sums[4] - sums[1] ** 2 / n)
    ok = var > 1e-12
    return float(np.median(cov[ok] / np.sqrt(var[ok]))) if ok.any() else float("nan")


def consensus_weights(scores: list[float]) -> np.ndarray:
    """Each method's weight in ``consensus``: its :func:`fit_r`, floored at 0 (a method whose proportions
    do not explain the slide's genes drops out); equal weights when no method explains them."""
    w = np.array([max(s, 0.0) if np.isfinite(s) else 0.0 for s in scores])
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))


def compute_proportions(spatial, reference, *, celltype_key: str, model="default",
                        config: DeconvolveConfig | None = None, gene_col: str | None = None,
                        device: str | None = None, keep_mapping: bool = False, progress: Progress | None = None,
                        **options) -> DeconvolutionResult:
    """Cell-type proportions of every spot of ``spatial`` from a labelled single-cell ``reference``.

    ``config`` (or its fields as keyword arguments): :class:`~spgpt_core.params.DeconvolveConfig`.
    ``model`` is an :class:`~spgpt_core.SpGPT` or anything :func:`~spgpt_core.load_model` takes; it is
    not loaded when ``use_embeddings=False``, when both ``*_rep`` embeddings are given, or for
    ``method='nnls'`` (a linear mix of expression: embeddings do not add). See the module docstring for
    every step. Returns a :class:`DeconvolutionResult`.
    """
    cfg = resolve(DeconvolveConfig, config, options)
    if spatial.n_obs < 2:
        raise InputError(f"the slide has {spatial.n_obs} spot(s); deconvolution needs at least 2")
    timings: dict[str, float] = {}
    t_all = time.time()

    labels = _reference_labels(reference, celltype_key)
    keep = subsample_per_type(labels, cfg.max_cells_per_type, cfg.seed)
    # every check that can refuse the run comes before any embedding or mapping
    choice = choose_method(cfg.method, "deconvolve", spatial.n_obs, len(keep))
    method = choice.method
    use_emb = cfg.use_embeddings and method != "nnls"
    device = str(choose_device(device, model if use_emb else None))
    scales = (detect_scale(spatial, "slide", cfg.input_scale),
              detect_scale(reference, "reference", cfg.reference_input_scale, "--reference-input-scale"))
    ref = reference[keep]
    ref_labels = labels.iloc[keep].astype(str)
    types = sorted(set(ref_labels))
    # class sizes of the whole labelled reference (not the subsample): the prior composition
    full = labels[labels.notna()].astype(str)
    class_size = np.array([(full == t_).sum() for t_ in types], dtype=np.float64)

    shared = match_genes(spatial, ref, gene_col, cfg.reference_gene_col)
    if len(shared) < MIN_SHARED_GENES:
        raise no_shared_genes_error(spatial, ref)
    # nnls reads the slide in chunks of spots (twice: which genes it expresses, then the fit)
    shared, C_sp, C_ref = expressed_blocks(spatial, ref, shared, "shared genes", scales,
                                           stream_slide=method == "nnls", chunk_size=cfg.chunk_size)
    n_silent = int((np.asarray(C_ref.sum(axis=1)).ravel() <= 0).sum())
    if n_silent:
        log.warning("%d reference cells have no counts on the shared genes; they carry no signal for the mapping",
                    n_silent)
    t = time.time()
    hv = select_hvg(log_expression(C_ref, scales[1]), cfg.n_top_genes)
    timings["genes_seconds"] = round(time.time() - t, 3)
    train = shared.subset(hv)
    C_sp, C_ref = (C_sp.columns(hv) if method == "nnls" else C_sp[:, hv]), C_ref[:, hv]
    onehot = (ref_labels.to_numpy()[:, None] == np.array(types)[None, :]).astype(np.float64)  # cells x types
    members = onehot.sum(axis=0)

    model_info, M, map_info = None, None, {}
    E_sp = E_ref = None
    shares = []  # proportions of each method run (consensus averages two)
    if method in ("nnls", "consensus"):
        # class means on the linear scale (mean values per cell of each type): a spot's weights then count
        # cells, and proportions are the weights' shares
        means = (onehot.T @ C_ref.toarray()) / members[:, None]
        t = time.time()
        W = nnls_weights(C_sp, means, chunk_size=cfg.chunk_size, progress=progress,
                         desc="deconvolution (NNLS)")
        map_info["nnls_seconds"] = round(time.time() - t, 3)
        empty = W.sum(axis=1) <= 0
        W[empty] = class_size  # a spot with no signal gets the reference's composition
        map_info["n_spots_without_fit"] = int(empty.sum())
        shares.append(W / W.sum(axis=1, keepdims=True))
    if method != "nnls":
        E_sp = log_expression(C_sp, scales[0])
        E_ref = log_expression(C_ref, scales[1])
        if use_emb:
            G, S, _, model_info, timings["embedding_seconds"] = enriched_features(
                spatial, ref, train, E_sp, E_ref, model, spatial_rep=cfg.spatial_rep, reference_rep=cfg.reference_rep,
                embedding_weight=cfg.embedding_weight, seed=cfg.seed, batch_size=cfg.batch_size,
                max_seq_len=cfg.max_seq_len, device=device, progress=progress)
        else:
            G, S = E_sp, E_ref
        d = density(spatial, cfg.density_prior, scales[0])
        kw = dict(lambda_g2=cfg.lambda_g2, num_epochs=cfg.num_epochs, learning_rate=cfg.learning_rate, device=device)
        if method == "tangram_cells":
            M, tg_info = run_tangram(S, G, d=d, seed=cfg.seed, progress=progress, desc="deconvolution mapping", **kw)
            T = M.T.astype(np.float64) @ onehot
        else:  # tangram_clusters: one source per type, its features the class sum over the whole reference
            S_cls = (onehot.T @ S) * (class_size / members)[:, None]
            M, tg_info = tangram_chunked(S_cls, G, d=d, d_source=class_size / class_size.sum() if d is not None
                                         else None, chunk_size=cfg.chunk_size, seed=cfg.seed, progress=progress,
                                         desc="deconvolution mapping (clusters)", **kw)
            T = M.T.astype(np.float64) * class_size[None, :]  # each class's mass is its size (size-weighted)
        map_info.update(tg_info)
        shares.append(T / T.sum(axis=1, keepdims=True))
    # each class's mean relative profile (rows of the reference normalised to 1): what a spot of given
    # proportions is expected to look like, for the label-free fit of every method's proportions
    C_rel = sp.diags(1 / np.maximum(np.asarray(C_ref.sum(axis=1)).ravel(), 1e-12)) @ C_ref
    profiles = np.asarray(onehot.T @ C_rel) / members[:, None]
    chunk = min(cfg.chunk_size, 10_000)
    fits = [fit_r(C_sp, profiles, P, chunk) for P in shares]
    if method == "consensus":
        w = consensus_weights(fits)
        A = w[0] * shares[0] + w[1] * shares[1]
        map_info.update(fit_r_nnls=round(fits[0], 4), fit_r_tangram=round(fits[1], 4),
                        consensus_weights=[round(float(x), 4) for x in w], fit_r=round(fit_r(C_sp, profiles, A, chunk), 4))
    else:
        A = shares[0]
        map_info["fit_r"] = round(fits[0], 4)
    if method == "nnls":
        map_info["mapping_seconds"] = map_info["nnls_seconds"]
    A = A / A.sum(axis=1, keepdims=True)
    props = pd.DataFrame(A, index=pd.Index(spatial.obs_names.astype(str)), columns=pd.Index(types))
    dominant = pd.Series(pd.Categorical(np.array(types)[A.argmax(axis=1)], categories=types), index=props.index)

    if M is not None:
        src = E_ref if method == "tangram_cells" else (onehot.T @ E_ref) * (class_size / members)[:, None]
        score = column_cosine(M.T @ src, E_sp)
        map_info["train_score_mean"] = float(np.nanmean(score))
    timings["total_seconds"] = round(time.time() - t_all, 3)
    info = {
        "celltype_key": celltype_key, **cfg.as_dict(),
        "method": method, "method_requested": choice.requested, "method_reason": choice.reason,
        "embeddings_used": bool(use_emb),
        "embedding_weight": cfg.embedding_weight if use_emb else 0.0,
        "embedding_block": cfg.embedding_block if use_emb else "none",
        "input_scale": scales[0]["scale"], "input_scale_reason": scales[0]["reason"],
        "reference_input_scale": scales[1]["scale"], "reference_input_scale_reason": scales[1]["reason"],
        "n_spots": int(spatial.n_obs), "n_reference_cells": int(len(keep)), "n_shared_genes": int(len(shared)),
        "n_training_genes": int(len(train)), "gene_sources": [train.a_source, train.b_source],
        "n_embedding_dims": int(G.shape[1] - E_sp.shape[1]) if use_emb else 0,
        # two parallel lists, not a dict: cell-type names may contain '/' (e.g. "L2/3 IT")
        "reference_types": list(types),
        "reference_cells_per_type": [int((ref_labels == t_).sum()) for t_ in types],
        "reference_class_sizes": [int(n) for n in class_size], **map_info, **timings,
    }
    if model_info is not None:
        info["model"] = model_info
    return DeconvolutionResult(props, dominant, M if keep_mapping else None, info)


# ------------------------------------------------------------------------ the verb


def deconvolve(adata, reference, celltype_key: str, model="default", *, config: DeconvolveConfig | None = None,
               key_added: str = "spgpt_proportions", dominant_key: str = "spgpt_dominant_type",
               gene_col: str | None = None, counts_layer: str | None = None,
               reference_counts_layer: str | None = None, device: str | None = None,
               progress: Progress | None = None, **options):
    """Deconvolve every spot of ``adata`` with ``reference`` (AnnData with ``obs[celltype_key]``).

    Options: ``config`` (:class:`~spgpt_core.params.DeconvolveConfig`) or its fields as keyword
    arguments (``num_epochs=200``, ``use_embeddings=False`` for Tangram on expression alone, ...).
    Writes ``obsm[key_added]`` (DataFrame spots x cell types, rows sum to 1), ``obs[dominant_key]``
    (categorical arg-max type, with ``uns[dominant_key + '_colors']``) and ``uns[key_added]`` (parameters,
    model, versions, timings). ``counts_layer`` / ``reference_counts_layer`` name the layers holding raw
    counts (``'raw'``: ``.raw``) when ``X`` holds normalised values. Returns ``adata``.
    """
    cfg = resolve(DeconvolveConfig, config, options)
    res = compute_proportions(with_counts(adata, counts_layer),
                              with_counts(reference, reference_counts_layer, "reference", "--reference-counts-layer"),
                              celltype_key=celltype_key, model=model, config=cfg, gene_col=gene_col, device=device,
                              progress=progress)
    props = res.proportions.copy()
    props.index = adata.obs_names
    adata.obsm[key_added] = props
    adata.obs[dominant_key] = pd.Categorical(res.dominant.to_numpy(), categories=list(res.dominant.cat.categories))
    adata.uns[f"{dominant_key}_colors"] = celltype_colors(len(res.dominant.cat.categories))
    info = dict(res.info)
    model_info = info.pop("model", None)
    params = {"celltype_key": celltype_key, "gene_col": gene_col, "counts_layer": counts_layer,
              "reference_counts_layer": reference_counts_layer, **cfg.as_dict(),
              "embedding_weight": info["embedding_weight"], "method": info["method"],
              **{k: info[k] for k in ("lambda_g1", "lambda_d", "lambda_r") if k in info}}
    rec = run_record(params, cell_types=list(props.columns), dominant_key=dominant_key,
                     summary={k: v for k, v in info.items() if k not in params})
    if model_info is not None:
        rec["model"] = model_info
    adata.uns[key_added] = rec
    return adata
