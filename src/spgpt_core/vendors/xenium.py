"""10x Xenium output folder (Xenium Onboard Analysis / Xenium Ranger ``outs/``).

Counts come from ``cell_feature_matrix.h5`` (the 10x HDF5 matrix; only features whose
``features/feature_type`` is "Gene Expression" are kept: negative-control probes and codewords,
genomic controls and unassigned codewords are dropped and counted), centroids from
``cells.parquet`` (``x_centroid``, ``y_centroid``, already micrometres). ``experiment.xenium``
gives the pixel size that places the cells on the morphology images.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np

from ..errors import InputError
from ._common import broken, make_slide, read_10x_h5, read_parquet, read_parquet_schema, require, rows_of

MATRIX = "cell_feature_matrix.h5"
CELLS = "cells.parquet"
SPECS = "experiment.xenium"
REQUIRED = [MATRIX, CELLS]
#: Xenium's image pixel size when experiment.xenium does not say (all instruments so far).
DEFAULT_PIXEL_SIZE_UM = 0.2125


def is_xenium(folder: Path) -> bool:
    return (folder / SPECS).is_file() or (folder / MATRIX).is_file()


def read(folder: Path) -> anndata.AnnData:
    require(folder, "10x Xenium", REQUIRED)
    cells = read_parquet(folder / CELLS)  # checked before the (large) matrix is read
    for col in ("cell_id", "x_centroid", "y_centroid"):
        if col not in cells.columns:
            raise InputError(f"{folder / CELLS} has no '{col}' column; is it Xenium's original cells.parquet?")
    X, barcodes, var, dropped = read_10x_h5(folder / MATRIX)
    cells.index = cells["cell_id"].astype(str)
    pos = rows_of(cells, barcodes, folder / MATRIX, folder / CELLS)
    source = {"path": str(folder.resolve()), "layout": "xenium", "table": None, "coordinate_system": None,
              "pixel_size_um": pixel_size_um(folder)}
    return make_slide(X, barcodes, cells.iloc[pos], ["x_centroid", "y_centroid"], var, source=source,
                      dropped=dropped, modality="xenium")


def pixel_size_um(folder: Path) -> float:
    """Micrometres per morphology-image pixel, from experiment.xenium."""
    specs = folder / SPECS
    if not specs.is_file():
        return DEFAULT_PIXEL_SIZE_UM
    try:
        return float(json.loads(specs.read_text()).get("pixel_size", DEFAULT_PIXEL_SIZE_UM))
    except (ValueError, TypeError) as e:
        raise broken(specs, "Xenium's JSON run description", e) from e


def um_to_global(folder: Path) -> tuple[str, np.ndarray]:
    """(coordinate system, 3x3 affine from micrometres to it) of spatialdata_io's xenium reader: image pixels."""
    s = 1.0 / pixel_size_um(folder)
    return "global", np.diag([s, s, 1.0])


def cell_outlines(folder: Path) -> list[np.ndarray] | None:
    """Cell polygons from cell_boundaries.parquet (x, y in µm, one array per cell), or None without the file.

    Read here rather than through spatialdata_io, whose xenium reader reads boundaries only together
    with the whole count matrix.
    """
    path = folder / "cell_boundaries.parquet"
    if not path.is_file():
        return None
    schema = read_parquet_schema(path)
    key = "label_id" if "label_id" in schema else "cell_id"
    table = read_parquet(path, ["vertex_x", "vertex_y", key])
    xy = table[["vertex_x", "vertex_y"]].to_numpy(np.float64)
    ids = table[key].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))  # vertices of a cell are contiguous
    return np.split(xy, starts[1:])


def spatialdata(folder: Path):
    """The morphology image (lazy, multiscale) and cell boundaries, via spatialdata_io.

    Neither the table nor the labels, transcripts or nucleus boundaries are read: the plugin takes
    the table from :func:`read` and only shows the image and the cells' outlines.
    """
    from spatialdata_io import xenium  # the spatialdata extra: only the plugin's image view needs it

    focus = (folder / "morphology_focus").is_dir() or (folder / "morphology_focus.ome.tif").is_file()
    return xenium(folder, cells_boundaries=False, nucleus_boundaries=False, cells_labels=False,
                  nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=focus,
                  aligned_images=False, cells_table=False)
