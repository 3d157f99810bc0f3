"""What the widgets run in a child process (``spgpt_core.child.run_in_child``): no Qt, no napari.

Steps that hold the GIL for seconds to minutes at 1M cells (pynndescent's numba kNN, igraph Leiden,
scikit-learn's mixtures, UMAP) would freeze napari's event loop if they ran in the widget's worker
thread. Here they run in a spawned process that gets a lean copy of the slide (its matrices, ``obs``,
coordinates: no image, no other results) and returns only the results, which the widget stages and
commits on the GUI thread as before. Cancel terminates the process: nothing comes back.
"""

from __future__ import annotations

from typing import Any


def lean_copy(adata, *, counts_layer: str | None = None, obsm: tuple[str, ...] = ("spatial",),
              with_matrix: bool = True) -> dict[str, Any]:
    """What an analysis reads, as the parts of an AnnData (:func:`as_anndata` rebuilds it in the child):
    ``X`` (or only the counts layer / ``.raw`` it uses), ``var``, the numeric and categorical ``obs``
    columns, the named ``obsm`` entries and ``uns`` without images. Shares the arrays.

    Cell names are left out (a range index): pickling a million Python strings would hold this process's
    GIL, and so freeze napari, for about a second; every result comes back by position."""
    import pandas as pd

    if adata.isbacked:
        adata = adata.to_memory()
    uns = {k: v for k, v in adata.uns.items() if k != "spatial"}
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict):  # scale factors, not the images
        uns["spatial"] = {lib: {k: v for k, v in d.items() if k != "images"} if isinstance(d, dict) else d
                          for lib, d in spatial.items()}
    obs = pd.DataFrame({c: adata.obs[c].values for c in adata.obs.columns
                        if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)
                        or pd.api.types.is_numeric_dtype(adata.obs[c])}, index=pd.RangeIndex(adata.n_obs))
    kept = {k: adata.obsm[k] for k in obsm if k in adata.obsm}
    parts: dict[str, Any] = {"obs": obs, "obsm": {k: v.to_numpy() if isinstance(v, pd.DataFrame) else v
                                                  for k, v in kept.items()},
                             "n_obs": adata.n_obs}
    if with_matrix:
        parts.update(X=adata.X, var=adata.var, uns=uns,
                     layers={counts_layer: adata.layers[counts_layer]} if counts_layer and
                     counts_layer in adata.layers else {})
        if counts_layer == "raw" and adata.raw is not None:
            parts["raw"] = {"X": adata.raw.X, "var": adata.raw.var}
    return parts


def as_anndata(parts: dict[str, Any]):
    """The AnnData of :func:`lean_copy`'s parts (in the child), cells named by position."""
    import anndata as ad
    import scipy.sparse as sp

    parts = dict(parts)
    n = parts.pop("n_obs")
    obs = parts.pop("obs")
    obs.index = obs.index.astype(str)
    if "X" not in parts:
        parts["X"] = sp.csr_matrix((n, 0), dtype="float32")
    return ad.AnnData(obs=obs, **parts)


def domains_job(adata: dict, model, config, *, gene_col: str | None, counts_layer: str | None, device: str,
                key_added: str, embedding_key: str, reuse: bool, want_umap: bool, progress=None) -> dict[str, Any]:
    """``tl.domains`` (or, with ``reuse``, ``tl.cluster`` of the existing embedding) and the UMAP view, on
    the slide's :func:`lean_copy`;
    returns the keys they wrote: ``{"obs": ..., "obsm": ..., "uns": ..., "umap": xy or None}``."""
    from spgpt_core import tl  # torch, scanpy: only in the child

    adata = as_anndata(adata)
    features_key = f"{key_added}_features"
    if reuse and config.features == "embedding" and config.spatial_weight <= 0:  # `spgpt cluster` of it
        progress.start(0, "finding domains")
        tl.cluster(adata, use_rep=embedding_key, n_clusters=config.n_clusters, resolution=config.resolution,
                   method=config.method, smooth_k=config.smooth_k, spatial_prior=config.spatial_prior,
                   key_added=key_added, seed=config.seed)
    else:  # with reuse, features from the same embedding and the slide's expression: no model
        tl.domains(adata, None if reuse else model, config=config, gene_col=gene_col, counts_layer=counts_layer,
                   device=device, key_added=key_added, embedding_key=embedding_key, reuse_embedding=reuse,
                   progress=progress)
    xy = None
    if want_umap:
        from ._umap import umap_2d

        # of what the domains were found in: the features when not the embedding alone
        rep = features_key if features_key in adata.obsm else embedding_key
        progress.start(0, "UMAP")
        xy = umap_2d(adata.obsm[rep], seed=config.seed)
    empty = f"{embedding_key}_empty"
    out: dict[str, Any] = {"obs": {key_added: adata.obs[key_added].values}, "obsm": {}, "uns": {}, "umap": xy}
    # None: this run clustered the embedding alone, an earlier run's features must go
    out["obsm"][features_key] = adata.obsm[features_key] if features_key in adata.obsm else None
    out["uns"][key_added] = adata.uns[key_added]
    out["uns"][f"{key_added}_colors"] = adata.uns[f"{key_added}_colors"]
    if not reuse and embedding_key in adata.obsm and embedding_key in adata.uns:
        out["obsm"][embedding_key] = adata.obsm[embedding_key]
        out["uns"][embedding_key] = adata.uns[embedding_key]
        out["obs"][empty] = adata.obs[empty].to_numpy() if empty in adata.obs else None
    return out
