"""Generated Visium HD, MERSCOPE and CosMx folders (see :mod:`spgpt_core.vendors.synthetic`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from PIL import Image

from ._tenx import write_10x_h5
from .synthetic import _controls, _image, _polygon, make_cells

# --- 10x Visium HD (Space Ranger 4 outs/) ---------------------------------------------------------

VISIUM_HD_MPP = 0.2738  # µm per full-resolution pixel, a typical CytAssist-registered microscope image


def write_visium_hd(folder, side_um: float = 200.0, n_genes: int = 300, n_domains: int = 5, seed: int = 0,
                    segmented: bool = True, n_cells: int = 150) -> dict[str, pd.Series]:
    """Space Ranger 4 ``outs/``: 8 and 16 µm bins (16 µm = sums of 2 x 2 bins of 8 µm), images, and
    ``segmented_outputs/`` cells. Returns the planted domain per barcode for each table."""
    outs = Path(folder)
    outs.mkdir(parents=True, exist_ok=True)
    n8 = int(side_um // 16) * 2  # even, so 16 µm bins pool whole 2 x 2 blocks
    bins = make_cells(n8 * n8, n_genes, n_domains, seed, umis=60.0, spacing=8.0, jitter=0.0)
    row, col = np.divmod(np.arange(n8 * n8), n8)  # make_cells' grid: x = column, y = row
    genes, ids = bins.genes, [f"ENSG{k:011d}" for k in range(n_genes)]
    hires_scale, lowres_scale = 0.2, 0.05
    truth = {}
    for size in (8, 16):
        k = size // 8
        group = (row // k) * (n8 // k) + col // k  # each 8 µm bin's bin of this size
        pool = sp.csr_matrix((np.ones(n8 * n8), (group, np.arange(n8 * n8))), shape=((n8 // k) ** 2, n8 * n8))
        X = (pool @ bins.counts).tocsr()
        r, c = np.divmod(np.arange(X.shape[0]), n8 // k)
        barcodes = np.array([f"s_{size:03d}um_{a:05d}_{b:05d}-1" for a, b in zip(r, c)], dtype=object)
        sub = outs / "binned_outputs" / f"square_{size:03d}um"
        (sub / "spatial").mkdir(parents=True, exist_ok=True)
        # a margin of bins outside the tissue: listed in tissue_positions, absent from the filtered matrix
        tissue = np.ones(len(barcodes), bool)
        tissue[c == (n8 // k) - 1] = False
        write_10x_h5(sub / "filtered_feature_bc_matrix.h5", X[tissue], barcodes[tissue], ids=ids, names=genes,
                     types=["Gene Expression"] * n_genes, software="spaceranger-4.0.1")
        pq.write_table(pa.table({
            "barcode": barcodes, "in_tissue": tissue.astype(np.int32), "array_row": r.astype(np.int32),
            "array_col": c.astype(np.int32), "pxl_row_in_fullres": (r + 0.5) * size / VISIUM_HD_MPP,
            "pxl_col_in_fullres": (c + 0.5) * size / VISIUM_HD_MPP}), sub / "spatial" / "tissue_positions.parquet")
        _scalefactors(sub / "spatial", size, hires_scale, lowres_scale)
        domain_of = pd.Series(bins.domain).groupby(group).agg(lambda d: d.value_counts().index[0]).to_numpy()
        truth[f"square_{size:03d}um"] = pd.Series(domain_of[tissue], index=barcodes[tissue], name="domain")
    (outs / "spatial").mkdir(exist_ok=True)
    _scalefactors(outs / "spatial", 2, hires_scale, lowres_scale)
    full = int(np.ceil(n8 * 8 / VISIUM_HD_MPP))
    for name, scale in (("tissue_hires_image.png", hires_scale), ("tissue_lowres_image.png", lowres_scale)):
        size_px = max(int(full * scale), 8)
        rgb = np.full((size_px, size_px, 3), 235, np.uint8)
        rgb[..., 0] = 200 + 10 * (np.arange(size_px) * 5 // size_px)[:, None]
        Image.fromarray(rgb).save(outs / "spatial" / name)
    layout = {"file_format": "1.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    with h5py.File(outs / "synthetic_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps(layout), "transform_matrices": {}})
    if segmented:
        truth["cell_segmentations"] = _segmented_cells(outs / "segmented_outputs", n_cells, n8 * 8.0, genes, ids,
                                                       n_domains, seed, hires_scale, lowres_scale)
    return truth


def _scalefactors(folder: Path, bin_um: int, hires: float, lowres: float) -> None:
    (folder / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": bin_um / VISIUM_HD_MPP, "bin_size_um": float(bin_um),
        "microns_per_pixel": VISIUM_HD_MPP, "regist_target_img_scalef": hires, "tissue_lowres_scalef": lowres,
        "fiducial_diameter_fullres": 300.0, "tissue_hires_scalef": hires}, indent=2))


def _segmented_cells(seg: Path, n_cells, extent_um, genes, ids, n_domains, seed, hires, lowres) -> pd.Series:
    (seg / "spatial").mkdir(parents=True, exist_ok=True)
    cells = make_cells(n_cells, len(genes), n_domains, seed + 7, spacing=extent_um / (np.sqrt(n_cells) + 1))
    barcodes = np.array([f"cellid_{k:09d}-1" for k in range(1, n_cells + 1)], dtype=object)
    write_10x_h5(seg / "filtered_feature_cell_matrix.h5", cells.counts, barcodes, ids=ids, names=genes,
                 types=["Gene Expression"] * len(genes), software="spaceranger-4.0.1")
    px = cells.xy / VISIUM_HD_MPP
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_polygon(x, y, 20.0).tolist()]},
                 "properties": {"cell_id": k + 1}} for k, (x, y) in enumerate(px)]
    (seg / "cell_segmentations.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    _scalefactors(seg / "spatial", 2, hires, lowres)
    return pd.Series(cells.domain, index=barcodes, name="domain")


# --- Vizgen MERSCOPE ----------------------------------------------------------------------------

MERSCOPE_PX_PER_UM = 9.259259  # mosaic pixels per micrometre (0.108 µm pixels)


def write_merscope(folder, n_cells: int = 300, n_genes: int = 300, n_domains: int = 5, seed: int = 0,
                   images: bool = True, n_blank: int = 10) -> pd.Series:
    """A MERSCOPE ``region_0/`` folder; returns the planted domain per EntityID."""
    # MERSCOPE's cell_boundaries.parquet is GeoParquet; geopandas and shapely come with the spatialdata extra
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, Polygon

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    cells, rng = make_cells(n_cells, n_genes, n_domains, seed), np.random.default_rng(seed + 1)
    entity = (1_000_000_000_000 + np.arange(n_cells) * 37).astype(str)
    blank = [f"Blank-{k}" for k in range(n_blank)]
    X = sp.hstack([cells.counts, _controls(rng, n_cells, blank)], format="csr").toarray()
    counts = pd.DataFrame(X, index=pd.Index(entity, name="cell"), columns=cells.genes + blank)
    counts.to_csv(folder / "cell_by_gene.csv")
    x, y = cells.xy[:, 0], cells.xy[:, 1]
    meta = pd.DataFrame({"fov": (x // 200).astype(int) + (int(x.max() // 200) + 1) * (y // 200).astype(int),
                         "volume": 1500.0,
                         "center_x": x, "center_y": y, "min_x": x - 6, "max_x": x + 6, "min_y": y - 6, "max_y": y + 6,
                         "anisotropy": 1.1, "transcript_count": X.sum(axis=1), "perimeter_area_ratio": 0.33,
                         "solidity": 0.97}, index=pd.Index(entity, name="EntityID"))
    meta.to_csv(folder / "cell_metadata.csv")
    polys = [MultiPolygon([Polygon(_polygon(a, b, 6.0))]) for a, b in cells.xy]
    gdf = gpd.GeoDataFrame({"ID": np.arange(n_cells), "EntityID": entity.astype(np.int64), "ZIndex": 0,
                            "Type": "cell", "ZLevel": 1.5, "Name": None, "ParentID": None, "ParentType": None},
                           geometry=gpd.GeoSeries(polys), crs=None).rename_geometry("Geometry")
    gdf.to_parquet(folder / "cell_boundaries.parquet")
    offset = 50.0
    transform = np.array([[MERSCOPE_PX_PER_UM, 0, offset], [0, MERSCOPE_PX_PER_UM, offset], [0, 0, 1]])
    np.savetxt(folder / "images" / "micron_to_mosaic_pixel_transform.csv", transform, fmt="%.6f", delimiter=" ")
    if images:
        import tifffile  # from the spatialdata extra

        shape = tuple(int(v) for v in (cells.xy.max(axis=0)[::-1] + 20) * MERSCOPE_PX_PER_UM + offset)
        px = cells.xy * MERSCOPE_PX_PER_UM + offset
        for stain, r in (("DAPI", 3.5), ("PolyT", 6.0)):
            tifffile.imwrite(folder / "images" / f"mosaic_{stain}_z3.tif", _image(shape, px, r * MERSCOPE_PX_PER_UM))
    return pd.Series(cells.domain, index=entity, name="domain")


# --- NanoString CosMx -------------------------------------------------------------------------------

COSMX_PX_UM = 0.12028


def write_cosmx(folder, n_cells: int = 300, n_genes: int = 300, n_domains: int = 5, seed: int = 0,
                fov_um: float = 130.0, run: str = "Run5573_S1") -> pd.Series:
    """A CosMx flat-file export (AtoMx); returns the planted domain per '{fov}_{cell_ID}'."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cells, rng = make_cells(n_cells, n_genes, n_domains, seed), np.random.default_rng(seed + 1)
    fov_xy = (cells.xy // fov_um).astype(int)
    fov = 1 + fov_xy[:, 0] + (fov_xy[:, 0].max() + 1) * fov_xy[:, 1]  # numbered row by row, from 1
    cell_id = np.zeros(n_cells, int)
    for f in np.unique(fov):  # cell_ID restarts at 1 in each FOV
        cell_id[fov == f] = np.arange(1, int((fov == f).sum()) + 1)
    controls = [f"NegPrb{k}" for k in range(1, 11)] + [f"SystemControl{k}" for k in range(1, 4)]
    X = sp.hstack([cells.counts, _controls(rng, n_cells, controls)], format="csr").toarray()
    fovs = np.unique(fov)
    # cell 0 of each FOV: transcripts assigned to no cell
    background = rng.poisson(3.0, size=(len(fovs), X.shape[1]))
    expr = pd.DataFrame(np.vstack([background, X]), columns=cells.genes + controls)
    expr.insert(0, "cell_ID", np.concatenate([np.zeros(len(fovs), int), cell_id]))
    expr.insert(0, "fov", np.concatenate([fovs, fov]))
    expr.to_csv(folder / f"{run}_exprMat_file.csv", index=False)
    global_px = cells.xy / COSMX_PX_UM
    origin_px = fov_xy * fov_um / COSMX_PX_UM
    local = global_px - origin_px
    meta = pd.DataFrame({"fov": fov, "cell_ID": cell_id, "Area": 6000, "AspectRatio": 1.0,
                         "CenterX_local_px": local[:, 0], "CenterY_local_px": local[:, 1],
                         "CenterX_global_px": global_px[:, 0], "CenterY_global_px": global_px[:, 1],
                         "Width": 90, "Height": 90, "Mean.DAPI": 3000, "Max.DAPI": 9000})
    meta.to_csv(folder / f"{run}_metadata_file.csv", index=False)
    pos = pd.DataFrame({"fov": fovs, "x_global_px": [origin_px[fov == f][0, 0] for f in fovs],
                        "y_global_px": [origin_px[fov == f][0, 1] for f in fovs]})
    pos.to_csv(folder / f"{run}_fov_positions_file.csv", index=False)
    for sub in ("CellComposite", "CellLabels"):
        (folder / sub).mkdir(exist_ok=True)
    for f in fovs:  # small stand-ins for the per-FOV composite and label images
        composite = folder / "CellComposite" / f"CellComposite_F{f:03d}.jpg"
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(composite)
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(folder / "CellLabels" / f"CellLabels_F{f:03d}.tif")
    return pd.Series(cells.domain, index=pd.Index([f"{a}_{b}" for a, b in zip(fov, cell_id)]), name="domain")
