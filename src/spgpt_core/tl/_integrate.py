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
* ``uns[key_added]``: parameters, model summary, versions, per-slide gene matches;
* with ``n_clusters`` or ``resolution``: Leiden clusters of the embedding in ``obs[cluster_key]``.
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
from ..pp.counts import with_counts
from ..pp.hvg import DEFAULT_N_TOP_GENES, highly_variable_mask
from ..pp.vocab import resolve_genes
from ..progress import Progress
from ..records import run_record
from ._cluster import cluster
from ._embed import compute_embedding

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


def integrate(slides, model="default", *, batch_names=None, batch_key: str = "batch", modality_key: str = "modality",
              modalities=None, gene_cols=None, key_added: str = "X_spgpt", n_top_genes: int | None = DEFAULT_N_TOP_GENES,
              batch_size: int = 64, max_seq_len: int | None = None, seed: int = 0, device: str | None = None,
              empty: str = "drop", counts_layers=None, layer: int = -1, n_clusters: int | None = None, resolution: float | None = None,
              cluster_key: str = "spgpt_cluster", progress: Progress | None = None):
    """Embed ``slides`` (AnnData list) jointly on their shared genes; returns a **new** concatenated AnnData
    (the inputs are not modified).

    With more shared genes than ``n_top_genes``, every slide is embedded on the same
    ``n_top_genes`` highly variable genes, chosen on all slides together (None: every shared gene).
    ``counts_layers``: the layer holding each slide's raw counts (one name for all, or one per slide;
    None: ``X``), for slides whose ``X`` is normalised; the output's ``X`` holds those counts.
    ``layer``: the transformer layer whose ``<cls>`` state is the embedding (-1: the final one).
    ``batch_size`` / ``max_seq_len``: cells per batch and tokens per cell (memory; see :func:`embed`).
    ``n_clusters`` / ``resolution``: also cluster the embedding (Leiden, :func:`spgpt_core.tl.cluster`)
    into ``obs[cluster_key]``."""
    slides = list(slides)
    if len(slides) < 2:
        raise InputError(f"integration needs at least 2 slides (got {len(slides)}); pass two or more inputs")
    names = _names(len(slides), batch_names)
    gene_cols = _per_slide(gene_cols, len(slides), "gene column")
    modalities = _per_slide(modalities, len(slides), "modality")
    counts_layers = _per_slide(counts_layers, len(slides), "counts layer")
    slides = [with_counts(a, layer, f"slide {name}") for a, layer, name in zip(slides, counts_layers, names)]
    model = load_model(model, device=choose_device(device, model))
    t0 = time.time()
    ids, matches = shared_vocab_genes(slides, model.vocab, gene_cols)
    if len(ids) < MIN_SHARED_GENES:
        per = "; ".join(f"{n}: {m.n_matched} matched" for n, m in zip(names, matches))
        raise InputError(
            f"the slides share only {len(ids)} vocabulary genes ({per}); a joint embedding needs at least "
            f"{MIN_SHARED_GENES}. Check that they are of comparable species / panels, or pass --gene-col naming "
            "each slide's symbol column"
        )
    symbols = [model.vocab.tokens[i] for i in ids]
    parts = []
    for a, m in zip(slides, matches):
        pos = {int(v): j for j, v in enumerate(m.vocab_ids) if v >= 0}
        cols = np.array([pos[int(i)] for i in ids])
        sub = a[:, cols]
        sub = sub.to_memory() if sub.isbacked else sub.copy()
        X = sp.csr_matrix(sub.X, dtype=np.float32)
        parts.append(ad.AnnData(X=X, obs=sub.obs.copy(), var=pd.DataFrame(index=pd.Index(symbols))))
    hv = highly_variable_mask(ad.concat(parts, index_unique="-"), n_top_genes)
    if hv is not None:
        parts = [p[:, hv].copy() for p in parts]
        log.info("embedding on the %d most variable of %d shared genes (chosen on all slides)", int(hv.sum()), len(ids))
    embs, empties, coords, slide_info = [], [], [], {}
    for name, a, m, mod, part in zip(names, slides, matches, modalities, parts):
        emb, prep = compute_embedding(part, model, modality=mod, empty=empty, seed=seed, batch_size=batch_size, layer=layer,
                                      max_seq_len=max_seq_len, progress=progress)
        part.obs[modality_key] = prep.modality.name
        part.obs[batch_key] = name
        embs.append(emb)
        empties.append(~prep.keep_cells)
        xy = get_coordinates(a)
        coords.append(xy)
        slide_info[name] = {"n_cells": int(a.n_obs), "modality": prep.modality.name,
                            "modality_reason": prep.modality_reason, "gene_match": m.to_dict(),
                            "n_empty_dropped": int((~prep.keep_cells).sum())}
    out = ad.concat(parts, join="outer", merge=None, index_unique="-", keys=names, label=None)
    for col in (batch_key, modality_key):
        out.obs[col] = pd.Categorical(out.obs[col].astype(str),
                                      categories=list(dict.fromkeys(p.obs[col].iloc[0] for p in parts)))
    for c in out.obs.columns:  # outer joins leave object columns with NaN: keep them h5ad-writable
        if out.obs[c].dtype == object:
            out.obs[c] = out.obs[c].astype(str).where(out.obs[c].notna(), None).astype("category")
    out.obsm[key_added] = np.vstack(embs).astype(np.float32)
    empty_rows = np.concatenate(empties)
    if empty_rows.any():
        out.obs[f"{key_added}_empty"] = empty_rows
    if all(c is not None for c in coords):
        out.obsm["spatial"] = np.vstack(coords)
    out.uns[key_added] = run_record(
        {"batch_key": batch_key, "modality_key": modality_key, "batch_names": names, "gene_cols": gene_cols,
         "modalities": modalities, "counts_layers": counts_layers, "n_top_genes": n_top_genes,
         "batch_size": batch_size, "max_seq_len": max_seq_len, "seed": seed, "empty": empty, "layer": layer},
        model=model, n_shared_genes=int(len(ids)), n_genes_used=int(hv.sum()) if hv is not None else int(len(ids)), slides=slide_info, seconds=round(time.time() - t0, 2))
    if n_clusters is not None or resolution is not None:
        cluster(out, use_rep=key_added, n_clusters=n_clusters, resolution=resolution, key_added=cluster_key, seed=seed)
    return out
