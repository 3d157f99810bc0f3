"""``tl.cluster``: domains / clusters from an embedding into a categorical ``obs`` column."""

from __future__ import annotations

import numpy as np

from ..records import run_record


def check_domains_request(adata, *, n_clusters: int | None, method: str, resolution: float | None = None) -> None:
    """What spatial domains need, checked in seconds before the slide is embedded.

    Coordinates present and finite, and a clustering request that can run on this many spots.
    """
    from ..cluster import check_request
    from ..errors import InputError
    from ..io import get_coordinates

    try:
        get_coordinates(adata, required=True)
    except InputError as e:
        raise InputError(f"{e} Spatial domains need them; for clusters without a spatial view run `spgpt embed` "
                         "then `spgpt cluster --smooth-k 0`.") from None
    check_request(adata.n_obs, n_clusters=n_clusters, resolution=resolution, method=method)


def cluster(adata, *, use_rep: str = "X_spgpt", n_clusters: int | None = None, resolution: float | None = None,
            method: str = "leiden", smooth_k: int = 0, key_added: str = "spgpt_domain", seed: int = 0):
    """Cluster ``obsm[use_rep]`` into a categorical ``obs[key_added]`` (+ colours, parameters)."""
    import pandas as pd

    from ..cluster import cluster_embedding
    from ..errors import InputError
    from ..io import get_coordinates

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
    from ..plotting import category_colors

    adata.uns[f"{key_added}_colors"] = category_colors(len(cats))
    adata.uns[key_added] = run_record({"use_rep": use_rep, "n_clusters": n_clusters, "resolution": resolution, **info})
    return adata
