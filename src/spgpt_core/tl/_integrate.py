"""``tl.integrate``: zero-shot joint embedding of several slides on their shared genes (Methods 4.3)."""

from __future__ import annotations

from ..hvg import DEFAULT_N_TOP_GENES
from ..progress import Progress


def integrate(slides, model="default", *, batch_names=None, batch_key: str = "batch", modality_key: str = "modality",
              modalities=None, gene_cols=None, key_added: str = "X_spgpt", n_top_genes: int | None = DEFAULT_N_TOP_GENES,
              batch_size: int = 64, seed: int = 0, device: str | None = None, empty: str = "drop", n_clusters: int | None = None,
              resolution: float | None = None, cluster_key: str = "spgpt_cluster", counts_layers=None,
              progress: Progress | None = None):
    """Embed ``slides`` jointly; returns a **new** AnnData (the inputs are not modified).

    ``obs[batch_key]`` and ``obs[modality_key]`` record each cell's slide and technology,
    ``obsm[key_added]`` holds the embedding. With ``n_clusters`` or ``resolution`` the embedding is
    also clustered (Leiden, :func:`spgpt_core.tl.cluster`) into ``obs[cluster_key]``. ``counts_layers``
    names the layer(s) holding raw counts when the slides' ``X`` is normalised.
    See :mod:`spgpt_core.integration`.
    """
    from ..integration import integrate as _integrate
    from ._cluster import cluster

    out = _integrate(slides, model, batch_names=batch_names, batch_key=batch_key, modality_key=modality_key,
                     modalities=modalities, gene_cols=gene_cols, key_added=key_added, n_top_genes=n_top_genes,
                     batch_size=batch_size, seed=seed, device=device, empty=empty, counts_layers=counts_layers,
                     progress=progress)
    if n_clusters is not None or resolution is not None:
        cluster(out, use_rep=key_added, n_clusters=n_clusters, resolution=resolution, key_added=cluster_key, seed=seed)
    return out
