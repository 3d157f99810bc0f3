"""Writing a slide's results (no Qt): ``.h5ad``, a per-spot ``.csv`` and SpatialData ``.zarr``.

All three go through spgpt_core's atomic writers (``spgpt_core.atomic``: temp file + rename), refuse to
replace an existing path unless ``overwrite=True`` (the widget asks the user first), and never
write over the ``.h5ad`` the slide was read from. For a slide read from a SpatialData store, the
``.zarr`` export is that store (images, shapes, other tables) with the updated table; exporting to
the store itself rewrites only that table.

spgpt_core.io (anndata) and spatialdata are imported when a file is written so napari starts fast.
"""

from __future__ import annotations

from pathlib import Path


def export_h5ad(slide, path: str | Path, *, overwrite: bool = False) -> Path:
    from spgpt_core.io import write_h5ad  # anndata (~2 s on import): only when a file is written

    adata = slide.adata.to_memory() if slide.adata.isbacked else slide.adata
    source = slide.source if slide.kind == "h5ad" else None
    return write_h5ad(adata, path, overwrite=overwrite, input_path=source)


def export_csv(slide, path: str | Path, *, overwrite: bool = False, include_embedding: bool = False) -> Path:
    """The per-spot results table, as ``spgpt export SLIDE --out PATH.csv`` writes it."""
    from spgpt_core.output import write_results_csv  # anndata (~2 s on import): only when a file is written

    adata = slide.adata.to_memory() if slide.adata.isbacked else slide.adata
    return write_results_csv(adata, path, overwrite=overwrite, include_embedding=include_embedding)


def export_zarr(slide, path: str | Path, *, overwrite: bool = False) -> Path:
    """SpatialData store with the slide's table (and, for a store-backed slide, everything else), as
    ``spgpt export SLIDE --out PATH.zarr`` writes it."""
    from spgpt_core.output import write_results_zarr  # anndata (~2 s): only when a file is written

    adata = slide.adata.to_memory() if slide.adata.isbacked else slide.adata
    store = slide.source if slide.kind == "zarr" else None
    return write_results_zarr(adata, path, source_store=store, table=slide.table, overwrite=overwrite)
