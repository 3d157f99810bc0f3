"""``tl.integrate``: zero-shot joint embedding of several slides or modalities on their shared genes (Methods 4.3).

Each slide's genes are resolved against the model vocabulary (:func:`spgpt_core.pp.vocab.resolve_genes`,
so Ensembl IDs with a symbol column, mouse symbols etc. work as for ``spgpt embed``); the genes
present in *every* slide form the shared panel. Every slide is then embedded on that panel only,
slide by slide (its own normalisation statistics and modality), without any fine-tuning or batch
correction, and the rows are concatenated. The result is a new AnnData:

* ``X``: the slides' counts on the shared genes (``var_names`` = vocabulary symbols);
* ``obs``: the slides' own ``obs`` columns (outer join), plus ``obs[batch_key]`` (slide name) and
  ``obs[modality_key]`` (technology, given or inferred per slide), both categorical;
* ``obsm[key_added]``: the embeddings (L2-normalised ``<cls>`` states; NaN rows for cells with no
  expressed shared gene, flagged in ``obs[key_added + '_empty']``); ``obsm['spatial']`` when every
  slide has coordinates (each in its own frame);
* ``obsm[key_added + '_integrated']``: the joint representation (:func:`integrated_features`) unless it is
  the embedding as returned; ``uns[key_added]['integrated_key']`` names whichever one it is;
* ``uns[key_added]``: parameters, model summary, versions, per-slide gene matches;
* with ``n_clusters`` or ``resolution``: Leiden clusters of the joint representation in ``obs[cluster_key]``.

The model sees no batch label, so its embedding of two slides of the same tissue still differs by a
per-slide shift (depth, chemistry, section thickness). The joint representation can therefore be built
from the embedding, from the slides' own expression PCs over the shared genes (computed on all slides
together, as the PCA baseline) or from both fused (the paper stacks them for mapping, Eq. 13), with each
slide centred (or centred and scaled) on its own, and each spot optionally beside the mean of its spatial
neighbours on its own slide (BANKSY-style). Options: :class:`spgpt_core.params.IntegrateConfig`.
"""

from __future__ import annotations

import logging
import time

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..checkpoint import load_model
from ..device import choose_device
from ..errors import InputError
from ..io import get_coordinates
from ..params import IntegrateConfig, resolve
from ..pp.counts import with_counts
from ..pp.hvg import highly_variable_mask
from ..pp.vocab import resolve_genes
from ..progress import Progress
from ..records import run_record
from ._cluster import cluster
from ._embed import compute_embedding
from ._features import expression_pcs, feature_blocks, features_dtype, reduce, stacked_blocks, with_neighbourhood

log = logging.getLogger(__name__)

MIN_SHARED_GENES = 5


def _names(n: int, names) -> list[str]:
    if names is None:
        return [f"slide{i + 1}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise InputError(f"{len(names)} batch names for {n} slides; give one name per slide")
    if len(set(names)) != n:
        raise InputError(f"batch names must be distinct (got {names})")
    return names


def _per_slide(value, n: int, what: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise InputError(f"{len(value)} {what} values for {n} slides; give one per slide (or one for all)")
    return value


def shared_vocab_genes(slides, vocab, gene_cols) -> tuple[np.ndarray, list]:
    """Vocabulary ids present in every slide (sorted) and each slide's GeneMatch."""
    matches = [resolve_genes(a, vocab, gene_col=g) for a, g in zip(slides, gene_cols)]
    common = None
    for m in matches:
        ids = set(m.vocab_ids[m.vocab_ids >= 0].tolist())
        common = ids if common is None else common & ids
    return np.array(sorted(common), dtype=np.int64), matches


def joint_counts(slides, vocab, names: list[str], gene_cols: list, n_top_genes: int | None):
    """Every slide's counts on the genes all of them share (vocabulary symbols as ``var_names``).

    Returns (parts, n_shared, matches): one AnnData per slide, restricted to the ``n_top_genes`` most
    variable shared genes chosen on all slides together (None: every shared gene). Raises before any
    embedding when the slides share too few genes. Each entry of ``slides`` is set to None once its part
    is built, so a slide nobody else holds (the CLI's) is freed before the next is copied."""
    ids, matches = shared_vocab_genes(slides, vocab, gene_cols)
    if len(ids) < MIN_SHARED_GENES:
        per = "; ".join(f"{n}: {m.n_matched} matched" for n, m in zip(names, matches))
        raise InputError(
            f"the slides share only {len(ids)} vocabulary genes ({per}); a joint embedding needs at least "
            f"{MIN_SHARED_GENES}. Check that they are of comparable species / panels, or pass --gene-col naming "
            "each slide's symbol column"
        )
    symbols = [vocab.tokens[i] for i in ids]
    parts = []
    for i, m in enumerate(matches):
        pos = {int(v): j for j, v in enumerate(m.vocab_ids) if v >= 0}
        cols = np.array([pos[int(g)] for g in ids])
        a, slides[i] = slides[i], None
        X = a[:, cols].to_memory().X if a.isbacked else a.X[:, cols]  # only X and obs: not layers or obsm
        parts.append(ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=a.obs.copy(),
                                var=pd.DataFrame(index=pd.Index(symbols))))
        del a, X
    # the joint copy only when there are more shared genes than kept ones (else every gene is used)
    hv = highly_variable_mask(ad.concat(parts, index_unique="-"), n_top_genes) \
        if n_top_genes and len(ids) > n_top_genes else None
    if hv is not None:
        parts = [p[:, hv].copy() for p in parts]
        log.info("using the %d most variable of %d shared genes (chosen on all slides)", int(hv.sum()), len(ids))
    return parts, len(ids), matches


def per_slide_correct(F: np.ndarray, batch: np.ndarray, how: str, dtype=np.float64, copy: bool = True) -> np.ndarray:
    """Each slide's rows centred on their own mean (``"centre"``), also scaled to unit total variance
    (``"scale"``), or returned as they are (``"none"``); in ``F`` itself with ``copy=False``.

    Why: a zero-shot embedding and expression PCs of several slides carry a per-slide offset (sequencing
    depth, chemistry, section) on top of the biology; removing each slide's mean removes that offset while
    keeping the differences between cells of one slide. Scaling also stops one slide with a wider spread
    from dominating the joint PCA."""
    F = np.array(F, dtype=dtype) if copy else F
    if how == "none":
        return F
    for b in pd.unique(batch):
        rows = batch == b
        F[rows] -= F[rows].mean(axis=0)
        if how == "scale":
            total = np.sqrt((F[rows] ** 2).sum() / max(int(rows.sum()), 1))
            if total > 0:
                F[rows] /= total
    return F


def integrated_features(*, embedding: np.ndarray | None, expression: np.ndarray | None, batch: np.ndarray,
                        coords: np.ndarray | None, features: str, embedding_share: float, per_slide: str,
                        spatial_weight: float, spatial_k: int, n_pcs: int, seed: int = 0) -> np.ndarray:
    """The joint representation of several slides (rows: the cells given, in order; ``batch`` names each row's slide).

    Each block (embedding, expression PCs) is corrected per slide (:func:`per_slide_correct`), the blocks
    fused at unit variance with the embedding's share ``embedding_share`` (``features="fused"``), each row
    optionally put beside the mean of its ``spatial_k`` nearest spots **of its own slide** (coordinates of
    different slides live in different frames) with share ``spatial_weight``, and the result reduced to
    ``n_pcs`` components. The embedding alone, uncorrected and without neighbours, is returned as the model
    gives it (the paper's zero-shot path). The combined features fill one array in place (float32 from
    ``_features.FLOAT32_FROM`` cells), as for domains."""
    batch = np.asarray(batch)
    if features == "embedding" and per_slide == "none" and spatial_weight <= 0:
        return np.asarray(embedding, dtype=np.float32)
    dtype = features_dtype(len(batch))
    blocks = [(per_slide_correct(B, batch, per_slide, dtype), weight)
              for B, weight in feature_blocks(features, expression, embedding, embedding_share)]
    width = sum(B.shape[1] for B, _ in blocks)
    F = stacked_blocks(blocks, dtype, spare=width if spatial_weight > 0 else 0)
    del blocks
    if spatial_weight > 0:
        with_neighbourhood(F, width, coords, spatial_weight=spatial_weight, k=spatial_k, seed=seed, groups=batch)
        # the neighbour means of centred rows are nearly, not exactly, centred: centre (scale) once more
        per_slide_correct(F, batch, per_slide, copy=False)
    return reduce(F, n_pcs, seed)


def integrate(slides, model="default", *, config: IntegrateConfig | None = None, batch_names=None,
              batch_key: str = "batch", modality_key: str = "modality", modalities=None, gene_cols=None,
              key_added: str = "X_spgpt", device: str | None = None, empty: str = "drop", counts_layers=None,
              layer: int = -1, cluster_key: str = "spgpt_cluster", progress: Progress | None = None, **options):
    """Embed ``slides`` (AnnData list) jointly on their shared genes; returns a **new** concatenated AnnData
    (the inputs are not modified).

    Options: ``config`` (:class:`~spgpt_core.params.IntegrateConfig`) or its fields as keyword arguments.
    With more shared genes than ``n_top_genes``, every slide is embedded on the same ``n_top_genes``
    highly variable genes, chosen on all slides together (None or 0: every shared gene); the expression
    PCs use the same genes. ``features`` / ``embedding_share`` / ``per_slide`` / ``spatial_weight`` /
    ``spatial_k`` / ``n_pcs`` build the joint representation (:func:`integrated_features`).
    ``counts_layers``: the layer holding each slide's raw counts (one name for all, or one per slide;
    None: ``X``), for slides whose ``X`` is normalised; the output's ``X`` holds those counts.
    ``layer``: the transformer layer whose ``<cls>`` state is the embedding (-1: the final one).
    ``batch_size`` / ``max_seq_len``: cells per batch and tokens per cell (memory; see :func:`embed`).
    ``n_clusters`` / ``resolution``: also cluster the joint representation (Leiden,
    :func:`spgpt_core.tl.cluster`) into ``obs[cluster_key]``."""
    cfg = resolve(IntegrateConfig, config, options)
    slides = list(slides)
    if len(slides) < 2:
        raise InputError(f"integration needs at least 2 slides (got {len(slides)}); pass two or more inputs")
    names = _names(len(slides), batch_names)
    gene_cols = _per_slide(gene_cols, len(slides), "gene column")
    modalities = _per_slide(modalities, len(slides), "modality")
    counts_layers = _per_slide(counts_layers, len(slides), "counts layer")
    coords = [get_coordinates(a) for a in slides]
    if cfg.spatial_weight > 0 and any(c is None for c in coords):  # checked before the model is loaded
        missing = [n for n, c in zip(names, coords) if c is None]
        raise InputError(f"spatial_weight={cfg.spatial_weight} (--spatial-weight) needs coordinates on every slide; "
                         f"{', '.join(missing)} has none (obsm['spatial']). Pass --spatial-weight 0 or add them")
    slides = [with_counts(a, layer, f"slide {name}") for a, layer, name in zip(slides, counts_layers, names)]
    model = load_model(model, device=choose_device(device, model))
    t0 = time.time()
    # from here on only the parts: our list lets go of each slide (freed if the caller holds none, as the CLI)
    parts, n_shared, matches = joint_counts(slides, model.vocab, names, gene_cols, cfg.n_top_genes)
    del slides
    embs, empties, slide_info = [], [], {}
    for name, m, mod, part in zip(names, matches, modalities, parts):
        info = {"n_cells": int(part.n_obs), "gene_match": m.to_dict()}
        if cfg.uses_embedding:
            emb, prep = compute_embedding(part, model, modality=mod, empty=empty, seed=cfg.seed,
                                          batch_size=cfg.batch_size, layer=layer, max_seq_len=cfg.max_seq_len,
                                          progress=progress)
            embs.append(emb)
            empties.append(~prep.keep_cells)
            mod = prep.modality.name
            info.update(modality_reason=prep.modality_reason, n_empty_dropped=int((~prep.keep_cells).sum()))
        else:  # no embedding: a cell is empty when it has no count on the genes used
            empties.append(np.asarray(part.X.sum(axis=1)).ravel() <= 0)
        part.obs[modality_key] = mod if mod is not None else "unknown"
        part.obs[batch_key] = name
        slide_info[name] = {**info, "modality": str(part.obs[modality_key].iloc[0])}
    order = {col: list(dict.fromkeys(p.obs[col].iloc[0] for p in parts)) for col in (batch_key, modality_key)}
    out = ad.concat(parts, join="outer", merge=None, index_unique="-", keys=names, label=None)
    del parts  # a copy of every slide's counts, now in `out` (1.2 GB per 1M cells x 150 expressed genes)
    for col in (batch_key, modality_key):
        out.obs[col] = pd.Categorical(out.obs[col].astype(str), categories=order[col])
    for c in out.obs.columns:  # outer joins leave object columns with NaN: keep them h5ad-writable
        if out.obs[c].dtype == object:
            out.obs[c] = out.obs[c].astype(str).where(out.obs[c].notna(), None).astype("category")
    empty_rows = np.concatenate(empties)
    emb = np.vstack(embs).astype(np.float32) if embs else None
    if emb is not None:
        out.obsm[key_added] = emb
    if empty_rows.any():
        out.obs[f"{key_added}_empty"] = empty_rows
    if all(c is not None for c in coords):
        out.obsm["spatial"] = np.vstack(coords)
    rep = key_added
    if not cfg.is_raw_embedding:
        rep = f"{key_added}_integrated"
        ok = ~empty_rows
        expr = None
        if cfg.features != "embedding":  # the genes the model saw, PCs on all slides together
            # the slide itself when no cell is empty: a view's X would be materialised, another copy
            expr = expression_pcs(out if ok.all() else out[ok], n_top_genes=None, n_pcs=cfg.n_pcs, seed=cfg.seed)
        rows = slice(None) if ok.all() else ok  # views, not copies, when no cell was dropped
        F = integrated_features(embedding=None if emb is None else emb[rows], expression=expr,
                                batch=out.obs[batch_key].to_numpy()[rows],
                                coords=out.obsm["spatial"][rows] if "spatial" in out.obsm else None,
                                features=cfg.features, embedding_share=cfg.embedding_share, per_slide=cfg.per_slide,
                                spatial_weight=cfg.spatial_weight, spatial_k=cfg.spatial_k, n_pcs=cfg.n_pcs,
                                seed=cfg.seed)
        full = np.full((out.n_obs, F.shape[1]), np.nan, dtype=np.float32)
        full[ok] = F
        out.obsm[rep] = full
    params = {"batch_key": batch_key, "modality_key": modality_key, "batch_names": names, "gene_cols": gene_cols,
              "modalities": modalities, "counts_layers": counts_layers, "empty": empty, "layer": layer,
              **{k: v for k, v in cfg.as_dict().items() if k not in ("n_clusters", "resolution")}}
    out.uns[key_added] = run_record(
        params, model=model, n_shared_genes=int(n_shared), n_genes_used=int(out.n_vars), slides=slide_info,
        integrated_key=rep, seconds=round(time.time() - t0, 2))
    if cfg.n_clusters is not None or cfg.resolution is not None:
        cluster(out, use_rep=rep, n_clusters=cfg.n_clusters, resolution=cfg.resolution, key_added=cluster_key,
                seed=cfg.seed)
    return out
