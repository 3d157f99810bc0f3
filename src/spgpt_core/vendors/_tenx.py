"""Writing 10x Genomics files for generated folders: the HDF5 feature-barcode matrix and Xenium cell ids."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp


def write_10x_h5(path: Path, X: sp.csr_matrix, barcodes, *, ids, names, types, software: str,
                 genome: str = "GRCh38") -> None:
    """The ``matrix`` group of Cell Ranger, Space Ranger and Xenium: features x barcodes in CSC, i.e. X in CSR."""
    X = sp.csr_matrix(X)
    X.sort_indices()
    with h5py.File(path, "w") as f:
        f.attrs.update({"filetype": "matrix", "version": 2, "software_version": software,
                        "chemistry_description": "synthetic (spgpt)", "library_ids": np.array([b"spgpt"]),
                        "original_gem_groups": np.array([1])})
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=X.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=X.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=np.array(types, dtype="S"))
        feats.create_dataset("genome", data=np.array([genome] * len(names), dtype="S"))
        feats.create_dataset("id", data=np.array(ids, dtype="S"))
        feats.create_dataset("name", data=np.array(names, dtype="S"))


def xenium_cell_ids(n: int, suffix: int = 1) -> np.ndarray:
    """Xenium's cell ids for prefixes 1..n: each uint32 as 8 hex digits shifted to letters ('a'-'p'), then '-1'."""
    prefix = np.arange(1, n + 1, dtype=np.uint32)
    shifts = np.array([28, 24, 20, 16, 12, 8, 4, 0], dtype=np.uint32)
    chars = (((prefix[:, None] >> shifts) & 0xF) + ord("a")).astype(np.uint8)
    return np.char.add(chars.view("S8").ravel().astype("U8"), f"-{suffix}").astype(object)
