"""Instruments' output folders, read as they come: 10x Xenium, 10x Visium HD, Vizgen MERSCOPE, NanoString CosMx.

:func:`detect_layout` tells the layout from the files a folder holds; :func:`read_vendor` returns
the slide spgpt analyses: raw counts (float32 CSR, gene symbols as ``var_names``, control features
dropped and counted in ``uns['spgpt_vendor']``), centroids in micrometres in ``obsm['spatial']``,
the layout and what was read in ``uns['spgpt_source']``. Only matrices and cell tables are read;
images and polygons are left to :func:`spatialdata` (spatialdata_io's readers), which the napari
plugin uses to show them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from . import cosmx, merscope, visium_hd, xenium

#: layout -> (name, the files a folder needs), for detection errors
LAYOUTS = {
    "xenium": ("10x Xenium", "cell_feature_matrix.h5 + cells.parquet (+ experiment.xenium)"),
    "visium_hd": ("10x Visium HD", "outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5 + "
                                   "spatial/tissue_positions.parquet + spatial/scalefactors_json.json"),
    "merscope": ("Vizgen MERSCOPE", "cell_by_gene.csv + cell_metadata.csv"),
    "cosmx": ("NanoString CosMx", "<run>_exprMat_file.csv + <run>_metadata_file.csv"),
}


def detect_layout(path: str | Path) -> str | None:
    """'xenium', 'visium_hd', 'merscope', 'cosmx', or None when the folder matches no layout."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    if visium_hd.root_of(folder) is not None:
        return "visium_hd"
    if xenium.is_xenium(folder):
        return "xenium"
    if merscope.is_merscope(folder):
        return "merscope"
    if cosmx.is_cosmx(folder):
        return "cosmx"
    return None


def layouts_help() -> str:
    return "; ".join(f"{name} ({files})" for name, files in LAYOUTS.values())


def read_vendor(path: str | Path, *, table: str | int | None = None, coordinate_system: str | None = None):
    """Read an instrument's output folder as an AnnData slide (see the module docstring).

    ``table`` picks Visium HD's bin size: 8 (default) or 16 (µm, also as ``"square_016um"``) or
    ``"cells"`` (Space Ranger 4 segmentation, ``"cell_segmentations"``). Other layouts have one table.
    """
    folder = Path(path).expanduser()
    layout = detect_layout(folder)
    if layout is None:
        raise InputError(
            f"{folder} is a folder that spgpt cannot read: it is no SpatialData .zarr and matches no instrument "
            f"output. spgpt reads {layouts_help()}. Pass the instrument's output folder itself (for Visium HD, "
            "Space Ranger's outs/), or an .h5ad / SpatialData .zarr."
        )
    if coordinate_system is not None:
        raise InputError(f"{folder} is a {LAYOUTS[layout][0]} folder; its coordinates are micrometres and "
                         "coordinate_system does not apply. Drop it.")
    if layout == "visium_hd":
        return visium_hd.read(folder, bin_size=table)
    if table is not None:
        raise InputError(f"{folder} is a {LAYOUTS[layout][0]} folder with one table; table='{table}' does not apply "
                         "(it picks Visium HD bin sizes). Drop it.")
    return {"xenium": xenium.read, "merscope": merscope.read, "cosmx": cosmx.read}[layout](folder)


def um_to_global(adata) -> tuple[str, np.ndarray]:
    """(coordinate system, 3x3 affine from the slide's micrometres to it) in spatialdata_io's SpatialData."""
    source = adata.uns["spgpt_source"]
    folder, layout = Path(source["path"]), source["layout"]
    if layout == "visium_hd":
        return visium_hd.um_to_global(folder, source["table"])
    if layout == "cosmx":
        raise InputError("CosMx images are per field of view; spgpt shows CosMx cells without an image.")
    return {"xenium": xenium.um_to_global, "merscope": merscope.um_to_global}[layout](folder)


def spatialdata(adata):
    """The folder's images and cell outlines as SpatialData (spatialdata_io), for display."""
    source = adata.uns["spgpt_source"]
    folder, layout = Path(source["path"]), source["layout"]
    return {"xenium": xenium.spatialdata, "visium_hd": visium_hd.spatialdata,
            "merscope": merscope.spatialdata}[layout](folder)
