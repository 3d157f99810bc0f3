"""Pieces every vendor reader shares: the 10x HDF5 matrix, parquet / CSV tables, clear errors.

The readers here load only what analysis needs (counts and centroids), never images, polygons or
transcripts, so a slide costs about its sparse matrix in memory.
"""

from __future__ import annotations

from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from ..errors import InputError

# Stored values of the 10x matrix read per step: bounds the transient copies on top of the final matrix.
_VALUES_PER_READ = 2_000_000


def require(folder: Path, layout: str, files: list[str]) -> None:
    """Raise InputError naming every missing file of ``files`` (relative to ``folder``)."""
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise InputError(
            f"{folder} looks like a {layout} output folder but lacks {', '.join(missing)}; spgpt needs "
            f"{' and '.join(files)} (counts and cell coordinates). Copy the complete output folder."
        )


def broken(path: Path, what: str, e: Exception) -> InputError:
    return InputError(
        f"Could not read {path} ({what}; {type(e).__name__}: {e}). The file is truncated or corrupt; copy it again "
        "from the instrument's output. Nothing was written."
    )


def read_10x_h5(path: Path, keep_type: str = "Gene Expression") -> tuple[sp.csr_matrix, pd.Index, pd.DataFrame, dict]:
    """Counts (cells x features of ``keep_type``, float32 CSR), barcodes, var and the dropped features.

    10x stores ``matrix/{data,indices,indptr,shape}`` column-major with features as rows, i.e. the
    CSR of cells x features as is. Rows are read in blocks of about 2M stored values and the other
    feature types (control probes, codewords) are filtered out on the way, so the peak is the final
    matrix plus a block.
    Returns ``dropped = {feature_type: {"features": n, "counts": total}}``.
    """
    try:
        with h5py.File(path, "r") as f:
            m = f["matrix"]
            n_features, n_cells = (int(v) for v in m["shape"][:])
            indptr = m["indptr"][:].astype(np.int64)
            barcodes = pd.Index(_strings(m["barcodes"][:]))
            feats = m["features"]
            var = pd.DataFrame({"gene_ids": _strings(feats["id"][:]),
                                "feature_types": _strings(feats["feature_type"][:])}, index=_strings(feats["name"][:]))
            if len(indptr) != n_cells + 1 or len(barcodes) != n_cells or len(var) != n_features \
                    or indptr[-1] != m["data"].shape[0]:
                raise ValueError("matrix/shape, indptr, barcodes and features disagree")
            keep = (var["feature_types"] == keep_type).to_numpy()
            new_col = np.full(n_features, -1, np.int64)
            new_col[keep] = np.arange(int(keep.sum()))
            data = np.empty(int(indptr[-1]), np.float32)
            indices = np.empty(int(indptr[-1]), np.int32)
            row_nnz = np.empty(n_cells, np.int64)
            dropped_counts = np.zeros(n_features, np.float64)
            filled, start = 0, 0
            while start < n_cells:
                # rows up to a budget of stored values: a 5,000-gene panel has thousands per cell
                stop = int(np.searchsorted(indptr, indptr[start] + _VALUES_PER_READ, side="right")) - 1
                stop = min(max(stop, start + 1), n_cells)
                lo, hi = indptr[start], indptr[stop]
                d, j = m["data"][lo:hi], m["indices"][lo:hi]
                kept = keep[j]
                np.add.at(dropped_counts, j[~kept], d[~kept])
                kept_before = np.concatenate([[0], np.cumsum(kept)])
                row_nnz[start:stop] = np.diff(kept_before[indptr[start:stop + 1] - lo])
                n = int(kept_before[-1])
                data[filled:filled + n] = d[kept]
                indices[filled:filled + n] = new_col[j[kept]]
                filled += n
                start = stop
    except (OSError, KeyError, ValueError) as e:
        raise broken(path, "a 10x HDF5 matrix", e) from e
    X = sp.csr_matrix((data[:filled], indices[:filled], np.concatenate([[0], np.cumsum(row_nnz)])),
                      shape=(n_cells, int(keep.sum())))
    dropped = {}
    for kind, rows in var[~keep].groupby("feature_types").indices.items():
        idx = np.flatnonzero(~keep)[rows]
        dropped[str(kind)] = {"features": len(idx), "counts": float(dropped_counts[idx].sum())}
    return X, barcodes, var[keep].copy(), dropped


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A parquet table (only ``columns`` when given), with a clear error for missing columns or a broken file."""
    names = read_parquet_schema(path)
    if columns is not None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise InputError(f"{path} has no column(s) {', '.join(missing)} (it has {', '.join(names)}); "
                             "is it the instrument's original file?")
    try:
        # one thread and the arrow buffers freed as pandas takes them over: arrow's allocator keeps
        # what it used, and on a 100k-cell slide that held ~100 MB through the whole analysis
        table = pq.ParquetFile(path).read(columns=columns, use_threads=False)
        df = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
        pa.default_memory_pool().release_unused()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise broken(path, "a parquet table", e) from e
    for c in df.columns:  # older exports store ids as bytes
        if len(df) and isinstance(df[c].iloc[0], bytes):
            df[c] = df[c].str.decode("utf-8")
    return df


def read_parquet_schema(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise broken(path, "a parquet table", e) from e


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - a parser error is the user's file
        raise broken(path, "a CSV table", e) from e


def need_columns(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path} has no column(s) {', '.join(missing)}; is it the instrument's original file?")


def split_controls(counts: pd.DataFrame, kinds: dict[str, tuple[str, ...]]) -> tuple[pd.DataFrame, dict]:
    """Drop the columns whose names start with a control prefix; count them per kind."""
    names = counts.columns.astype(str)
    drop = np.zeros(len(names), bool)
    dropped = {}
    for kind, prefixes in kinds.items():
        hit = names.str.startswith(prefixes) & ~drop
        if hit.any():
            dropped[kind] = {"features": int(hit.sum()), "counts": float(counts.loc[:, hit].to_numpy().sum())}
        drop |= hit
    return counts.loc[:, ~drop], dropped


def stack_counts(chunks, path: Path, controls: dict[str, tuple[str, ...]]):
    """(X float32 CSR, cell names, genes, dropped) from DataFrames of counts (cells as index), one chunk at a time.

    The CSV vendors write dense tables; reading them in chunks keeps only one dense block in memory.
    """
    names, blocks, dropped, genes = [], [], {}, None
    try:
        for chunk in chunks:
            if chunk.isna().to_numpy().any():  # a row cut short: the copy stopped mid-file
                raise ValueError(f"{int(chunk.isna().any(axis=1).sum())} row(s) with missing counts")
            kept, drop = split_controls(chunk, controls)
            for kind, d in drop.items():
                total = dropped.setdefault(kind, {"features": d["features"], "counts": 0.0})
                total["counts"] += d["counts"]
            genes = kept.columns if genes is None else genes
            names.append(kept.index)
            blocks.append(sp.csr_matrix(kept.to_numpy(np.float32)))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a parser error is the user's file
        raise broken(path, "a CSV table", e) from e
    if genes is None:
        raise InputError(f"{path} has no cells.")
    cells = names[0].append(names[1:]) if len(names) > 1 else names[0]
    return sp.vstack(blocks, format="csr"), cells, pd.Index(genes.astype(str)), dropped


def rows_of(table: pd.DataFrame, cells: pd.Index, counts: Path, coordinates: Path) -> np.ndarray:
    """Positions of ``cells`` (the matrix' order) in ``table`` (indexed by cell), or InputError naming both files."""
    pos = table.index.get_indexer(cells)
    if (pos < 0).any():
        raise InputError(
            f"{int((pos < 0).sum())} cells of {counts} are missing from {coordinates} (e.g. '{cells[pos < 0][0]}'); "
            "the two files come from different runs or one is incomplete."
        )
    return pos


def make_slide(X, cells: pd.Index, rows: pd.DataFrame, xy_columns: list[str], var: pd.DataFrame, *,
               scale: float = 1.0, source: dict, dropped: dict, modality: str) -> anndata.AnnData:
    """The AnnData every vendor reader returns: counts in X, ``rows`` (one per cell, in X's order) as obs
    with ``xy_columns`` times ``scale`` (to micrometres) as ``obsm['spatial']``, provenance in uns."""
    xy = rows[xy_columns].to_numpy(np.float64) * scale
    if not np.isfinite(xy).all():
        bad = int((~np.isfinite(xy)).any(axis=1).sum())
        raise InputError(f"{bad} cells in {source['path']} have no coordinates (NaN); the cell table is incomplete.")
    obs = rows.drop(columns=xy_columns)
    obs.index = pd.Index(cells, name=None)
    var = var.copy()
    var.index.name = None
    if not (sp.isspmatrix_csr(X) and X.dtype == np.float32):  # the 10x reader's matrix is used as is
        X = sp.csr_matrix(X, dtype=np.float32)
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.uns["spgpt_source"] = source
    adata.uns["spgpt_vendor"] = {"layout": source["layout"], "units": "micrometre", "dropped_controls": dropped}
    adata.uns["modality"] = modality
    return adata


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
