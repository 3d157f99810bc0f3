"""Shared fixtures: the real data folder (../shared/data beside the repository) and small models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "bench"))  # bench/reference_embed.py is the reference-path re-creation


def data_file(rel: str) -> Path:
    """Path of a file under ../shared/data; skips the test (with the reason) when the folder is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} is absent (it is present in CI)")
    p = DATA_DIR / rel
    if not p.exists():
        pytest.fail(f"expected data file {p} is missing from ../shared/data")
    return p


@pytest.fixture(scope="session")
def tiny_model():
    from spgpt_core import SpGPT

    return SpGPT.random("tiny", seed=0)


@pytest.fixture(scope="session")
def dlpfc_small():
    """The first 200 spots of DLPFC 151673 (real Visium counts, Ensembl var_names + gene_symbol)."""
    import anndata as ad

    a = ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"), backed="r")
    return a[:200].to_memory()
