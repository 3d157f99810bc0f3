"""Imputation: planted marker genes, real leave-genes-out, centroids, outputs, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers.data import data_file
from spgpt_core import metrics as M
from spgpt_core import tl
from spgpt_core.datasets import make_sample_reference
from spgpt_core.errors import InputError
from spgpt_core.tl._impute import compute_imputation, measured_expression


@pytest.fixture(scope="module")
def planted():
    """Single cells of 6 types (target) and an independent reference; 12 marker genes held out."""
    allc = make_sample_reference(n_cells_per_type=120, seed=0)  # same profiles; cells split 2:1
    part = np.arange(allc.n_obs) % 3 == 0
    ref, cells = allc[~part].copy(), allc[part].copy()
    markers = allc.uns["sample_truth"]["markers"]
    held = [str(markers[t][k]) for t in list(markers)[:6] for k in (5, 6)]
    target = cells[:, ~cells.var_names.isin(held)].copy()
    return target, ref, cells, held


def test_planted_marker_genes_are_imputed(planted):
    target, ref, cells, held = planted
    res = compute_imputation(target, ref, genes=held, use_embeddings=False, num_epochs=200)
    assert list(res.imputed.columns) == held and res.imputed.index.equals(pd.Index(target.obs_names))
    assert res.info["n_clusters"] == ref.n_obs // 10 and res.mapping is None
    meas = measured_expression(cells, held, res.info["training_genes"])
    s = M.imputation_scores(meas, res.imputed)
    assert s["median_pearson"] > 0.6, s  # markers follow the cell type, which the other genes reveal
    # all reference cells instead of centroids: same quality, bigger mapping
    full = compute_imputation(target, ref, genes=held, use_embeddings=False, method="tangram_cells", num_epochs=200,
                  keep_mapping=True)
    assert full.mapping.shape == (ref.n_obs, target.n_obs)
    assert M.imputation_scores(meas, full.imputed)["median_pearson"] > 0.6


def test_mapping_on_the_most_variable_genes_keeps_the_scale_and_the_quality(planted):
    target, ref, cells, held = planted
    every = compute_imputation(target, ref, genes=held, use_embeddings=False, num_epochs=200, n_top_genes=0)
    n_train = every.info["n_training_genes"]
    assert every.info["n_mapping_genes"] == n_train and every.info["n_top_genes"] is None
    meas = measured_expression(cells, held, every.info["training_genes"])
    for method in ("knn", "tangram_clusters"):
        few = compute_imputation(target, ref, genes=held, use_embeddings=False, num_epochs=200, n_top_genes=60,
                                 method=method)
        assert few.info["n_mapping_genes"] == 60 < n_train
        # library sizes (and so the scale of the imputed values) still come from every training gene
        assert few.info["training_genes"] == every.info["training_genes"]
        assert M.imputation_scores(meas, few.imputed)["median_pearson"] > 0.6
    assert abs(float(few.imputed.to_numpy().mean()) - float(every.imputed.to_numpy().mean())) < 0.05
    nnls = compute_imputation(target, ref, genes=held, method="nnls", n_top_genes=60)
    assert nnls.info["n_mapping_genes"] == n_train  # NNLS fits linear counts of every training gene
    with pytest.raises(InputError, match="n_top_genes=3"):
        compute_imputation(target, ref, genes=held, use_embeddings=False, n_top_genes=3)


def test_requested_genes_never_train_the_mapping(planted):
    _, ref, cells, held = planted
    res = compute_imputation(cells, ref, genes=held[:3], use_embeddings=False, num_epochs=5)
    assert not set(held[:3]) & set(res.info["training_genes"])


def test_embeddings_centroids_and_all_missing(planted, tiny_model):
    target, ref, _, held = planted
    res = compute_imputation(target, ref, all_missing=True, model=tiny_model, num_epochs=20, n_clusters=12, keep_mapping=True)
    assert sorted(res.imputed.columns) == sorted(held)
    assert res.mapping.shape == (12, target.n_obs) and len(np.unique(res.clusters)) == 12
    assert np.isfinite(res.imputed.to_numpy()).all()


def test_real_merfish_leave_genes_out():
    sp_ = ad.read_h5ad(data_file("rctd_pairs/RCTD_merfish_spatial.h5ad"))
    ref = ad.read_h5ad(data_file("rctd_pairs/RCTD_merfish_reference.h5ad"))
    held = ["Gad1", "Slc17a6", "Mbp", "Aqp4", "Cd24a"]  # neuron, glia markers (case as in the data)
    held = [g for g in held if g in sp_.var_names]
    target = sp_[:, ~sp_.var_names.isin(held)].copy()
    res = compute_imputation(target, ref, genes=[g.upper() for g in held], use_embeddings=False, num_epochs=200)
    assert list(res.imputed.columns) == held  # reference's spelling, whatever case was asked
    meas = measured_expression(sp_, held, res.info["training_genes"])
    assert M.imputation_scores(meas, res.imputed)["median_pearson"] > 0.2


def test_tl_impute_writes_results(planted):
    target, ref, _, held = planted
    a = target.copy()
    tl.impute(a, ref, genes=held[:2], use_embeddings=False, num_epochs=5, key_added="imp")
    assert isinstance(a.obsm["imp"], pd.DataFrame) and list(a.obsm["imp"].columns) == held[:2]
    rec = a.uns["imp"]
    assert list(rec["genes"]) == held[:2] and len(rec["training_genes"]) > 100
    assert rec["params"]["density_prior"] == "uniform" and "versions" in rec
    assert a.n_vars == target.n_vars  # measured genes untouched


# ------------------------------------------------------------------------------ bad input


def test_requested_genes_absent_from_reference(planted):
    target, ref, _, held = planted
    with pytest.raises(InputError, match="2 requested gene\\(s\\) are not in the reference: NOTAGENE, XYZ1"):
        compute_imputation(target, ref, genes=[held[0], "NOTAGENE", "XYZ1"], use_embeddings=False)


def test_k_larger_than_reference(planted):
    target, ref, _, held = planted
    with pytest.raises(InputError, match="n_clusters=5000 is larger than the number of reference cells"):
        compute_imputation(target, ref, genes=held[:1], n_clusters=5000, use_embeddings=False)
    with pytest.raises(InputError, match=r"n_clusters=1 must be >= 2 \(or --method tangram_cells"):
        compute_imputation(target, ref, genes=held[:1], n_clusters=1, use_embeddings=False)


def test_no_shared_genes_and_nothing_to_impute(planted):
    target, ref, _, held = planted
    other = target.copy()
    other.var_names = [f"g{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="share fewer than 5 genes"):
        compute_imputation(other, ref, genes=held[:1], use_embeddings=False)
    with pytest.raises(InputError, match="nothing missing to impute"):
        compute_imputation(ref, ref, all_missing=True, use_embeddings=False)
    with pytest.raises(InputError, match="no genes to impute"):
        compute_imputation(target, ref, use_embeddings=False)
    with pytest.raises(InputError, match="either genes or all_missing"):
        compute_imputation(target, ref, genes=held[:1], all_missing=True, use_embeddings=False)


def test_imputation_scores():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    pred = np.column_stack([y[:, 0], -y[:, 1], np.zeros(50)])  # perfect, inverted, constant
    s = M.imputation_scores(y, pred)
    assert s == {"median_pearson": 0.0, "mean_pearson": 0.0, "n_genes": 3, "n_genes_scored": 2}


def test_merge_imputed_accumulates_genes_and_keeps_their_records():
    """Re-running Impute adds genes: a gene imputed again takes the new values, the others stay, and the
    record of each run whose genes remain is kept (the plugin's Impute widget accumulates with this)."""
    from spgpt_core.tl._impute import merge_imputed

    idx = pd.Index(["c1", "c2", "c3"])
    first = pd.DataFrame({"A": [1.0, 2, 3], "B": [4.0, 5, 6]}, index=idx)
    rec1 = {"params": {"seed": 0}, "genes": np.array(["A", "B"], dtype=object)}
    second = pd.DataFrame({"C": [7.0, 8, 9]}, index=idx)
    table, rec = merge_imputed(first, rec1, second, {"params": {"seed": 1}, "genes": np.array(["C"], dtype=object)})
    assert list(table.columns) == ["A", "B", "C"]
    np.testing.assert_array_equal(table["A"], first["A"])
    assert list(rec["genes"]) == ["A", "B", "C"] and list(rec["run_genes"]) == ["C"]
    assert rec["params"]["seed"] == 1 and rec["earlier"]["run_1"]["params"]["seed"] == 0
    # B again: new values; run 1 still owns A, so its record stays
    third = pd.DataFrame({"B": [0.0, 0, 0]}, index=idx)
    table, rec = merge_imputed(table, rec, third, {"params": {"seed": 2}, "genes": np.array(["B"], dtype=object)})
    assert list(table.columns) == ["A", "C", "B"] and table["B"].sum() == 0
    assert set(rec["earlier"]) == {"run_1", "run_2"} and list(rec["earlier"]["run_1"]["run_genes"]) == ["A"]
    # A and C again: no earlier run contributes any more
    fourth = pd.DataFrame({"A": [1.0, 1, 1], "C": [2.0, 2, 2]}, index=idx)
    table, rec = merge_imputed(table, rec, fourth, {"params": {}, "genes": np.array(["A", "C"], dtype=object)})
    assert list(table.columns) == ["B", "A", "C"] and set(rec["earlier"]) == {"run_3"}
    # another slide's table (other cells) is replaced, not merged
    other = pd.DataFrame({"Z": [1.0]}, index=["x"])
    table, rec = merge_imputed(other, {}, second, {"genes": np.array(["C"], dtype=object)})
    assert list(table.columns) == ["C"]
