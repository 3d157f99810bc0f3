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

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import InputError
from .io import _check_free, write_h5ad


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

    import anndata as ad
    import h5py

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
    import anndata as ad

    parent, _, name = key.rpartition("/")
    group = f.require_group(parent) if parent else f
    if name in group:
        del group[name]
    ad.io.write_elem(group, name, value)
