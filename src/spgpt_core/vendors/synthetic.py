"""Small instrument output folders with planted domains, laid out file for file like the real ones.

For tests, benchmarks and demos: ``write_xenium``, ``write_visium_hd``, ``write_merscope`` and
``write_cosmx`` write what each instrument's software writes (file names, HDF5 datasets and
attributes, parquet / CSV columns, JSON fields) closely enough that spatialdata_io's readers open
them, plus control features to be dropped. Each returns the planted domain of every cell under the
name spgpt's reader gives it. Cells sit on a jittered grid; curved bands and a round nodule are
the domains, each with its own marker genes (the expression model of :mod:`spgpt_core.datasets`).
Not written: transcripts, Xenium's label rasters (``cells.zarr.zip`` holds ids and polygon sets
only) and Visium HD's 2 µm bins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from ..datasets import _cell_type_names, _pick_genes, _type_profiles
from ._tenx import write_10x_h5, xenium_cell_ids

CELL_SPACING_UM = 15.0


@dataclass
class Cells:
    xy: np.ndarray  # (n, 2) micrometres
    domain: np.ndarray  # (n,) int
    counts: sp.csr_matrix  # (n, genes) int32
    genes: list[str]


def make_cells(n_cells: int, n_genes: int = 300, n_domains: int = 5, seed: int = 0, umis: float = 150.0,
               spacing: float = CELL_SPACING_UM, jitter: float = 0.3) -> Cells:
    """Cells on a jittered square grid with planted domains and Poisson counts around domain profiles."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_cells)))
    i = np.arange(n_cells)
    xy = np.column_stack([i % side, i // side]).astype(float) * spacing
    xy += rng.uniform(-jitter, jitter, size=xy.shape) * spacing + spacing
    domain = domains_at(xy, side * spacing, n_domains)
    types = _cell_type_names(n_domains)
    genes = _pick_genes(n_genes, types)
    profiles, _ = _type_profiles(genes, types, rng)
    if n_genes > WIDE_PANEL:
        return Cells(xy, domain, _sparse_counts(rng, profiles, domain, umis), genes)
    blocks = []
    for start in range(0, n_cells, 20_000):  # bounded memory for 100k-cell slides
        d = domain[start:start + 20_000]
        lib = rng.lognormal(np.log(umis), 0.4, size=len(d))
        blocks.append(sp.csr_matrix(rng.poisson(profiles[d] * lib[:, None]).astype(np.int32)))
    return Cells(xy, domain, sp.vstack(blocks, format="csr"), genes)


#: Above this many genes counts are drawn transcript by transcript (the panel-wide dense draw would
#: cost cells x genes, e.g. 9e9 draws for 500k Visium HD bins x 18,000 genes).
WIDE_PANEL = 1_000


def _sparse_counts(rng, profiles: np.ndarray, domain: np.ndarray, umis: float, block: int = 50_000) -> sp.csr_matrix:
    """The same distribution as Poisson(profile x library) per gene (profiles sum to 1, so by Poisson
    splitting: a Poisson(library) total, each transcript's gene drawn from the profile), in time and
    memory proportional to the transcripts of a block of cells, not to cells x genes."""
    n_genes = profiles.shape[1]
    blocks = []
    for start in range(0, len(domain), block):
        dom = domain[start:start + block]
        totals = rng.poisson(rng.lognormal(np.log(umis), 0.4, size=len(dom)))
        cell = np.repeat(np.arange(len(dom), dtype=np.int32), totals)
        gene = np.empty(len(cell), dtype=np.int32)
        of_cell = dom[cell]
        for d in np.unique(dom):
            at = of_cell == d
            gene[at] = rng.choice(n_genes, size=int(at.sum()), p=profiles[d])
        X = sp.csr_matrix((np.ones(len(cell), dtype=np.int32), (cell, gene)), shape=(len(dom), n_genes))
        X.sum_duplicates()
        blocks.append(X)
    return sp.vstack(blocks, format="csr")


def domains_at(xy: np.ndarray, extent: float, n_domains: int) -> np.ndarray:
    """Wavy horizontal bands (n_domains - 1 of them) plus a round nodule, the last domain."""
    u, v = xy[:, 0] / extent, xy[:, 1] / extent
    band = np.clip(((v + 0.06 * np.sin(2 * np.pi * u)) * (n_domains - 1)).astype(int), 0, n_domains - 2)
    nodule = (u - 0.7) ** 2 + (v - 0.35) ** 2 < 0.15 ** 2
    return np.where(nodule, n_domains - 1, band)


def _controls(rng, n_cells: int, names: list[str]) -> sp.csr_matrix:
    return sp.csr_matrix(rng.poisson(0.05, size=(n_cells, len(names))).astype(np.int32))


def _polygon(x: float, y: float, r: float, n: int = 12) -> np.ndarray:
    """A closed n-gon (first vertex repeated at the end, as Xenium and GeoJSON write them)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.column_stack([x + r * np.cos(t), y + r * np.sin(t)])
    return np.vstack([ring, ring[:1]])


def _image(shape: tuple[int, int], xy_px: np.ndarray, r_px: float, dtype=np.uint16) -> np.ndarray:
    """A nuclear-stain-like image: a bright disc at each cell, dark elsewhere."""
    img = np.full(shape, 200, np.float32)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for x, y in xy_px:
        y0, y1, x0, x1 = (max(int(y - r_px), 0), int(y + r_px) + 1, max(int(x - r_px), 0), int(x + r_px) + 1)
        disc = (yy[y0:y1] - y) ** 2 + (xx[:, x0:x1] - x) ** 2 <= r_px ** 2
        img[y0:y1, x0:x1][disc] = 3000 if dtype == np.uint16 else 200
    return img.astype(dtype)


# --- 10x Xenium -----------------------------------------------------------------------------------

XENIUM_CONTROLS = {"Negative Control Probe": "NegControlProbe_", "Negative Control Codeword": "NegControlCodeword_",
                   "Genomic Control": "Intergenic_Region_", "Unassigned Codeword": "UnassignedCodeword_"}


def write_xenium(folder, n_cells: int = 300, n_genes: int = 300, n_domains: int = 5, seed: int = 0,
                 images: bool = True, boundaries: bool = True) -> pd.Series:
    """A Xenium Onboard Analysis 3.x ``outs/`` folder; returns the planted domain per cell id."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cells, rng = make_cells(n_cells, n_genes, n_domains, seed), np.random.default_rng(seed + 1)
    pixel = 0.2125
    ids = xenium_cell_ids(n_cells)
    ctrl_names = [f"{p}{k:04d}" for p in XENIUM_CONTROLS.values() for k in range(3)]
    ctrl_types = [t for t in XENIUM_CONTROLS for _ in range(3)]
    X = sp.hstack([cells.counts, _controls(rng, n_cells, ctrl_names)], format="csr")
    write_10x_h5(folder / "cell_feature_matrix.h5", X, ids,
                 ids=[f"ENSG{k:011d}" for k in range(n_genes)] + [f"{n}_id" for n in ctrl_names],
                 names=cells.genes + ctrl_names, types=["Gene Expression"] * n_genes + ctrl_types,
                 software="xenium-3.0.0.15")
    specs = {"major_version": 5, "minor_version": 0, "run_name": "spgpt synthetic", "region_name": "region_0",
             "pixel_size": pixel, "analysis_sw_version": "xenium-3.0.0.15", "panel_name": "synthetic",
             "panel_num_targets_predesigned": n_genes, "num_cells": n_cells,
             "transcripts_per_cell": float(cells.counts.sum() / n_cells), "instrument_sw_version": "3.0.0"}
    (folder / "experiment.xenium").write_text(json.dumps(specs, indent=2))
    area = np.full(n_cells, np.pi * 6.0 ** 2)
    total = np.asarray(X.sum(axis=1)).ravel()
    ctrl = np.asarray(X[:, n_genes:].sum(axis=1)).ravel()
    pq.write_table(pa.table({
        "cell_id": ids, "x_centroid": cells.xy[:, 0], "y_centroid": cells.xy[:, 1],
        "transcript_counts": total - ctrl, "control_probe_counts": ctrl, "genomic_control_counts": np.zeros(n_cells),
        "control_codeword_counts": np.zeros(n_cells), "unassigned_codeword_counts": np.zeros(n_cells),
        "deprecated_codeword_counts": np.zeros(n_cells), "total_counts": total, "cell_area": area,
        "nucleus_area": area / 3, "nucleus_count": np.ones(n_cells),
        "segmentation_method": ["Segmented by boundary stain"] * n_cells,
    }), folder / "cells.parquet")
    if boundaries:
        for name, r in (("cell_boundaries.parquet", 6.0), ("nucleus_boundaries.parquet", 3.5)):
            rings = [_polygon(x, y, r) for x, y in cells.xy]
            per = len(rings[0])
            pq.write_table(pa.table({
                "cell_id": np.repeat(ids, per), "vertex_x": np.concatenate(rings)[:, 0].astype(np.float32),
                "vertex_y": np.concatenate(rings)[:, 1].astype(np.float32),
                "label_id": np.repeat(np.arange(1, n_cells + 1, dtype=np.uint32), per)}), folder / name)
    _write_cells_zarr(folder / "cells.zarr.zip", cells.xy, area)
    if images:
        import tifffile  # from the spatialdata extra, like every reader of these folders' images

        (folder / "morphology_focus").mkdir(exist_ok=True)
        shape = tuple(int(v) for v in (cells.xy.max(axis=0)[::-1] + 20) / pixel)
        tifffile.imwrite(folder / "morphology_focus" / "morphology_focus_0000.ome.tif",
                         _image(shape, cells.xy / pixel, 3.5 / pixel), ome=True, metadata={"axes": "YX"})
    return pd.Series(cells.domain, index=ids, name="domain")


def _write_cells_zarr(path: Path, xy: np.ndarray, area: np.ndarray) -> None:
    """cells.zarr.zip (zarr v2 in a zip): cell ids as (prefix, dataset suffix), the cell summary, polygon sets."""
    import zarr  # from the spatialdata extra

    n = len(xy)
    store = zarr.storage.ZipStore(path, mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("cell_id", data=np.column_stack([np.arange(1, n + 1), np.ones(n)]).astype(np.uint32))
    summary = np.column_stack([xy, area, xy, area / 3, np.zeros(n), np.ones(n)])
    names = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x", "nucleus_centroid_y",
             "nucleus_area", "z_level", "nucleus_count"]
    root.create_array("cell_summary", data=summary, attributes={"column_names": names})  # a zip is write-once
    for mask in ("0", "1"):
        root.create_array(f"polygon_sets/{mask}/cell_index", data=np.arange(n, dtype=np.uint32))
    store.close()
