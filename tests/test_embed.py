"""Embedding end to end: determinism, chunking invariance, bad input, every real data file."""


import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from helpers.data import DATA_DIR, data_file
from spgpt_core import tl
from spgpt_core.errors import InputError


def test_same_seed_same_embeddings_whatever_batch_or_chunk_size(dlpfc_small, tiny_model):
    a = dlpfc_small.copy()
    tl.embed(a, tiny_model, batch_size=64, chunk_size=4096, seed=3, key_added="e1")
    tl.embed(a, tiny_model, batch_size=5, chunk_size=37, seed=3, key_added="e2")
    np.testing.assert_allclose(a.obsm["e1"], a.obsm["e2"], atol=2e-5)
    # rows are L2-normalised <cls> states
    np.testing.assert_allclose(np.linalg.norm(a.obsm["e1"], axis=1), 1, atol=1e-5)
    rec = a.uns["e1"]
    assert rec["params"]["seed"] == 3 and rec["gene_match"]["n_matched"] > 7000
    assert rec["model"]["d_model"] == 32 and "torch" in rec["versions"]
    assert rec["params"]["modality"] == "visium"


def test_embedding_layer_option(dlpfc_small, tiny_model):
    from spgpt_core.tl._embed import compute_embedding

    a = dlpfc_small[:200].copy()
    final, _ = compute_embedding(a, tiny_model)
    last, _ = compute_embedding(a, tiny_model, layer=tiny_model.config.n_layers)
    first, _ = compute_embedding(a, tiny_model, layer=1)
    np.testing.assert_allclose(last, final, atol=1e-6)
    assert np.abs(first - final).max() > 1e-2
    with pytest.raises(InputError, match=r"layer must be -1 \(the final layer\) or 1\.\."):
        compute_embedding(a, tiny_model, layer=0)


def test_other_seed_changes_tie_breaks(dlpfc_small, tiny_model):
    a = dlpfc_small.copy()
    tl.embed(a, tiny_model, seed=0, key_added="s0")
    tl.embed(a, tiny_model, seed=1, key_added="s1")
    assert np.abs(a.obsm["s0"] - a.obsm["s1"]).max() > 1e-4  # integer counts have many binning ties


def test_sparse_dense_and_backed_inputs_agree(tmp_path, dlpfc_small, tiny_model):
    dense = dlpfc_small.copy()
    dense.X = dense.X.toarray()
    sparse = dlpfc_small.copy()
    tl.embed(dense, tiny_model, key_added="e")
    tl.embed(sparse, tiny_model, key_added="e")
    path = tmp_path / "s.h5ad"
    sparse.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    tl.embed(backed, tiny_model, key_added="e", chunk_size=64)
    np.testing.assert_allclose(dense.obsm["e"], sparse.obsm["e"], atol=2e-5)
    np.testing.assert_allclose(backed.obsm["e"], sparse.obsm["e"], atol=2e-5)


def _toy(X, genes=("GAD1", "GAD2", "SST", "PVALB", "VIP", "SNAP25")):
    X = np.asarray(X, dtype=np.float32)
    return ad.AnnData(sp.csr_matrix(X), var={"g": list(genes[: X.shape[1]])},
                      obs={"c": [f"c{i}" for i in range(X.shape[0])]}).copy()


def test_empty_cells_error_names_the_fix_or_are_dropped(tiny_model):
    X = np.array([[1, 2, 0, 3, 1, 1], [0, 0, 0, 0, 0, 0], [4, 0, 1, 0, 2, 2]])
    a = _toy(X)
    a.var_names = ["GAD1", "GAD2", "SST", "PVALB", "VIP", "SNAP25"]
    with pytest.raises(InputError, match=r"1 of 3 cells express none.*--drop-empty"):
        tl.embed(a, tiny_model)
    tl.embed(a, tiny_model, empty="drop")
    assert np.isnan(a.obsm["X_spgpt"][1]).all() and np.isfinite(a.obsm["X_spgpt"][[0, 2]]).all()
    assert a.obs["X_spgpt_empty"].tolist() == [False, True, False]


@pytest.mark.parametrize("bad,msg", [(np.nan, "NaN"), (-1.0, "negative"), (np.inf, "infinite")])
def test_bad_values_are_refused(tiny_model, bad, msg):
    X = np.array([[1, 2, 0, 3, 1, 1], [2, 1, 1, 0, 0, 1]], dtype=np.float32)
    X[1, 0] = bad
    a = _toy(X)
    a.var_names = ["GAD1", "GAD2", "SST", "PVALB", "VIP", "SNAP25"]
    with pytest.raises(InputError, match=msg):
        tl.embed(a, tiny_model)


def test_no_matching_genes_is_refused(tiny_model):
    a = ad.AnnData(sp.csr_matrix(np.ones((3, 6), dtype=np.float32)))
    a.var_names = [f"notagene{i}" for i in range(6)]
    with pytest.raises(InputError, match="match"):
        tl.embed(a, tiny_model)


def test_cluster_smoothing_without_coordinates_is_refused(tiny_model):
    a = ad.AnnData(np.zeros((20, 2), dtype=np.float32))
    a.obsm["X_spgpt"] = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    with pytest.raises(InputError, match="coordinates"):
        tl.cluster(a, n_clusters=3, method="kmeans", smooth_k=4)
    with pytest.raises(InputError, match="n_clusters=50"):
        tl.cluster(a, n_clusters=50, method="kmeans")


def _data_files():
    if not DATA_DIR.is_dir():
        return []
    return sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*.h5ad"))


@pytest.mark.parametrize("rel", _data_files() or ["<data folder absent>"])
def test_every_real_data_file_embeds(rel, tiny_model):
    path = data_file(rel)
    a = ad.read_h5ad(path, backed="r")
    sub = a[: min(a.n_obs, 120)].to_memory()
    tl.embed(sub, tiny_model, empty="drop")
    emb = sub.obsm["X_spgpt"]
    ok = np.isfinite(emb).all(1)
    assert ok.mean() > 0.9, f"{(~ok).sum()} empty cells"
    assert sub.uns["X_spgpt"]["gene_match"]["fraction"] > 0.8
    assert sub.uns["X_spgpt"]["gene_match"]["n_matched"] >= 20
