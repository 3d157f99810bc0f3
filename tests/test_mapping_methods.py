"""Mapping methods (tangram_cells, tangram_clusters, nnls, consensus, knn), the automatic choice by size, the early
refusal of cells mode, chunking, input-scale detection and --genes found by any gene-name column."""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spgpt_core import metrics as M
from spgpt_core import params
from spgpt_core.datasets import make_sample_reference, make_sample_slide
from spgpt_core.errors import Cancelled, InputError
from spgpt_core.progress import Progress
from spgpt_core.tl._deconvolve import compute_proportions
from spgpt_core.tl._impute import compute_imputation, measured_expression
from spgpt_core.tl._expression import detect_scale
from spgpt_core.tl._mapping import nnls_weights, spot_chunks


@pytest.fixture(scope="module")
def planted():
    # the reference's cells are drawn from the same type profiles the slide's spots mix (same seed):
    # another seed plants other background profiles, which no method should be asked to see through
    ref = make_sample_reference(n_cells_per_type=60, seed=0)
    slide = make_sample_slide(n_rows=16, n_cols=20, seed=0, reference=make_sample_reference(seed=0))
    return slide, ref


def _volume_normalised(a: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """MERFISH-style: each row's counts divided by a random cell volume (non-integer, linear)."""
    b = a.copy()
    vol = np.random.default_rng(seed).uniform(80, 400, b.n_obs)
    b.X = sp.csr_matrix(sp.diags(1 / vol) @ sp.csr_matrix(b.X, dtype=np.float64), dtype=np.float32)
    return b


def _log_normalised(a: ad.AnnData) -> ad.AnnData:
    import scanpy as sc

    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


@pytest.mark.parametrize("method,epochs", [("nnls", 1), ("tangram_clusters", 300), ("tangram_cells", 200)])
def test_each_method_recovers_planted_proportions(planted, method, epochs):
    slide, ref = planted
    res = compute_proportions(slide, ref, celltype_key="cell_type", use_embeddings=False, method=method,
                              num_epochs=epochs)
    s = M.deconvolution_scores(slide.obsm["true_proportions"], res.proportions)
    # 6 types, chance macro-F1 ~0.17; the planted dominant type is ~50% of a spot
    assert s["macro_f1"] > 0.4 and s["pearson_per_type_mean"] > 0.5, s
    assert res.info["method"] == method and res.info["method_requested"] == method
    np.testing.assert_allclose(res.proportions.sum(axis=1), 1.0, atol=1e-6)


def test_consensus_weighs_tangram_clusters_and_nnls_by_their_fit(planted):
    slide, ref = planted
    kw = dict(celltype_key="cell_type", use_embeddings=False, num_epochs=100)
    runs = {m: compute_proportions(slide, ref, method=m, **kw) for m in ("consensus", "tangram_clusters", "nnls")}
    info = runs["consensus"].info
    w_nnls, w_tangram = info["consensus_weights"]
    assert w_nnls + w_tangram == pytest.approx(1, abs=1e-3) and min(w_nnls, w_tangram) > 0.3
    assert info["fit_r_nnls"] == runs["nnls"].info["fit_r"] and info["fit_r_tangram"] == runs["tangram_clusters"].info["fit_r"]
    want = w_nnls * runs["nnls"].proportions + w_tangram * runs["tangram_clusters"].proportions
    pd.testing.assert_frame_equal(runs["consensus"].proportions, want, atol=1e-3)
    truth = slide.obsm["true_proportions"]
    f1 = {m: M.deconvolution_scores(truth, r.proportions)["macro_f1"] for m, r in runs.items()}
    assert f1["consensus"] >= min(f1["nnls"], f1["tangram_clusters"]), f1


def test_consensus_drops_a_method_that_does_not_explain_the_slide():
    """A reference whose types put their markers on other genes than the slide's (another generator seed):
    NNLS's proportions explain none of the slide's genes (and score below chance); consensus follows
    Tangram instead of averaging NNLS's error in."""
    ref = make_sample_reference(n_cells_per_type=60, seed=1)
    slide = make_sample_slide(n_rows=16, n_cols=20, seed=0, reference=make_sample_reference(seed=0))
    kw = dict(celltype_key="cell_type", use_embeddings=False, num_epochs=200)
    cons = compute_proportions(slide, ref, method="consensus", **kw)
    tg = compute_proportions(slide, ref, method="tangram_clusters", **kw)
    assert cons.info["fit_r_nnls"] < cons.info["fit_r_tangram"]
    assert cons.info["consensus_weights"][0] < 0.2
    truth = slide.obsm["true_proportions"]
    f1 = M.deconvolution_scores(truth, cons.proportions)["macro_f1"]
    assert f1 > 0.3 and f1 >= M.deconvolution_scores(truth, tg.proportions)["macro_f1"] - 0.05


def test_nnls_recovers_exact_mixtures():
    """Spots that are exact mixtures of the class means give their weights back (the fit, not luck)."""
    rng = np.random.default_rng(0)
    profiles = rng.gamma(1.0, 1.0, (5, 60))
    W = rng.dirichlet(np.ones(5), 300) * rng.uniform(5, 20, (300, 1))
    got = nnls_weights(sp.csr_matrix(W @ profiles), profiles, chunk_size=64)
    np.testing.assert_allclose(got, W, rtol=1e-6, atol=1e-8)


def test_nnls_chunked_equals_unchunked(planted):
    slide, ref = planted
    one = compute_proportions(slide, ref, celltype_key="cell_type", method="nnls", chunk_size=100_000)
    many = compute_proportions(slide, ref, celltype_key="cell_type", method="nnls", chunk_size=7)
    pd.testing.assert_frame_equal(one.proportions, many.proportions)
    assert one.info["embeddings_used"] is False  # nnls never loads a model


def test_tangram_clusters_in_random_chunks_keeps_quality(planted):
    slide, ref = planted
    whole = compute_proportions(slide, ref, celltype_key="cell_type", method="tangram_clusters",
                                use_embeddings=False, num_epochs=300)
    parts = compute_proportions(slide, ref, celltype_key="cell_type", method="tangram_clusters",
                                use_embeddings=False, num_epochs=300, chunk_size=60)
    assert parts.info["n_chunks"] == int(np.ceil(slide.n_obs / 60))
    a = M.deconvolution_scores(slide.obsm["true_proportions"], whole.proportions)
    b = M.deconvolution_scores(slide.obsm["true_proportions"], parts.proportions)
    assert b["pearson_per_type_mean"] > a["pearson_per_type_mean"] - 0.1, (a, b)
    chunks = spot_chunks(1000, 300, seed=0)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(1000)) and max(map(len, chunks)) <= 300
    # random partition: a chunk is spread over the slide, not one contiguous block
    assert np.ptp(chunks[0]) > 900


def test_separable_path_at_ten_thousand_spots():
    ref = make_sample_reference(n_cells_per_type=40, seed=0)
    slide = make_sample_slide(n_rows=115, n_cols=115, seed=0, reference=make_sample_reference(seed=0))
    assert slide.n_obs >= 10_000
    progress_seen = []
    t = time.time()
    res = compute_proportions(slide, ref, celltype_key="cell_type", method="nnls", chunk_size=2048,
                              progress=Progress(lambda d, n, desc: progress_seen.append((d, n))))
    assert time.time() - t < 60
    s = M.deconvolution_scores(slide.obsm["true_proportions"], res.proportions)
    assert s["macro_f1"] > 0.4 and s["pearson_per_type_mean"] > 0.5, s
    assert progress_seen[-1] == (slide.n_obs, slide.n_obs) and len(progress_seen) >= 5


def test_separable_path_is_cancellable(planted):
    slide, ref = planted
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        compute_proportions(slide, ref, celltype_key="cell_type", method="nnls", chunk_size=10, progress=p)


def test_auto_switches_to_a_separable_method_by_size(planted, monkeypatch):
    slide, ref = planted
    monkeypatch.setitem(params.AUTO_METHOD, "deconvolve", "tangram_cells")
    monkeypatch.setattr(params, "AUTO_SEPARABLE_FROM_SPOTS", 100)  # the slide has ~250 spots
    res = compute_proportions(slide, ref, celltype_key="cell_type", use_embeddings=False, num_epochs=5)
    assert res.info["method"] == params.AUTO_SEPARABLE_METHOD["deconvolve"]
    assert res.info["method_requested"] == "auto" and ">= 100" in res.info["method_reason"]


def test_cells_mode_is_refused_early_above_the_bound(planted, monkeypatch):
    slide, ref = planted
    monkeypatch.setattr(params, "MAX_CELLS_MODE_PAIRS", 1000)
    t = time.time()
    # a model spec that cannot load: the refusal must come before any model or embedding work
    with pytest.raises(InputError, match=r"--method tangram_cells .* above the 1,000 .* Use --method nnls or "
                                         r"--method tangram_clusters"):
        compute_proportions(slide, ref, celltype_key="cell_type", model="/no/such/model.pt", method="tangram_cells")
    with pytest.raises(InputError, match="--method nnls or --method tangram_clusters"):
        compute_imputation(slide, ref, genes=[str(ref.var_names[0])], model="/no/such/model.pt",
                           method="tangram_cells")
    assert time.time() - t < 5
    # auto with cells mode as its small-slide choice falls back to the separable method instead
    monkeypatch.setitem(params.AUTO_METHOD, "deconvolve", "tangram_cells")
    res = compute_proportions(slide, ref, celltype_key="cell_type", use_embeddings=False, num_epochs=5)
    assert res.info["method"] == params.AUTO_SEPARABLE_METHOD["deconvolve"] and "1,000" in res.info["method_reason"]


# ------------------------------------------------------------------------------------- input scale


def test_scale_detection(planted):
    slide, _ = planted
    assert detect_scale(slide)["scale"] == "counts"
    assert detect_scale(_volume_normalised(slide))["scale"] == "normalised"
    logn = detect_scale(_log_normalised(slide))
    assert logn["scale"] == "log1p" and "log1p_of" not in logn
    raw_log = slide.copy()
    raw_log.X = sp.csr_matrix(np.log1p(raw_log.X.toarray()))
    assert detect_scale(raw_log) == {"scale": "log1p", "log1p_of": "counts", "detected": True,
                                     "reason": "expm1 of the values are whole numbers: log1p of raw counts"}
    # rounded log values without scanpy's mark: neither structure survives -> ask, naming the option
    amb = _log_normalised(slide)
    amb.X.data = np.round(amb.X.data, 1)
    del amb.uns["log1p"]
    with pytest.raises(InputError, match="--input-scale log1p .* --input-scale normalised"):
        detect_scale(amb)
    assert detect_scale(amb, declared="log1p")["detected"] is False
    neg = slide.copy()
    neg.X = sp.csr_matrix(neg.X.toarray() - 1.0)
    with pytest.raises(InputError, match="negative"):
        detect_scale(neg)


@pytest.mark.parametrize("transform,expected", [(_volume_normalised, "normalised"), (_log_normalised, "log1p")])
def test_normalised_inputs_are_used_without_renormalising(planted, transform, expected):
    slide, ref = planted
    base = compute_proportions(slide, ref, celltype_key="cell_type", method="nnls")
    res = compute_proportions(transform(slide), transform(ref), celltype_key="cell_type", method="nnls")
    assert res.info["input_scale"] == expected and res.info["reference_input_scale"] == expected
    a = M.deconvolution_scores(slide.obsm["true_proportions"], base.proportions)
    b = M.deconvolution_scores(slide.obsm["true_proportions"], res.proportions)
    assert b["pearson_per_type_mean"] > a["pearson_per_type_mean"] - 0.1, (a, b)


# ------------------------------------------------------------------------------------- imputation


@pytest.fixture(scope="module")
def cells_and_reference():
    allc = make_sample_reference(n_cells_per_type=120, seed=0)
    part = np.arange(allc.n_obs) % 3 == 0
    ref, cells = allc[~part].copy(), allc[part].copy()
    markers = allc.uns["sample_truth"]["markers"]
    held = [str(markers[t][k]) for t in list(markers)[:6] for k in (5, 6)]
    return cells[:, ~cells.var_names.isin(held)].copy(), ref, cells, held


@pytest.mark.parametrize("method", ["knn", "nnls", "tangram_clusters"])
def test_imputation_methods_recover_planted_markers(cells_and_reference, method):
    target, ref, cells, held = cells_and_reference
    res = compute_imputation(target, ref, genes=held, use_embeddings=False, method=method, num_epochs=200)
    assert res.info["method"] == method and list(res.imputed.columns) == held
    s = M.imputation_scores(measured_expression(cells, held, res.info["training_genes"]), res.imputed)
    assert s["median_pearson"] > 0.6, s


def test_genes_by_var_names_while_gene_col_matches(cells_and_reference, tmp_path):
    """The issue's failure: Ensembl var_names given to --genes with --gene-col gene_symbol."""
    target, ref, cells, held = cells_and_reference

    def ensembl(a):
        b = a.copy()
        b.var["gene_symbol"] = b.var_names.astype(str)
        b.var_names = [f"ENSG{i:011d}" for i in range(b.n_vars)]
        return b

    sym_to_id = dict(zip(ref.var_names, [f"ENSG{i:011d}" for i in range(ref.n_vars)]))
    t2, r2 = ensembl(target), ensembl(ref)
    r2.var_names = [sym_to_id[g] for g in ref.var_names]
    ids = [sym_to_id[g] for g in held]
    res = compute_imputation(t2, r2, genes=ids, gene_col="gene_symbol", use_embeddings=False, method="knn")
    assert list(res.imputed.columns) == ids
    # by symbol too, named as asked
    res2 = compute_imputation(t2, r2, genes=held[:2], gene_col="gene_symbol", use_embeddings=False, method="knn")
    assert list(res2.imputed.columns) == held[:2]
    with pytest.raises(InputError, match="1 requested gene\\(s\\) are not in the reference: NOPE"):
        compute_imputation(t2, r2, genes=ids[:1] + ["NOPE"], gene_col="gene_symbol", use_embeddings=False)
    # the CLI, end to end
    from spgpt_core.cli import main

    t2.write_h5ad(tmp_path / "t.h5ad")
    r2.write_h5ad(tmp_path / "r.h5ad")
    assert main(["-q", "impute", str(tmp_path / "t.h5ad"), "--reference", str(tmp_path / "r.h5ad"), "--genes",
                 ",".join(ids[:3]), "--gene-col", "gene_symbol", "--method", "knn", "--no-embeddings",
                 "--out", str(tmp_path / "o.h5ad")]) == 0
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert out.uns["spgpt_imputed"]["params"]["method"] == "knn"


def test_normalised_rows_keep_their_relative_scale(planted):
    """Normalised values get one global factor, not a per-row library-size renormalisation; counts do."""
    from spgpt_core.tl._expression import linear_block, log_expression

    slide, _ = planted
    vol = _volume_normalised(slide)
    idx = np.arange(vol.n_vars)
    for a, same_totals in ((vol, False), (slide, True)):
        scale = detect_scale(a)
        block = linear_block(a, idx, scale)
        back = np.expm1(log_expression(block, scale).astype(np.float64)).sum(axis=1)
        raw = np.asarray(block.sum(axis=1)).ravel()
        if same_totals:  # counts: every row to 1e4
            np.testing.assert_allclose(back, 1e4, rtol=1e-3)
        else:  # the producer's per-row scale survives: back is proportional to the row totals
            np.testing.assert_allclose(back / raw, (back / raw)[0], rtol=1e-3)
            assert np.std(back) / np.mean(back) > 0.1


def test_auto_maps_a_slide_at_the_size_switch_by_nnls_in_seconds():
    """At AUTO_SEPARABLE_FROM_SPOTS spots auto needs no model (a path that cannot load proves it) and maps
    20k spots quickly: below it the consensus' Tangram epochs cost ~25 ms a spot."""
    n_rows = int(np.ceil(params.AUTO_SEPARABLE_FROM_SPOTS / 150 * 1.3))  # ~80% of the grid is tissue
    slide = make_sample_slide(n_rows=n_rows, n_cols=150, seed=0, reference=make_sample_reference(seed=0))
    assert slide.n_obs >= params.AUTO_SEPARABLE_FROM_SPOTS
    ref = make_sample_reference(n_cells_per_type=60, seed=0)
    t = time.time()
    res = compute_proportions(slide, ref, celltype_key="cell_type", model="/no/such/model.pt")
    assert time.time() - t < 60
    assert res.info["method"] == "nnls" and f">= {params.AUTO_SEPARABLE_FROM_SPOTS:,}" in res.info["method_reason"]
    s = M.deconvolution_scores(slide.obsm["true_proportions"], res.proportions)
    assert s["macro_f1"] > 0.4 and s["pearson_per_type_mean"] > 0.5, s
