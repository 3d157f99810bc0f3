"""``tl.impute``: expression of unmeasured genes from a reference (paper Methods 4.5, "Gene Imputation").

The reference is a single-cell dataset or another slide (e.g. Visium for Xenium) that measures
the requested genes. Pipeline (fixed choices, none tuned on benchmark data):

1. **Genes**: requested genes must be in the reference (error otherwise, listing the missing ones),
   looked up in the name source that matched the slide, then in var_names and every text var column;
   ``all_missing=True`` requests every reference gene the slide does not measure. *Training genes*
   are the genes shared by slide and reference (matched as for deconvolution, :mod:`._mapping`)
   minus the requested ones, so an imputed value never sees its own measurement, and minus genes
   without counts in either dataset.
2. **Expression** (slide and reference alike): counts of the training genes scaled to 10,000 per
   cell, ``log1p``. The reference's requested genes are scaled with the same per-cell factor (from
   the training genes), so imputed values are on the scale of ``log1p`` counts per 10,000
   training-gene counts of the slide (this is what :func:`measured_expression` returns for
   measured genes, for evaluation).
3. **Enriched features**: expression stacked with the model's embeddings (computed on the training
   genes only; stacked as the model returns them by default, or centred and scaled to
   ``embedding_weight`` x the expression block's norm), exactly as for deconvolution.
4. **Method** (``method``): ``tangram_clusters`` maps k-means centroids (scikit-learn, k-means++, 3
   restarts, seeded) of the reference *embeddings* (of the expression block when embeddings are off)
   into ``n_clusters`` groups (default |reference| / 10, at least 2): each group's features are its sum
   (Tangram's cluster mode, ``scale=True``), its source density its share of cells, its profile its mean
   expression; above ``chunk_size`` cells it runs on seeded random chunks. ``tangram_cells`` maps every
   reference cell. ``nnls`` fits each cell's linear training-gene values as a non-negative mix of the
   centroids' linear means (k-means on expression, at most 50 centroids unless ``n_clusters`` says; separable, chunked) and imputes the weights' mean of
   the centroid profiles. ``knn`` averages the profiles of the ``knn_k`` reference cells most similar
   (cosine on the features, embeddings stacked when on). ``auto``: ``params.AUTO_METHOD``, separable from
   ``params.AUTO_SEPARABLE_FROM_SPOTS`` cells. Input scales are detected as for deconvolution.
5. **Mapping**: Tangram's optimizer (see :func:`._mapping.run_tangram`) with the
   paper's Eq. 15 objective (gene-wise and cell-wise cosine, ``lambda_g1 = lambda_g2 = 1``) and
   Tangram's density KL term against a *uniform* prior over the slide's cells (each row of an
   imaging slide is one cell; an RNA-count prior would ask cells with more transcripts to receive
   more reference cells, which is what it means for multi-cell spots, not for cells), 1000 epochs.
6. **Projection**: each slide cell's imputed profile is the mapping-weighted *mean* of the mapped
   units' profiles, ``sum_k w_kj x_k / sum_k w_kj`` with ``w_kj = n_k M_kj`` (cluster size times
   mapping probability). Normalising by the mapped mass keeps the slide's varying density prior out
   of the imputed values.

Mapping K centroids instead of every reference cell shrinks the mapping matrix K-fold (10x by
default), which is where the speed-up over plain Tangram comes from. Options:
:class:`spgpt_core.params.ImputeConfig`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sklearn.cluster import KMeans

from ..device import choose_device
from ..errors import InputError
from ..metrics import imputation_scores, pearson_per_gene
from ..params import MIN_SHARED_GENES, ImputeConfig, resolve
from ..pp.counts import with_counts
from ..progress import Progress
from ..records import run_record
from ._expression import (counts_block, detect_scale, expressed_blocks, linear_block, log_expression, log_normalise,
                          scale_totals)
from ._genes import gene_positions, lookup_sources, match_genes, no_shared_genes_error
from ._mapping import (choose_method, column_cosine, density, enriched_features, highest_variance, knn_average,
                       nnls_weights, run_tangram, tangram_chunked)

log = logging.getLogger(__name__)

#: Centroids an NNLS imputation fits when --n-clusters is not given (see compute_imputation).
NNLS_MAX_CENTROIDS = 50

@dataclass
class ImputationResult:
    imputed: pd.DataFrame  # slide cells x requested genes (float32)
    info: dict = field(default_factory=dict)
    mapping: np.ndarray | None = None  # units x slide cells (softmax), when keep_mapping
    clusters: np.ndarray | None = None  # reference cell -> centroid, when centroids were used


def _key(name) -> str:
    return str(name).strip().upper()


def resolve_requested(genes, all_missing: bool, shared_names: pd.Index, ref_names: pd.Index,
                      other_sources: list[pd.Index] | None = None) -> tuple[list[int], list[str]]:
    """Reference var positions of the genes to impute (order as requested) and their column names.

    A requested name is looked up in ``ref_names`` (the name source that matched the slide) and then in
    ``other_sources`` (var_names and the other text var columns), so ``--genes`` may name genes by
    var_names (e.g. Ensembl ids) while ``--gene-col gene_symbol`` matched the datasets. Columns are
    named as the reference spells the requested name in the source that had it."""
    sources = [ref_names] + list(other_sources or [])
    positions: list[dict[str, int]] = []
    for names in sources:
        pos: dict[str, int] = {}
        for i, n in enumerate(names):
            pos.setdefault(_key(n), i)
        positions.append(pos)
    ref_pos = positions[0]
    if all_missing:
        if genes:
            raise InputError("give either genes or all_missing (--genes or --all-missing), not both")
        shared = {_key(n) for n in shared_names}
        out = [i for k, i in ref_pos.items() if k not in shared]
        if not out:
            raise InputError("the slide already measures every reference gene; there is nothing missing to impute. "
                             "Pass --genes to re-impute measured genes (they are left out of the training genes)")
        out = sorted(out)
        return out, [str(ref_names[i]) for i in out]
    if genes is None or len(genes) == 0:
        raise InputError("no genes to impute: pass --genes G1,G2,... (genes=[...]) or --all-missing (all_missing=True)")
    if isinstance(genes, str):
        genes = [g for g in genes.split(",")]
    genes = [str(g).strip() for g in genes if str(g).strip()]
    found: dict[str, tuple[int, str]] = {}
    for g in genes:
        for names, pos in zip(sources, positions):
            if _key(g) in pos:
                found[g] = (pos[_key(g)], str(names[pos[_key(g)]]))
                break
    missing = [g for g in genes if g not in found]
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        examples = ", ".join(map(str, ref_names[:5]))
        raise InputError(
            f"{len(missing)} requested gene(s) are not in the reference: {shown}. The reference can only impute genes it "
            f"measures (reference genes e.g. {examples}; names are compared case-insensitively with var_names and "
            "every text var column). Remove them or use a reference that measures them"
        )
    seen, out, names_out = set(), [], []
    for g in genes:
        i, name = found[g]
        if i not in seen:
            seen.add(i)
            out.append(i)
            names_out.append(name)
    return out, names_out


def measured_expression(adata, genes, train_genes, gene_col: str | None = None) -> pd.DataFrame:
    """Measured values of ``genes`` on the imputation scale: log1p(counts / training-gene total * 1e4).

    For evaluating held-out genes: ``train_genes`` are the genes the mapping used (``info['training_genes']``),
    so measured and imputed values share their per-cell normalisation.
    """
    totals = np.asarray(counts_block(adata, gene_positions(adata, train_genes, gene_col)).sum(axis=1)).ravel()
    vals = log_normalise(counts_block(adata, gene_positions(adata, genes, gene_col)), totals)
    return pd.DataFrame(vals, index=pd.Index(adata.obs_names.astype(str)), columns=pd.Index([str(g) for g in genes]))


def imputation_qc(adata, key: str = "spgpt_imputed", *, truth=None, gene_col: str | None = None,
                  counts_layer: str | None = None) -> dict:
    """How far imputed genes can be trusted: ``obsm[key]`` (an imputation of genes the slide measured)
    against the measured values, on the imputation's scale. The one check behind
    ``spgpt evaluate --task imputation`` and the plugin's Imputation QC widget.

    ``truth`` is the slide that measured the genes (default: ``adata``); ``counts_layer`` where its raw
    counts are. Returns ``measured`` and ``imputed`` (cells x genes DataFrames), ``pearson`` (per gene),
    ``expressing`` (% of cells with counts, per gene) and ``scores`` (median / mean Pearson r).
    """
    if key not in adata.obsm:
        raise InputError(f"obsm['{key}'] not found (have: {', '.join(map(str, adata.obsm)) or 'none'}); "
                         "impute measured genes first (spgpt impute --genes ... --key-added KEY)")
    rec = adata.uns.get(key)
    train = rec.get("training_genes") if isinstance(rec, dict) else None
    if train is None:
        raise InputError(f"uns['{key}'] has no training_genes; evaluate an output of `spgpt impute`")
    imputed = adata.obsm[key]
    if not isinstance(imputed, pd.DataFrame):
        genes = list(rec.get("genes", []))
        if len(genes) != np.shape(imputed)[1]:
            raise InputError(f"obsm['{key}'] has no gene names; evaluate the .h5ad written by `spgpt impute`")
        imputed = pd.DataFrame(np.asarray(imputed), columns=genes)
    imputed = imputed.set_axis(adata.obs_names.astype(str)).set_axis([str(c) for c in imputed.columns], axis=1)
    truth = adata if truth is None else truth
    if truth.n_obs != len(imputed):
        raise InputError(f"the measured slide has {truth.n_obs} cells but the imputed table has {len(imputed)}; "
                         "pass the measured slide with the same cells")
    cols = list(imputed.columns)
    measured = measured_expression(with_counts(truth, counts_layer), cols, [str(g) for g in train], gene_col)
    measured.index = imputed.index
    return {"measured": measured, "imputed": imputed, "pearson": pearson_per_gene(measured, imputed),
            "expressing": pd.Series((measured.to_numpy() > 0).mean(axis=0) * 100, index=cols),
            "scores": imputation_scores(measured, imputed)}


def compute_imputation(spatial, reference, *, genes=None, all_missing: bool = False, model="default",
                       config: ImputeConfig | None = None, gene_col: str | None = None, device: str | None = None,
                       keep_mapping: bool = False, progress: Progress | None = None, **options) -> ImputationResult:
    """Impute ``genes`` (or all reference genes the slide lacks) for every cell of ``spatial``.

    ``config`` (or its fields as keyword arguments): :class:`~spgpt_core.params.ImputeConfig`.
    ``model``: an :class:`~spgpt_core.SpGPT` or a :func:`~spgpt_core.load_model` spec (not loaded when
    ``use_embeddings=False``, both ``*_rep`` are given, or ``method='nnls'``). Returns an
    :class:`ImputationResult` whose ``imputed`` DataFrame has one column per gene.
    """
    cfg = resolve(ImputeConfig, config, options)
    if spatial.n_obs < 2:
        raise InputError(f"the slide has {spatial.n_obs} cell(s); imputation needs at least 2")
    if reference.n_obs < 2:
        raise InputError(f"the reference has {reference.n_obs} cell(s); imputation needs at least 2")
    choice = choose_method(cfg.method, "impute", spatial.n_obs, reference.n_obs)
    method = choice.method
    use_emb = cfg.use_embeddings and method != "nnls"
    if method in ("tangram_clusters", "nnls"):
        k = cfg.n_clusters if cfg.n_clusters is not None else max(2, reference.n_obs // cfg.cluster_ratio)
        if method == "nnls" and cfg.n_clusters is None:
            # an NNLS fit costs ~K^2..K^3 per cell (2 cores: 30 centroids 0.7 ms, 300 centroids 20 ms per cell,
            # i.e. 33 min per 100k cells), and needs fewer centroids than training genes to be determined
            k = min(k, NNLS_MAX_CENTROIDS)
        if k > reference.n_obs:
            raise InputError(f"n_clusters={k} is larger than the number of reference cells ({reference.n_obs}); "
                             f"pass --n-clusters between 2 and {reference.n_obs}")
    device = str(choose_device(device, model if use_emb else None))
    scales = (detect_scale(spatial, "slide", cfg.input_scale),
              detect_scale(reference, "reference", cfg.reference_input_scale, "--reference-input-scale"))
    t_all = time.time()
    timings: dict[str, float] = {}

    shared = match_genes(spatial, reference, gene_col, cfg.reference_gene_col)
    ref_names = shared.b_all
    others = [src for name, src in lookup_sources(reference, cfg.reference_gene_col, "reference")
              if name != shared.b_source]
    targets, target_cols = resolve_requested(genes, all_missing, shared.names, ref_names, others)
    target_set = set(targets)
    keep = np.array([b not in target_set for b in shared.b_idx], dtype=bool)
    train = shared.subset(keep)
    if len(train) < MIN_SHARED_GENES:
        if len(shared) < MIN_SHARED_GENES:
            raise no_shared_genes_error(spatial, reference)
        raise InputError(f"only {len(train)} shared genes remain for the mapping after leaving out the {len(targets)} "
                         f"requested genes; request fewer genes or use a reference sharing more genes with the slide")
    # nnls reads the slide in chunks of cells (twice: which genes it expresses, then the fit)
    train, C_sp, C_ref = expressed_blocks(spatial, reference, train, "training genes", scales,
                                          stream_slide=method == "nnls", chunk_size=cfg.chunk_size)
    ref_tot = scale_totals(C_ref, scales[1])
    E_sp = None if method == "nnls" else log_expression(C_sp, scales[0])
    E_ref = log_normalise(C_ref, ref_tot)
    T_ref = log_normalise(linear_block(reference, np.asarray(targets), scales[1]), ref_tot)
    target_names = pd.Index(target_cols)
    # Tangram and kNN map on the training genes of highest variance in the reference: their cost per epoch
    # grows faster than the gene count (bench/protocols/unseen_tissue.yaml, imputation_training_genes[_b]);
    # library sizes, and so the scale of the imputed values, stay over every training gene
    mapping = None
    if method != "nnls" and cfg.n_top_genes and len(train) > cfg.n_top_genes:
        mapping = highest_variance(E_ref, cfg.n_top_genes)
    F_sp = E_sp if mapping is None else E_sp[:, mapping]
    F_ref = E_ref if mapping is None else E_ref[:, mapping]

    model_info = None
    if use_emb:
        G, S, H_ref, model_info, timings["embedding_seconds"] = enriched_features(
            spatial, reference, train, F_sp, F_ref, model, spatial_rep=cfg.spatial_rep,
            reference_rep=cfg.reference_rep, embedding_weight=cfg.embedding_weight, seed=cfg.seed,
            batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len, device=device, progress=progress)
    else:
        H_ref = None
        G, S = F_sp, F_ref

    clusters, M, map_info = None, None, {}
    if method in ("tangram_clusters", "nnls"):
        t = time.time()
        if H_ref is not None:
            ok = np.isfinite(H_ref).all(axis=1)
            basis = np.where(ok[:, None], H_ref, np.nanmean(H_ref[ok], axis=0) if ok.any() else 0.0)
        else:
            basis = F_ref
        clusters = KMeans(n_clusters=k, n_init=3, random_state=cfg.seed).fit_predict(np.asarray(basis, np.float64))
        sizes = np.bincount(clusters, minlength=k).astype(np.float64)
        used = sizes > 0
        onehot = np.zeros((k, len(clusters)))
        onehot[clusters, np.arange(len(clusters))] = 1.0
        onehot, sizes = onehot[used], sizes[used]
        profiles = (onehot @ T_ref) / sizes[:, None]
        timings["clustering_seconds"] = round(time.time() - t, 3)
    if method == "knn":
        t = time.time()
        imputed_values = knn_average(G, S, T_ref, k=cfg.knn_k, chunk_size=cfg.chunk_size, progress=progress)
        map_info = {"mapping_seconds": round(time.time() - t, 3)}
    elif method == "nnls":
        t = time.time()
        means = (onehot @ C_ref.toarray()) / sizes[:, None]  # linear centroid means of the training genes
        W = nnls_weights(C_sp, means, chunk_size=cfg.chunk_size, progress=progress, desc="imputation (NNLS)")
        empty = W.sum(axis=1) <= 0
        W[empty] = sizes  # a cell with no signal on the training genes gets the reference's mean
        W /= W.sum(axis=1, keepdims=True)
        imputed_values = W @ profiles
        map_info = {"mapping_seconds": round(time.time() - t, 3), "n_cells_without_fit": int(empty.sum())}
    else:
        kw = dict(lambda_g2=cfg.lambda_g2, num_epochs=cfg.num_epochs, learning_rate=cfg.learning_rate, device=device)
        d = density(spatial, cfg.density_prior, scales[0])
        if method == "tangram_clusters":
            S_units = onehot @ S  # cluster sums (Tangram cluster mode, scale=True)
            M, map_info = tangram_chunked(S_units, G, d=d, d_source=sizes / sizes.sum() if d is not None else None,
                                          chunk_size=cfg.chunk_size, seed=cfg.seed, progress=progress,
                                          desc="imputation mapping (clusters)", **kw)
            weights_unit, E_units = sizes, onehot @ F_ref
        else:
            M, map_info = run_tangram(S, G, d=d, seed=cfg.seed, progress=progress, desc="imputation mapping", **kw)
            profiles, weights_unit, E_units = T_ref, np.ones(reference.n_obs), F_ref
        W = (M.astype(np.float64) * weights_unit[:, None]).T  # slide cells x units
        W /= W.sum(axis=1, keepdims=True)
        imputed_values = W @ profiles
        map_info["train_score_mean"] = float(np.nanmean(column_cosine(M.T @ E_units, F_sp)))
    imputed = pd.DataFrame(np.asarray(imputed_values, dtype=np.float32), index=pd.Index(spatial.obs_names.astype(str)),
                           columns=target_names)
    timings["total_seconds"] = round(time.time() - t_all, 3)
    info = {
        "genes": [str(g) for g in target_names[:200]], "n_genes": int(len(target_names)), "all_missing": all_missing,
        **cfg.as_dict(), "method": method, "method_requested": choice.requested, "method_reason": choice.reason,
        "n_clusters": int(len(sizes)) if clusters is not None else None, "embeddings_used": bool(use_emb),
        "embedding_weight": cfg.embedding_weight if use_emb else 0.0,
        "embedding_block": cfg.embedding_block if use_emb else "none",
        "input_scale": scales[0]["scale"], "input_scale_reason": scales[0]["reason"],
        "reference_input_scale": scales[1]["scale"], "reference_input_scale_reason": scales[1]["reason"],
        "n_cells": int(spatial.n_obs), "n_reference_cells": int(reference.n_obs), "n_training_genes": int(len(train)),
        "n_mapping_genes": int(len(train) if mapping is None or method == "nnls" else len(mapping)),
        "training_genes": [str(g) for g in train.names], "gene_sources": [train.a_source, train.b_source],
        "units": "log1p(counts per 1e4 training-gene counts)", **map_info, **timings,
    }
    if model_info is not None:
        info["model"] = model_info
    return ImputationResult(imputed, info, M if keep_mapping else None, clusters)


def merge_imputed(previous, previous_record, new: pd.DataFrame, new_record: dict) -> tuple[pd.DataFrame, dict]:
    """Add a run's imputed genes to an earlier table of the same cells (``obsm[key]``, ``uns[key]``).

    Genes imputed again take the new values, the others keep theirs, so repeated runs accumulate genes
    (the plugin's Impute widget). The record is the new run's with ``genes`` listing every column,
    ``run_genes`` this run's genes and, under ``earlier``, the records of the runs whose genes are
    still in the table (each gene's parameters stay known). A previous table of other cells (or
    without gene names) is replaced, not merged.
    """
    if not isinstance(previous, pd.DataFrame) or not previous.index.equals(new.index):
        return new, {**new_record, "run_genes": np.asarray(new.columns.astype(str), dtype=object)}
    replaced = {str(c) for c in new.columns}
    kept = [c for c in previous.columns if str(c) not in replaced]
    table = pd.concat([previous[kept], new], axis=1)
    earlier: dict = {}
    if isinstance(previous_record, dict):
        earlier = dict(previous_record.get("earlier", {}))
        own = {k: v for k, v in previous_record.items() if k != "earlier"}
        n = 1 + max((int(k.rsplit("_", 1)[1]) for k in earlier), default=0)
        earlier[f"run_{n}"] = own
    kept_set = {str(c) for c in kept}
    still: dict = {}
    for name, rec in earlier.items():  # each earlier run keeps the genes no later run imputed again
        genes = [str(g) for g in np.atleast_1d(rec.get("run_genes", rec.get("genes", []))) if str(g) in kept_set]
        if genes:
            still[name] = {**rec, "run_genes": np.asarray(genes, dtype=object)}
    earlier = still
    record = {**new_record, "genes": np.asarray([str(c) for c in table.columns], dtype=object),
              "run_genes": np.asarray([str(c) for c in new.columns], dtype=object), "earlier": earlier}
    return table, record


# ------------------------------------------------------------------------ the verb


def impute(adata, reference, genes=None, model="default", *, all_missing: bool = False,
           config: ImputeConfig | None = None, key_added: str = "spgpt_imputed", gene_col: str | None = None,
           counts_layer: str | None = None, reference_counts_layer: str | None = None, device: str | None = None,
           progress: Progress | None = None, **options):
    """Impute ``genes`` (or every reference gene the slide lacks, ``all_missing=True``) for each cell.

    Options: ``config`` (:class:`~spgpt_core.params.ImputeConfig`) or its fields as keyword arguments.
    Writes ``obsm[key_added]``: a DataFrame cells x genes (columns named as in the reference) in units
    of log1p(counts per 10,000 training-gene counts), and ``uns[key_added]`` (parameters, model,
    versions, timings, training genes). The AnnData's genes are not changed, so measured and imputed
    values never mix. ``counts_layer`` / ``reference_counts_layer`` name the layers holding raw counts
    (``'raw'``: ``.raw``) when ``X`` holds normalised values. Returns ``adata``.
    """
    cfg = resolve(ImputeConfig, config, options)
    res = compute_imputation(with_counts(adata, counts_layer),
                             with_counts(reference, reference_counts_layer, "reference", "--reference-counts-layer"),
                             genes=genes, all_missing=all_missing, model=model, config=cfg, gene_col=gene_col,
                             device=device, progress=progress)
    df = res.imputed.copy()
    df.index = adata.obs_names
    adata.obsm[key_added] = df
    info = dict(res.info)
    model_info = info.pop("model", None)
    params = {"all_missing": all_missing, "gene_col": gene_col, "counts_layer": counts_layer,
              "reference_counts_layer": reference_counts_layer, **cfg.as_dict(),
              **{k: info[k] for k in ("n_clusters", "embedding_weight", "method", "lambda_g1", "lambda_d", "lambda_r")
                 if k in info}}
    rec = run_record(params, genes=np.array([str(g) for g in df.columns], dtype=object),
                     training_genes=np.array(info.pop("training_genes"), dtype=object),
                     summary={k: v for k, v in info.items() if k not in params and k != "genes"})
    if model_info is not None:
        rec["model"] = model_info
    adata.uns[key_added] = rec
    return adata
