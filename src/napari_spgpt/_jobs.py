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
              with_matrix: bool = True):
    """An AnnData with what an analysis reads: ``X`` (or only the counts layer / ``.raw`` it uses), ``var``,
    ``obs``, the named ``obsm`` entries and ``uns`` without images. Shares the arrays (pickling copies them)."""
    import anndata as ad  # ~2 s on import: only inside a worker

    if adata.isbacked:
        adata = adata.to_memory()
    uns = {k: v for k, v in adata.uns.items() if k != "spatial"}
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict):  # scale factors, not the images
        uns["spatial"] = {lib: {k: v for k, v in d.items() if k != "images"} if isinstance(d, dict) else d
                          for lib, d in spatial.items()}
    kept = {k: adata.obsm[k] for k in obsm if k in adata.obsm}
    if not with_matrix:
        import scipy.sparse as sp

        return ad.AnnData(X=sp.csr_matrix((adata.n_obs, 0), dtype="float32"), obs=adata.obs[[]].copy(),
                          uns={}, obsm=kept)
    layers = {counts_layer: adata.layers[counts_layer]} if counts_layer and counts_layer in adata.layers else {}
    raw = None
    if counts_layer == "raw" and adata.raw is not None:
        raw = {"X": adata.raw.X, "var": adata.raw.var}
    return ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var, uns=uns, obsm=kept, layers=layers, raw=raw)


def domains_job(adata, model, config, *, gene_col: str | None, counts_layer: str | None, device: str,
                key_added: str, embedding_key: str, reuse: bool, want_umap: bool, progress=None) -> dict[str, Any]:
    """``tl.domains`` (or, with ``reuse``, ``tl.cluster`` of the existing embedding) and the UMAP view;
    returns the keys they wrote: ``{"obs": ..., "obsm": ..., "uns": ..., "umap": xy or None}``."""
    from spgpt_core import tl  # torch, scanpy: only in the child

    if reuse:
        progress.start(0, "finding domains")
        tl.cluster(adata, use_rep=embedding_key, n_clusters=config.n_clusters, resolution=config.resolution,
                   method=config.method, smooth_k=config.smooth_k, key_added=key_added, seed=config.seed)
    else:
        tl.domains(adata, model, config=config, gene_col=gene_col, counts_layer=counts_layer, device=device,
                   key_added=key_added, embedding_key=embedding_key, progress=progress)
    xy = None
    if want_umap:
        from ._umap import umap_2d

        rep = embedding_key if embedding_key in adata.obsm else f"{key_added}_features"
        progress.start(0, "UMAP")
        xy = umap_2d(adata.obsm[rep], seed=config.seed)
    empty = f"{embedding_key}_empty"
    out: dict[str, Any] = {"obs": {key_added: adata.obs[key_added].values}, "obsm": {}, "uns": {}, "umap": xy}
    out["uns"][key_added] = adata.uns[key_added]
    out["uns"][f"{key_added}_colors"] = adata.uns[f"{key_added}_colors"]
    if not reuse and embedding_key in adata.obsm and embedding_key in adata.uns:
        out["obsm"][embedding_key] = adata.obsm[embedding_key]
        out["uns"][embedding_key] = adata.uns[embedding_key]
        out["obs"][empty] = adata.obs[empty].to_numpy() if empty in adata.obs else None
    return out
