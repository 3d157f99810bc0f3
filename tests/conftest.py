"""Shared fixtures: the real data folder (../shared/data beside the repository) and small models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # spgpt_testdata, scgpt_checkpoint
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # reference_embed.py

from spgpt_testdata import data_file  # noqa: E402


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
