"""Vizgen MERSCOPE region output (``region_N/``): ``cell_by_gene.csv`` and ``cell_metadata.csv``.

``cell_by_gene.csv`` has one row per cell (first column ``cell``, the EntityID) and one column per
gene; the ``Blank-*`` columns are barcodes assigned to no gene (the panel's false-positive
control) and are dropped and counted. ``cell_metadata.csv`` (first column the EntityID) gives the
centroids ``center_x``, ``center_y`` in micrometres. ``images/micron_to_mosaic_pixel_transform.csv``
places them on the ``mosaic_<stain>_z<k>.tif`` images.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import make_slide, need_columns, read_csv, require, rows_of, stack_counts

COUNTS = "cell_by_gene.csv"
METADATA = "cell_metadata.csv"
TRANSFORM = "images/micron_to_mosaic_pixel_transform.csv"
REQUIRED = [COUNTS, METADATA]
CONTROLS = {"Blank": ("Blank-", "blank-")}
# Cells read per CSV chunk: the dense chunk is small while the slide is kept sparse.
_CHUNK_ROWS = 20_000


def is_merscope(folder: Path) -> bool:
    return (folder / COUNTS).is_file() or (folder / METADATA).is_file()


def read(folder: Path) -> anndata.AnnData:
    require(folder, "Vizgen MERSCOPE", REQUIRED)
    meta = read_csv(folder / METADATA, index_col=0)
    need_columns(meta, ["center_x", "center_y"], folder / METADATA)
    meta.index = meta.index.astype(str)
    X, barcodes, genes, dropped = stack_counts(_chunks(folder / COUNTS), folder / COUNTS, CONTROLS)
    pos = rows_of(meta, barcodes, folder / COUNTS, folder / METADATA)
    source = {"path": str(folder.resolve()), "layout": "merscope", "table": None, "coordinate_system": None}
    return make_slide(X, barcodes, meta.iloc[pos], ["center_x", "center_y"], pd.DataFrame(index=genes),
                      source=source, dropped=dropped, modality="merfish")


def _chunks(path: Path):
    for chunk in pd.read_csv(path, index_col=0, chunksize=_CHUNK_ROWS):
        chunk.index = chunk.index.astype(str)
        yield chunk


def um_to_global(folder: Path) -> tuple[str, np.ndarray]:
    """(coordinate system, micrometres -> mosaic pixels) of spatialdata_io's merscope reader."""
    path = folder / TRANSFORM
    if not path.is_file():
        raise InputError(f"{path} is missing; without it the cells cannot be placed on the mosaic images.")
    return "global", np.loadtxt(path).reshape(3, 3)


def spatialdata(folder: Path):
    """Mosaic images of the middle z plane (lazy, multiscale) and cell polygons, via spatialdata_io."""
    from spatialdata_io import merscope  # the spatialdata extra: only the plugin's image view needs it

    return merscope(folder, transcripts=False, cells_table=False, cells_boundaries=True, mosaic_images=True)
