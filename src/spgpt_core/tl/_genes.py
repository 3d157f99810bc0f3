"""Gene names across two datasets: which genes a slide and a reference share, and where requested
genes are, matched case-insensitively over var_names and every text var column (``gene_symbol``,
Ensembl ids, ...). Used by the mapping verbs (``tl.deconvolve``, ``tl.impute``) and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..params import MIN_SHARED_GENES


def _string_columns(var: pd.DataFrame) -> list[str]:
    cols = []
    for c in var.columns:
        col = var[c]
        values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col
        if pd.api.types.is_string_dtype(values.dtype) or (
            pd.api.types.is_object_dtype(values.dtype) and pd.api.types.infer_dtype(values, skipna=True) == "string"
        ):
            cols.append(c)
    return cols


def _name_sources(adata, gene_col: str | None, what: str) -> list[tuple[str, pd.Index]]:
    if gene_col is not None:
        if gene_col in ("index", "var_names"):
            return [("var_names", pd.Index(adata.var_names.astype(str)))]
        if gene_col not in adata.var.columns:
            raise InputError(
                f"gene column '{gene_col}' is not in the {what}'s var (columns: {list(adata.var.columns) or 'none'}); "
                "pass one of these, or 'index' for var_names"
            )
        return [(f"var['{gene_col}']", pd.Index(adata.var[gene_col].astype(str)))]
    return [("var_names", pd.Index(adata.var_names.astype(str)))] + [
        (f"var['{c}']", pd.Index(adata.var[c].astype(str))) for c in _string_columns(adata.var)
    ]


def _first_keys(names: pd.Index) -> dict[str, int]:
    """Upper-case name -> first var position (missing names skipped)."""
    out: dict[str, int] = {}
    for i, n in enumerate(names):
        k = str(n).strip().upper()
        if k and k not in ("NAN", "NONE") and k not in out:
            out[k] = i
    return out


@dataclass
class SharedGenes:
    """Positions of the genes two datasets share, in a common order."""

    a_idx: np.ndarray
    b_idx: np.ndarray
    names: pd.Index  # the second dataset's (reference's) names, original case
    a_source: str
    b_source: str
    a_all: pd.Index  # every var's name in the chosen source of each dataset
    b_all: pd.Index

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: np.ndarray) -> "SharedGenes":
        return SharedGenes(self.a_idx[keep], self.b_idx[keep], self.names[keep], self.a_source, self.b_source,
                           self.a_all, self.b_all)


def match_genes(a, b, gene_col_a: str | None = None, gene_col_b: str | None = None,
                what_a: str = "slide", what_b: str = "reference") -> SharedGenes:
    """Genes shared by ``a`` and ``b``, matched case-insensitively over the best pair of name sources."""
    best = None
    for sa, na in _name_sources(a, gene_col_a, what_a):
        ka = _first_keys(na)
        for sb, nb in _name_sources(b, gene_col_b, what_b):
            kb = _first_keys(nb)
            shared = [k for k in kb if k in ka]  # reference order
            if best is None or len(shared) > len(best[0]):
                best = (shared, ka, kb, sa, sb, na, nb)
    shared, ka, kb, sa, sb, na, nb = best
    return SharedGenes(np.array([ka[k] for k in shared], dtype=np.int64), np.array([kb[k] for k in shared], dtype=np.int64),
                       pd.Index([nb[kb[k]] for k in shared]), sa, sb, na, nb)


def lookup_sources(adata, gene_col: str | None, what: str) -> list[tuple[str, pd.Index]]:
    """Name sources to look requested genes up in: ``gene_col``'s first (when given), then var_names and
    every text var column. A name is found in whichever source has it, so genes given as var_names
    (e.g. DLPFC's Ensembl ids) are found while ``--gene-col gene_symbol`` matches the datasets."""
    first = _name_sources(adata, gene_col, what) if gene_col is not None else []
    seen = {name for name, _ in first}
    return first + [(n, src) for n, src in _name_sources(adata, None, what) if n not in seen]


def gene_positions(adata, names, gene_col: str | None = None, what: str = "slide") -> np.ndarray:
    """Var positions of ``names`` (case-insensitive), each looked up in :func:`lookup_sources` order."""
    names = [str(g) for g in names]
    keys = [_first_keys(src) for _, src in lookup_sources(adata, gene_col, what)]
    out, missing = [], []
    for g in names:
        k = g.strip().upper()
        hit = next((kk[k] for kk in keys if k in kk), None)
        (missing if hit is None else out).append(g if hit is None else hit)
    if missing:
        raise InputError(f"{len(missing)} gene(s) are not in the {what}: {', '.join(missing[:10])}; "
                         "check the gene names (compared case-insensitively with var_names and every text var column)")
    return np.array(out, dtype=np.int64)


def no_shared_genes_error(a, b, what_a="slide", what_b="reference") -> InputError:
    ex_a = ", ".join(map(str, a.var_names[:5]))
    ex_b = ", ".join(map(str, b.var_names[:5]))
    return InputError(
        f"the {what_a} and the {what_b} share fewer than {MIN_SHARED_GENES} genes (compared case-insensitively over "
        f"var_names and every text var column; {what_a} genes e.g. {ex_a}; {what_b} genes e.g. {ex_b}). Use a "
        f"{what_b} of the same species and gene naming, or pass --gene-col / --reference-gene-col naming the var "
        "columns that hold comparable gene symbols"
    )
