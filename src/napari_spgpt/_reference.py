"""Reading a single-cell (or spatial) reference ``.h5ad`` for the Deconvolve / Impute / QC widgets.

The widgets list the reference's label columns and genes from ``obs`` / ``var`` only (cheap, no
matrix read); the worker then reads the whole file. anndata and h5py are imported when a reference is
read so napari starts fast.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
from spgpt_core.errors import InputError

LABEL_HINTS = ("cell_type", "celltype", "cell type", "cluster", "subclass", "annotation", "label", "type")


def _error(path, e):
    return InputError(f"Could not read the reference {path} as an .h5ad file ({type(e).__name__}: {e}); "
                      "choose an AnnData .h5ad with cells x genes and a cell-type column.")


@lru_cache(maxsize=8)
def _obs_var(path: str, mtime: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    # anndata (~2 s on import), h5py: only when a reference is chosen
    import anndata as ad
    import h5py

    try:
        with h5py.File(path, "r") as f:
            obs = ad.io.read_elem(f["obs"])
            var = ad.io.read_elem(f["var"])
    except Exception as e:  # noqa: BLE001
        raise _error(path, e) from e
    return obs, var


def _read_obs_var(path) -> tuple[pd.DataFrame, pd.DataFrame]:
    p = Path(str(path)).expanduser()
    if not p.is_file() or p.suffix.lower() != ".h5ad":
        raise InputError(f"Reference {p} is not an .h5ad file; choose the reference's .h5ad.")
    return _obs_var(str(p.resolve()), p.stat().st_mtime)


def obs_and_genes(path: str | Path) -> tuple[pd.DataFrame, pd.Index]:
    obs, var = _read_obs_var(path)
    return obs, pd.Index(var.index.astype(str))


def gene_name_columns(path: str | Path) -> list[str]:
    """The reference's text ``var`` columns, any of which may hold its gene symbols."""
    _, var = _read_obs_var(path)
    return [str(c) for c in var.columns if var[c].dtype == object or isinstance(var[c].dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(var[c].dtype)]


def label_columns(obs: pd.DataFrame, max_categories: int = 500) -> list[str]:
    """Columns that look like cell-type labels (categorical / string / integer codes such as ``cluster_id``,
    2..max categories), best first."""
    cols = []
    for c in obs.columns:
        s = obs[c]
        if (isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or pd.api.types.is_string_dtype(s.dtype)
                or pd.api.types.is_integer_dtype(s.dtype)):
            n = s.nunique(dropna=True)
            if 2 <= n <= max_categories:
                cols.append(str(c))

    def rank(c: str) -> tuple[int, str]:
        low = c.lower()
        for i, hint in enumerate(LABEL_HINTS):
            if hint in low:
                return (i, c)
        return (len(LABEL_HINTS), c)

    return sorted(cols, key=rank)


def read_reference(path: str | Path):
    import anndata as ad  # ~2 s on import: only inside the worker that reads the reference


    try:
        return ad.read_h5ad(Path(str(path)).expanduser())
    except Exception as e:  # noqa: BLE001
        raise _error(path, e) from e
