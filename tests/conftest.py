"""Shared fixtures: the real data folder (../shared/data beside the repository) and small models."""

from __future__ import annotations

import pytest
from helpers.data import data_file  # pytest puts tests/ (no __init__.py) on sys.path


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
