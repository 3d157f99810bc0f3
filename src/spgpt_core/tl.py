"""Scanpy-style tools: each verb writes its result into the AnnData under ``key_added`` and
records its parameters, the model and the versions in ``adata.uns[key_added]``."""

from __future__ import annotations

import numpy as np

from .progress import Progress


def _h5ad_safe(value):
    """uns values that h5ad can store: None -> 'None', tuples -> lists, numpy scalars -> python."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_h5ad_safe(v) for v in value] if value else []
    if value is None:
        return "None"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool, np.ndarray)):
        return value
    return str(value)


def embed(adata, model="default", *, key_added: str = "X_spgpt", gene_col: str | None = None,
          modality: str | None = None, batch_size: int = 64, chunk_size: int = 4096, seed: int = 0,
          device: str = "auto", empty: str = "error", progress: Progress | None = None):
    """Zero-shot spot embeddings into ``adata.obsm[key_added]`` (L2-normalised ``<cls>`` states).

    ``model`` is an :class:`~spgpt_core.SpGPT` or anything :func:`~spgpt_core.load_model` takes.
    With ``empty="drop"`` cells that express no vocabulary gene get NaN rows and
    ``obs[key_added + '_empty']`` marks them. Returns ``adata`` (modified in place).
    """
    from .embed import embed as _embed
    from .pretrained import load_model, versions

    model = load_model(model, device=device)
    emb, prep = _embed(adata, model, gene_col=gene_col, modality=modality, batch_size=batch_size,
                       chunk_size=chunk_size, seed=seed, empty=empty, progress=progress)
    adata.obsm[key_added] = emb
    if (~prep.keep_cells).any():
        adata.obs[f"{key_added}_empty"] = ~prep.keep_cells
    adata.uns[key_added] = _h5ad_safe({
        "params": {"gene_col": gene_col, "modality": prep.modality.name, "modality_reason": prep.modality_reason,
                   "batch_size": batch_size, "seed": seed, "device": str(model.device), "empty": empty},
        "gene_match": prep.match.to_dict(),
        "normalization": prep.norm_info,
        "summary": prep.summary,
        "model": model.describe(),
        "versions": versions(),
    })
    return adata


def cluster(adata, *, use_rep: str = "X_spgpt", n_clusters: int | None = None, resolution: float | None = None,
            method: str = "leiden", smooth_k: int = 0, key_added: str = "spgpt_domain", seed: int = 0):
    """Cluster ``obsm[use_rep]`` into a categorical ``obs[key_added]`` (+ colours, parameters)."""
    import pandas as pd

    from .cluster import cluster_embedding
    from .errors import InputError
    from .io import get_coordinates

    if use_rep not in adata.obsm:
        raise InputError(f"obsm['{use_rep}'] not found (have: {list(adata.obsm)}); run `spgpt embed` first or "
                         "pass --use-rep with an existing embedding")
    emb = np.asarray(adata.obsm[use_rep])
    ok = np.isfinite(emb).all(axis=1)
    coords = get_coordinates(adata, required=smooth_k > 0)
    labels, info = cluster_embedding(emb[ok], n_clusters=n_clusters, resolution=resolution, method=method,
                                     coords=None if coords is None else coords[ok], smooth_k=smooth_k, seed=seed)
    full = np.full(adata.n_obs, None, dtype=object)
    full[ok] = labels.astype(str)
    cats = sorted({str(x) for x in labels}, key=lambda s: (len(s), s))
    adata.obs[key_added] = pd.Categorical(full, categories=cats)
    from .plotting import category_colors

    adata.uns[f"{key_added}_colors"] = category_colors(len(cats))
    adata.uns[key_added] = _h5ad_safe({"params": {"use_rep": use_rep, "n_clusters": n_clusters,
                                                  "resolution": resolution, **info}})
    return adata
