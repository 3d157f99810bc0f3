"""Highly variable genes: streamed selection agrees with scanpy's seurat flavour on real data."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from helpers.data import data_file
from spgpt_core.pp.hvg import highly_variable_mask


@pytest.fixture(scope="module")
def dlpfc():
    return ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"))


def test_matches_scanpy_seurat_flavour(dlpfc):
    ours = highly_variable_mask(dlpfc, 2000, chunk_size=1000)
    b = dlpfc.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    sc.pp.highly_variable_genes(b, n_top_genes=2000, flavor="seurat")
    theirs = b.var["highly_variable"].to_numpy()
    assert ours.sum() == 2000
    assert (ours & theirs).sum() >= 0.98 * 2000


def test_independent_of_chunking_and_backed_reading(dlpfc, tmp_path):
    a = highly_variable_mask(dlpfc, 500, chunk_size=4096)
    dlpfc.write_h5ad(tmp_path / "s.h5ad")
    backed = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    assert np.array_equal(a, highly_variable_mask(backed, 500, chunk_size=333))


def test_restricted_to_candidate_genes(dlpfc):
    cand = np.zeros(dlpfc.n_vars, dtype=bool)
    cand[::2] = True
    m = highly_variable_mask(dlpfc, 300, genes=cand)
    assert m.sum() == 300 and not (m & ~cand).any()


def test_small_panels_are_used_whole():
    a = ad.read_h5ad(data_file("starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"))
    assert highly_variable_mask(a, 3000) is None
    assert highly_variable_mask(a, None) is None and highly_variable_mask(a, 0) is None


def test_embedding_records_the_genes_it_used(dlpfc, tiny_model):
    from spgpt_core import tl

    small = dlpfc[:300].copy()
    tl.embed(small, tiny_model, n_top_genes=1000)
    rec = small.uns["X_spgpt"]
    assert rec["params"]["n_top_genes"] == 1000 and rec["summary"]["n_genes_used"] == 1000
    tl.embed(small, tiny_model, n_top_genes=None, key_added="all")
    assert small.uns["all"]["summary"]["n_genes_used"] == rec["gene_match"]["n_matched"]
    assert not np.allclose(small.obsm["X_spgpt"], small.obsm["all"])
