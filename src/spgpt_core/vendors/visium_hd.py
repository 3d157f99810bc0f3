"""10x Visium HD output (Space Ranger ``outs/``): binned squares, or segmented cells (Space Ranger 4).

A bin size is one table: ``binned_outputs/square_008um/`` holds ``filtered_feature_bc_matrix.h5``
and ``spatial/tissue_positions.parquet`` (bin centres in full-resolution image pixels) and
``spatial/scalefactors_json.json`` (``microns_per_pixel``), so centres become micrometres. Space
Ranger 4 adds ``segmented_outputs/`` (``filtered_feature_cell_matrix.h5`` and
``cell_segmentations.geojson``): cells, whose centroids are those of their polygons.

Which table: ``bin_size`` 8 (default) or 16 (µm), or ``"cells"`` for the segmented cells. The table
names spatialdata_io uses work too (``"square_016um"``, ``"cell_segmentations"``). The 2 µm bins
(about 11 million on a full slide, 16x the 8 µm count, mostly a handful of UMIs each) are refused:
they do not fit a laptop's memory and the model sees cells, not sub-cellular squares.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import broken, make_slide, read_10x_h5, read_parquet, require, rows_of

BINNED = "binned_outputs"
SEGMENTED = "segmented_outputs"
MATRIX = "filtered_feature_bc_matrix.h5"
POSITIONS = "spatial/tissue_positions.parquet"
SCALEFACTORS = "spatial/scalefactors_json.json"
CELL_MATRIX = "filtered_feature_cell_matrix.h5"
CELL_POLYGONS = "cell_segmentations.geojson"
DEFAULT_BIN_UM = 8
SUPPORTED_BINS_UM = (8, 16)


def root_of(folder: Path) -> Path | None:
    """The ``outs`` folder (holding ``binned_outputs/``) for a run folder or an ``outs`` folder."""
    for cand in (folder, folder / "outs"):
        if (cand / BINNED).is_dir():
            return cand
    return None


def tables(folder: Path) -> list[str]:
    """The tables spgpt reads here, default first: square_008um, square_016um, cell_segmentations."""
    root = root_of(Path(folder))
    if root is None:
        return []
    have = [f"square_{s:03d}um" for s in SUPPORTED_BINS_UM if (root / BINNED / f"square_{s:03d}um").is_dir()]
    return have + (["cell_segmentations"] if (root / SEGMENTED / CELL_MATRIX).is_file() else [])


def parse_bin_size(bin_size) -> int | str:
    """8, 16, 'cells' from an int, '16', '16um', 'square_016um' or 'cell_segmentations'."""
    if bin_size is None:
        return DEFAULT_BIN_UM
    text = str(bin_size).strip().lower()
    if text in ("cells", "cell", "cell_segmentations", "segmented"):
        return "cells"
    digits = text.removeprefix("square_").removesuffix("um").removesuffix("µm")
    try:
        size = int(digits)
    except ValueError:
        raise InputError(f"Unknown Visium HD table or bin size '{bin_size}'; use 8 or 16 (µm) or 'cells'.") from None
    if size == 2:
        raise InputError(
            "Visium HD 2 µm bins (square_002um, ~11 million bins per slide) are not read: they do not fit in memory "
            "and are far below a cell. Use the 8 µm bins (the default, square_008um), 16 µm, or 'cells' for Space "
            "Ranger 4's segmented cells."
        )
    if size not in SUPPORTED_BINS_UM:
        raise InputError(f"Visium HD bin size {size} µm is not supported; use 8 (default) or 16, or 'cells'.")
    return size


def read(folder: Path, bin_size=None) -> anndata.AnnData:
    root = root_of(folder)
    if root is None:
        raise InputError(f"{folder} has no binned_outputs/ folder (nor outs/binned_outputs/); is it Visium HD's outs?")
    size = parse_bin_size(bin_size)
    if size == "cells":
        return _read_cells(root, folder)
    table = f"square_{size:03d}um"
    bins = root / BINNED / table
    if not bins.is_dir():
        have = sorted(p.name for p in (root / BINNED).glob("square_*um"))
        raise InputError(f"{root / BINNED} has no {table}/ (it has {', '.join(have) or 'no bins'}); "
                         "pass one of those bin sizes.")
    require(bins, "Visium HD", [MATRIX, POSITIONS, SCALEFACTORS])
    mpp = microns_per_pixel(bins / SCALEFACTORS)
    positions = read_parquet(bins / POSITIONS,
                             ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                              "pxl_col_in_fullres"])
    X, barcodes, var, dropped = read_10x_h5(bins / MATRIX)
    positions = positions.set_index("barcode")
    pos = rows_of(positions, barcodes, bins / MATRIX, bins / POSITIONS)
    source = {"path": str(folder.resolve()), "layout": "visium_hd", "table": table, "coordinate_system": None,
              "bin_size_um": size, "microns_per_pixel": mpp}
    return make_slide(X, barcodes, positions.iloc[pos], ["pxl_col_in_fullres", "pxl_row_in_fullres"],
                      _unique_names(var), scale=mpp, source=source, dropped=dropped, modality="visium_hd")


def _read_cells(root: Path, folder: Path):
    seg = root / SEGMENTED
    if not seg.is_dir():
        raise InputError(f"{root} has no segmented_outputs/ (Space Ranger 4 cell segmentation); read bins instead "
                         f"(bin size {DEFAULT_BIN_UM} or 16).")
    require(seg, "Visium HD segmented", [CELL_MATRIX, CELL_POLYGONS, SCALEFACTORS])
    mpp = microns_per_pixel(seg / SCALEFACTORS)
    centroids = polygon_centroids(seg / CELL_POLYGONS)
    X, barcodes, var, dropped = read_10x_h5(seg / CELL_MATRIX)
    # the matrix names cells 'cellid_000000042-1'; the polygons carry the integer 42
    ids = [int(b.removeprefix("cellid_").split("-")[0]) for b in barcodes]
    missing = [b for b, i in zip(barcodes, ids) if i not in centroids]
    if missing:
        raise InputError(f"{len(missing)} cells of {seg / CELL_MATRIX} have no polygon in {seg / CELL_POLYGONS} "
                         f"(e.g. {missing[0]}); the files come from different runs.")
    xy = pd.DataFrame([centroids[i] for i in ids], columns=["x", "y"])
    source = {"path": str(folder.resolve()), "layout": "visium_hd", "table": "cell_segmentations",
              "coordinate_system": None, "bin_size_um": "cells", "microns_per_pixel": mpp}
    return make_slide(X, barcodes, xy, ["x", "y"], _unique_names(var), scale=mpp, source=source,
                      dropped=dropped, modality="visium_hd")


def microns_per_pixel(path: Path) -> float:
    try:
        mpp = float(json.loads(path.read_text())["microns_per_pixel"])
    except (ValueError, KeyError, TypeError) as e:
        raise broken(path, "Space Ranger's scale factors; microns_per_pixel is needed", e) from e
    if not mpp > 0:
        raise InputError(f"{path} gives microns_per_pixel = {mpp}; it must be positive.")
    return mpp


def polygon_centroids(path: Path) -> dict[int, tuple[float, float]]:
    """{cell_id: (x, y)} area centroids (shoelace formula) of the GeoJSON cell polygons, in pixels."""
    try:
        features = json.loads(path.read_text())["features"]
        out = {}
        for feat in features:
            ring = np.asarray(feat["geometry"]["coordinates"][0], dtype=np.float64)
            x, y = ring[:, 0], ring[:, 1]
            x1, y1 = np.roll(x, -1), np.roll(y, -1)
            cross = x * y1 - x1 * y
            area = cross.sum() / 2
            if abs(area) < 1e-12:  # degenerate: fall back to the vertex mean
                out[int(feat["properties"]["cell_id"])] = (float(x.mean()), float(y.mean()))
                continue
            out[int(feat["properties"]["cell_id"])] = (float(((x + x1) * cross).sum() / (6 * area)),
                                                       float(((y + y1) * cross).sum() / (6 * area)))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise broken(path, "GeoJSON cell polygons", e) from e
    return out


def _unique_names(var):
    """Space Ranger keeps duplicate symbols (several Ensembl ids per symbol); suffix them as scanpy does."""
    var = var.copy()
    if not var.index.is_unique:
        tmp = anndata.AnnData(var=var)
        tmp.var_names_make_unique()
        var = tmp.var
    var.index.name = None
    return var


def um_to_global(folder: Path, table: str) -> tuple[str, np.ndarray]:
    """(coordinate system, micrometres -> full-resolution pixels) of spatialdata_io's visium_hd reader."""
    root = root_of(folder)
    sub = root / SEGMENTED if table == "cell_segmentations" else root / BINNED / table
    s = 1.0 / microns_per_pixel(sub / SCALEFACTORS)
    return dataset_id(root), np.diag([s, s, 1.0])


def dataset_id(root: Path) -> str:
    """spatialdata_io names the coordinate system after the feature slice file's prefix ('' when none)."""
    if (root / "feature_slice.h5").exists():
        return ""
    found = sorted(root.glob("*_feature_slice.h5"))
    return found[0].name.removesuffix("_feature_slice.h5") if found else ""


def spatialdata(folder: Path):
    """Images (full resolution multiscale, hires, lowres) via spatialdata_io, without any bin table."""
    from spatialdata_io import visium_hd  # the spatialdata extra: only the plugin's image view needs it

    return visium_hd(root_of(folder), load_segmentations_only=True)
