"""Write command results next to the input's data without touching the input.

For an ``.h5ad`` input the output is a byte copy of the input file into which only the new keys
(``obsm``, ``obs`` columns, ``uns``) are written with ``anndata.io.write_elem``: memory stays
bounded (the expression matrix is never loaded) and everything else in the file is preserved.
Other inputs (SpatialData tables, in-memory AnnData) are written whole with :func:`io.write_h5ad`.
Both paths write a temporary file and rename it into place, so a crash never leaves a half file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import InputError
from .io import _check_free, get_coordinates, to_spatialdata, write_atomically, write_h5ad, write_spatialdata


def write_results(adata, out, *, input_path=None, obsm: dict | None = None, obs: dict | None = None,
                  uns: dict | None = None, overwrite: bool = False) -> Path:
    """Save ``adata`` (+ new keys) to ``out`` (.h5ad); ``input_path`` is never written."""
    obsm, obs, uns = obsm or {}, obs or {}, uns or {}
    out = Path(out).expanduser()
    if out.suffix != ".h5ad":
        raise InputError(f"output {out} must end in .h5ad")
    src = Path(input_path).expanduser() if input_path is not None else None
    if src is not None and src.exists() and out.resolve() == src.resolve():
        raise InputError(f"refusing to write over the input file {out}; choose another --out path")
    _check_free(out, overwrite)
    if src is None or src.suffix != ".h5ad" or not src.is_file():
        for k, v in obsm.items():
            adata.obsm[k] = v
        for k, v in obs.items():
            adata.obs[k] = v
        for k, v in uns.items():
            adata.uns[k] = v
        if adata.isbacked:
            adata = adata.to_memory()
        return write_h5ad(adata, out, overwrite=overwrite, input_path=input_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
            with h5py.File(tmp, "r+") as f:
                for k, v in obsm.items():
                    _replace(f, f"obsm/{k}", np.asarray(v))
                if obs:
                    df = ad.io.read_elem(f["obs"])
                    for k, v in obs.items():
                        df[k] = v.values if isinstance(v, pd.Series) else v
                    _replace(f, "obs", df)
                for k, v in uns.items():
                    _replace(f, f"uns/{k}", v)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"could not write {out} ({type(e).__name__}: {e}); nothing was written") from e
    return out


def _replace(f, key: str, value) -> None:
    parent, _, name = key.rpartition("/")
    group = f.require_group(parent) if parent else f
    if name in group:
        del group[name]
    ad.io.write_elem(group, name, value)


#: obsm keys written as result columns of the results table (DataFrames: one column per type / gene).
RESULT_OBSM = ("spgpt_proportions", "spgpt_imputed", "spgpt_imputed_qc")


def results_table(adata, *, include_embedding: bool = False, embedding_key: str = "X_spgpt") -> pd.DataFrame:
    """One row per cell/spot: name, coordinates, every obs column (domains, dominant types, ...) and the
    result blocks of :data:`RESULT_OBSM` as ``KEY:COLUMN`` columns (and the embedding, when asked)."""
    xy = get_coordinates(adata, required=True)
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
    if include_embedding:
        if embedding_key not in adata.obsm:
            raise InputError(f"obsm['{embedding_key}'] not found (have: {', '.join(map(str, adata.obsm)) or 'none'}); "
                             "embed the slide first or leave the embedding out")
        emb = np.asarray(adata.obsm[embedding_key])
        for j in range(emb.shape[1]):
            df[f"{embedding_key}_{j}"] = emb[:, j]
    return df


def write_results_csv(adata, out, *, overwrite: bool = False, include_embedding: bool = False) -> Path:
    """The :func:`results_table` as a ``.csv`` (written atomically; an existing file needs ``overwrite``)."""
    out = Path(out).expanduser()
    if out.suffix.lower() != ".csv":
        raise InputError(f"output {out} must end in .csv")
    _check_free(out, overwrite)
    return write_atomically(out, results_table(adata, include_embedding=include_embedding).to_csv)


def write_results_zarr(adata, out, *, source_store=None, table: str | None = None, overwrite: bool = False) -> Path:
    """A SpatialData ``.zarr`` with ``adata`` as its table. For a slide read from a store
    (``source_store``, its ``table``), the output is that store (images, shapes, other tables) with the
    table replaced; writing to the store itself rewrites only that table."""
    out = Path(out).expanduser()
    if out.suffix.lower() != ".zarr":
        raise InputError(f"output {out} must end in .zarr")
    if source_store is None:
        return write_spatialdata(to_spatialdata(adata), out, overwrite=overwrite)
    import spatialdata as sd  # optional extra: spatialdata

    source = Path(source_store)
    if out.exists() and not overwrite:
        raise InputError(f"Output {out} already exists; pass --overwrite (overwrite=True) or choose another path.")
    if out.exists() and out.resolve() == source.resolve():
        return _replace_table_in_store(source, table, adata)
    try:
        sdata = sd.read_zarr(source)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"Could not re-read the slide's store {source} ({type(e).__name__}: {e}).") from e
    sdata.tables[table] = adata
    return write_spatialdata(sdata, out, overwrite=overwrite)


def _replace_table_in_store(store: Path, name: str, adata) -> Path:
    """Rewrite one table of a SpatialData store in place, never leaving the store without it.

    spatialdata will not overwrite an element of the store it is backed by (scverse/spatialdata
    discussion #520), so the new table is first written beside the old one, then the old one is
    deleted and written again under its own name, and the spare copy is removed."""
    import spatialdata as sd  # optional extra: spatialdata

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
