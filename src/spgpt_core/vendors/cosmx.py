"""NanoString CosMx flat-file export: ``<run>_exprMat_file.csv`` and ``<run>_metadata_file.csv``.

``cell_ID`` restarts in every field of view (FOV), so a cell is ``(fov, cell_ID)`` and is named
``f"{fov}_{cell_ID}"``. Cell 0 of each FOV collects the transcripts outside any cell and is
dropped. Negative probes (``NegPrb*``) and system controls (``SystemControl*``) are dropped and
counted. Centroids are ``CenterX_global_px`` / ``CenterY_global_px`` (pixels of the stitched
slide) times the pixel size, 0.12028 µm on current instruments (AtoMx export documentation).
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata
import pandas as pd

from ..errors import InputError
from ._common import make_slide, need_columns, read_csv, rows_of, stack_counts

COUNTS_SUFFIX = "_exprMat_file.csv"
METADATA_SUFFIX = "_metadata_file.csv"
CONTROLS = {"NegPrb": ("NegPrb",), "SystemControl": ("SystemControl",)}
PIXEL_SIZE_UM = 0.12028
_CHUNK_ROWS = 20_000


def is_cosmx(folder: Path) -> bool:
    return any(folder.glob(f"*{COUNTS_SUFFIX}")) or any(folder.glob(f"*{METADATA_SUFFIX}"))


def run_name(folder: Path) -> str:
    """The export's prefix (the part before ``_exprMat_file.csv``); one run per folder."""
    names = sorted({re.sub(f"({COUNTS_SUFFIX}|{METADATA_SUFFIX})$", "", p.name)
                    for suffix in (COUNTS_SUFFIX, METADATA_SUFFIX) for p in folder.glob(f"*{suffix}")})
    if len(names) > 1:
        raise InputError(f"{folder} holds the exports of several CosMx runs ({', '.join(names)}); put each run's "
                         "files in a folder of its own.")
    return names[0]


def read(folder: Path) -> anndata.AnnData:
    run = run_name(folder)
    counts_path, meta_path = folder / f"{run}{COUNTS_SUFFIX}", folder / f"{run}{METADATA_SUFFIX}"
    missing = [p.name for p in (counts_path, meta_path) if not p.exists()]
    if missing:
        raise InputError(f"{folder} looks like a NanoString CosMx export but lacks {', '.join(missing)}; spgpt needs "
                         f"{counts_path.name} (counts) and {meta_path.name} (cell coordinates).")
    meta = read_csv(meta_path)
    need_columns(meta, ["fov", "cell_ID", "CenterX_global_px", "CenterY_global_px"], meta_path)
    meta.index = _names(meta)
    if not meta.index.is_unique:
        raise InputError(f"{meta_path} lists some (fov, cell_ID) pairs twice; is it the original export?")

    X, barcodes, genes, dropped = stack_counts(_chunks(counts_path), counts_path, CONTROLS)
    pos = rows_of(meta, barcodes, counts_path, meta_path)
    source = {"path": str(folder.resolve()), "layout": "cosmx", "table": None, "coordinate_system": None,
              "pixel_size_um": PIXEL_SIZE_UM}
    return make_slide(X, barcodes, meta.iloc[pos], ["CenterX_global_px", "CenterY_global_px"],
                      pd.DataFrame(index=genes), scale=PIXEL_SIZE_UM, source=source, dropped=dropped,
                      modality="cosmx")


def _chunks(path: Path):
    for chunk in pd.read_csv(path, chunksize=_CHUNK_ROWS):
        need_columns(chunk, ["fov", "cell_ID"], path)
        chunk = chunk[chunk["cell_ID"] != 0]  # cell 0: transcripts outside every cell
        chunk.index = _names(chunk)
        yield chunk.drop(columns=["fov", "cell_ID"])


def _names(df: pd.DataFrame) -> pd.Index:
    return pd.Index(df["fov"].astype(str) + "_" + df["cell_ID"].astype(str))
