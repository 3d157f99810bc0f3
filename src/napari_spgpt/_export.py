"""Writing a slide's results (no Qt): ``.h5ad``, a per-spot ``.csv`` and SpatialData ``.zarr``.

All three go through spgpt_core's atomic writers (``spgpt_core.atomic``: temp file + rename), refuse to
replace an existing path unless ``overwrite=True`` (the widget asks the user first), and never
write over the ``.h5ad`` the slide was read from. For a slide read from a SpatialData store, the
``.zarr`` export is that store (images, shapes, other tables) with the updated table; exporting to
the store itself rewrites only that table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: obsm keys written as result columns in the CSV (DataFrames: one column per type / gene).
RESULT_OBSM = ("spgpt_proportions", "spgpt_imputed", "spgpt_imputed_qc")


def export_h5ad(slide, path: str | Path, *, overwrite: bool = False) -> Path:
    from spgpt_core.io import write_h5ad

    adata = slide.adata.to_memory() if slide.adata.isbacked else slide.adata
    source = slide.source if slide.kind == "h5ad" else None
    return write_h5ad(adata, path, overwrite=overwrite, input_path=source)


def results_table(slide, *, include_embedding: bool = False) -> pd.DataFrame:
    """One row per cell/spot: name, coordinates, obs (with domains, dominant types) and result columns."""
    adata = slide.adata
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=pd.Index(adata.obs_names.astype(str), name="spot"))
    for col in adata.obs.columns:
        df[str(col)] = adata.obs[col].to_numpy()
    for key in RESULT_OBSM:
        if key in adata.obsm:
            block = adata.obsm[key]
            cols = block.columns if isinstance(block, pd.DataFrame) else range(np.asarray(block).shape[1])
            values = np.asarray(block)
            for j, c in enumerate(cols):
                df[f"{key}:{c}"] = values[:, j]
    if include_embedding and "X_spgpt" in adata.obsm:
        emb = np.asarray(adata.obsm["X_spgpt"])
        for j in range(emb.shape[1]):
            df[f"X_spgpt_{j}"] = emb[:, j]
    return df


def export_csv(slide, path: str | Path, *, overwrite: bool = False, include_embedding: bool = False) -> Path:
    from spgpt_core.atomic import atomic_path
    from spgpt_core.errors import InputError

    path = Path(path).expanduser()
    if path.suffix.lower() != ".csv":
        raise InputError(f"Output {path} must end in .csv.")
    if path.exists() and not overwrite:
        raise InputError(f"Output {path} already exists; choose another name or confirm overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            results_table(slide, include_embedding=include_embedding).to_csv(tmp)
    except Exception as e:
        raise InputError(f"Could not write {path} ({type(e).__name__}: {e}); nothing was written.") from e
    return path


def export_zarr(slide, path: str | Path, *, overwrite: bool = False) -> Path:
    """SpatialData store with the slide's table (and, for a store-backed slide, everything else)."""
    from spgpt_core.errors import InputError
    from spgpt_core.io import to_spatialdata, write_spatialdata

    path = Path(path).expanduser()
    if path.suffix.lower() != ".zarr":
        raise InputError(f"Output {path} must end in .zarr.")
    adata = slide.adata.to_memory() if slide.adata.isbacked else slide.adata
    if slide.kind != "zarr":
        return write_spatialdata(to_spatialdata(adata), path, overwrite=overwrite)

    import spatialdata as sd

    source = Path(slide.source)
    same = path.exists() and path.resolve() == source.resolve()
    if path.exists() and not overwrite:
        raise InputError(f"Output {path} already exists; choose another name or confirm overwriting.")
    if same:
        return _replace_table_in_store(source, slide.table, adata)
    try:
        sdata = sd.read_zarr(source)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"Could not re-read the slide's store {source} ({type(e).__name__}: {e}).") from e
    sdata.tables[slide.table] = adata
    return write_spatialdata(sdata, path, overwrite=overwrite)



def _replace_table_in_store(store: Path, name: str, adata) -> Path:
    """Rewrite one table of a SpatialData store in place, never leaving the store without it.

    spatialdata will not overwrite an element of the store it is backed by (scverse/spatialdata
    discussion #520), so the new table is first written beside the old one, then the old one is
    deleted and written again under its own name, and the spare copy is removed."""
    import spatialdata as sd

    from spgpt_core.errors import InputError

    spare = f"{name}_spgpt_new"
    try:
        sdata = sd.read_zarr(store, selection=("tables",))
        if spare in sdata.tables:
            sdata.delete_element_from_disk(spare)
        sdata.tables[spare] = adata
        sdata.write_element(spare)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"Could not write table '{name}' into {store} ({type(e).__name__}: {e}); the store is "
                         "unchanged.") from e
    try:
        sdata.tables[name] = adata
        sdata.delete_element_from_disk(name)
        sdata.write_element(name)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"Could not replace table '{name}' in {store} ({type(e).__name__}: {e}); the new table "
                         f"is saved in the store as '{spare}'.") from e
    sdata.delete_element_from_disk(spare)
    return store
