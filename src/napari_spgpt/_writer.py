"""npe2 writers for Points layers and large slides' cell rasters (File > Save Selected Layer(s)).

* a slide's spots layer -> the slide's AnnData with every spgpt result (``.h5ad``), or one row per
  cell/spot with coordinates, obs and result columns (``.csv``);
* a large slide's cell-raster layer (a Labels layer, ``_raster.py``) -> the same as its spots layer;
* any other Points layer (a result layer, or points from elsewhere) -> ``.csv`` of its positions
  and features.

napari's save dialog has already asked before replacing a file, so existing files are replaced.
The Export widget offers the same formats plus SpatialData ``.zarr``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from spgpt_core.errors import InputError

from ._export import export_csv, export_h5ad
from ._layers import SLIDE_KEY


def write_points(path: str, data, meta: dict) -> list[str]:
    out = Path(path)
    slide = (meta.get("metadata") or {}).get(SLIDE_KEY)
    suffix = out.suffix.lower()
    if slide is not None:
        if suffix == ".h5ad":
            return [str(export_h5ad(slide, out, overwrite=True))]
        if suffix == ".csv":
            return [str(export_csv(slide, out, overwrite=True))]
    if suffix != ".csv":
        raise InputError(f"Only a slide's spots layer can be saved as {suffix}; save this layer as .csv.")
    data = np.asarray(data)
    df = pd.DataFrame(data, columns=["y", "x"] if data.shape[1] == 2 else [f"axis_{i}" for i in range(data.shape[1])])
    features = meta.get("features")
    if isinstance(features, pd.DataFrame) and len(features) == len(df):
        df = pd.concat([df, features.reset_index(drop=True)], axis=1)
    df.to_csv(out, index=False)
    return [str(out)]


def write_slide_labels(path: str, data, meta: dict) -> list[str]:
    """A large slide's cell-raster layer saves what its spots layer would; other Labels layers are not spgpt's."""
    if (meta.get("metadata") or {}).get(SLIDE_KEY) is None:
        raise InputError("spgpt saves only a slide's own layer as .h5ad / .csv; save other label images with "
                         "napari's own writer (.tif).")
    return write_points(path, data, meta)
