"""Deconvolution: planted truth (generated slide), real pseudo-spots, tangram equivalence, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers.data import data_file
from spgpt_core import metrics as M
from spgpt_core import tl
from spgpt_core.datasets import make_sample_reference, make_sample_slide
from spgpt_core.tl._deconvolve import compute_proportions
from spgpt_core.tl._genes import match_genes
from spgpt_core.tl._mapping import run_tangram, scale_embedding_block
from spgpt_core.errors import Cancelled, InputError
from spgpt_core.progress import Progress


@pytest.fixture(scope="module")
def planted():
    ref = make_sample_reference(n_cells_per_type=60, seed=1)
    slide = make_sample_slide(n_rows=16, n_cols=20, seed=0, reference=make_sample_reference(seed=0))
    return slide, ref


def test_planted_proportions_are_recovered(planted):
    slide, ref = planted
    res = compute_proportions(slide, ref, celltype_key="cell_type", use_embeddings=False, num_epochs=200)
    P = res.proportions
    assert list(P.columns) == sorted(ref.obs["cell_type"].cat.categories)
    assert P.index.equals(pd.Index(slide.obs_names))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    s = M.deconvolution_scores(slide.obsm["true_proportions"], P)
    # 6 types: chance macro-F1 is ~0.17; the planted dominant type is only ~50% of a spot
    assert s["macro_f1"] > 0.3 and s["accuracy"] > 0.35
    # per type, estimated and true proportions agree across spots
    assert s["pearson_per_type_mean"] > 0.4
    assert (res.dominant.astype(str).to_numpy() == M.dominant_labels(P).astype(str)).all()
    assert res.info["n_embedding_dims"] == 0 and res.info["n_reference_cells"] == ref.n_obs


def test_embedding_block_is_stacked_and_recorded(planted, tiny_model):
    slide, ref = planted
    res = compute_proportions(slide, ref, celltype_key="cell_type", model=tiny_model, num_epochs=30, max_cells_per_type=20)
    assert res.info["n_embedding_dims"] == tiny_model.config.d_model
    assert res.info["n_reference_cells"] == 6 * 20
    assert res.info["model"]["d_model"] == tiny_model.config.d_model
    # precomputed embeddings are used as given (no model needed)
    s2, r2 = slide.copy(), ref.copy()
    rng = np.random.default_rng(0)
    s2.obsm["E"], r2.obsm["E"] = rng.normal(size=(s2.n_obs, 7)), rng.normal(size=(r2.n_obs, 7))
    res = compute_proportions(s2, r2, celltype_key="cell_type", model="default", spatial_rep="E", reference_rep="E",
                     num_epochs=10)
    assert res.info["n_embedding_dims"] == 7 and "model" not in res.info
    assert res.info["embedding_block"] == "as returned (paper)"


def test_embedding_block_as_returned_or_centred_and_scaled():
    rng = np.random.default_rng(0)
    emb = rng.normal(loc=3.0, size=(50, 4))
    emb[7] = np.nan
    expr = rng.uniform(0, 2, size=(50, 30))
    lit = scale_embedding_block(emb, expr, None)  # the paper: stacked as given
    np.testing.assert_allclose(lit[np.arange(50) != 7], emb[np.arange(50) != 7], rtol=1e-6)
    assert (lit[7] == 0).all()
    ok = np.arange(50) != 7
    scaled = scale_embedding_block(emb, expr, 0.5)
    np.testing.assert_allclose(scaled[ok].mean(axis=0), 0, atol=1e-5)
    assert np.linalg.norm(scaled[ok]) == pytest.approx(0.5 * np.linalg.norm(expr[ok]), rel=1e-5)


def test_run_tangram_matches_tangram_mapper():
    from tangram.mapping_optimizer import Mapper

    rng = np.random.default_rng(3)
    S, G = rng.random((40, 25)).astype(np.float32), rng.random((15, 25)).astype(np.float32)
    d = rng.random(15)
    d /= d.sum()
    ref = Mapper(S, G, d=d, lambda_d=1, lambda_g2=1, random_state=7)
    init = ref.M.detach().numpy().copy()
    expected, _ = ref.train(num_epochs=60, learning_rate=0.1, print_each=None)
    got, info = run_tangram(S, G, d=d, lambda_g2=1, num_epochs=60, init=init)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert info["num_epochs"] == 60 and info["lambda_d"] == 1.0


def test_cancel_stops_mapping(planted):
    slide, ref = planted
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        compute_proportions(slide, ref, celltype_key="cell_type", use_embeddings=False, num_epochs=100, progress=p)


def test_real_pseudo_spots_from_another_slice():
    from helpers.pseudo_spots import make_pseudo_spots

    cells = ad.read_h5ad(data_file("starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"))
    ref = ad.read_h5ad(data_file("starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad"))
    spots = make_pseudo_spots(cells, "cell_type")
    assert spots.n_obs > 100 and spots.obs["n_cells"].min() >= 2
    np.testing.assert_allclose(spots.X.sum(), cells.X[:, :].sum() * spots.uns["pseudo_spots"]["n_cells_used"]
                               / cells.n_obs, rtol=0.2)
    res = compute_proportions(spots, ref, celltype_key="cell_type", use_embeddings=False, num_epochs=300)
    s = M.deconvolution_scores(spots.obsm["true_proportions"], res.proportions)
    # 15 types, many rare: chance macro-F1 is well under 0.1
    assert s["macro_f1"] > 0.3, s


def test_tl_deconvolve_writes_results(planted):
    slide, ref = planted
    a = slide.copy()
    tl.deconvolve(a, ref, "cell_type", use_embeddings=False, num_epochs=20, key_added="props", dominant_key="dom")
    assert isinstance(a.obsm["props"], pd.DataFrame) and a.obsm["props"].index.equals(a.obs_names)
    assert a.obs["dom"].dtype == "category" and len(a.uns["dom_colors"]) == len(a.obs["dom"].cat.categories)
    rec = a.uns["props"]
    assert rec["params"]["celltype_key"] == "cell_type" and rec["params"]["lambda_g2"] == 1.0
    assert "versions" in rec and rec["summary"]["n_training_genes"] > 0


def test_gene_matching_uses_the_best_name_columns(dlpfc_small):
    # DLPFC var_names are Ensembl IDs; the reference uses (lower-case) symbols
    ref = ad.AnnData(np.ones((3, 4), np.float32),
                     var=pd.DataFrame(index=[s.lower() for s in dlpfc_small.var["gene_symbol"].astype(str)[:4]]))
    sh = match_genes(dlpfc_small, ref)
    assert sh.a_source == "var['gene_symbol']" and len(sh) == 4


# ------------------------------------------------------------------------------ bad input


def test_reference_without_celltype_column(planted):
    slide, ref = planted
    with pytest.raises(InputError, match="no obs column 'celltype'.*--celltype-key"):
        compute_proportions(slide, ref, celltype_key="celltype", use_embeddings=False)


def test_reference_with_single_cell_type(planted):
    slide, ref = planted
    one = ref[ref.obs["cell_type"] == ref.obs["cell_type"].cat.categories[0]].copy()
    with pytest.raises(InputError, match="1 cell type.*at least 2"):
        compute_proportions(slide, one, celltype_key="cell_type", use_embeddings=False)
    missing = ref.copy()
    missing.obs["cell_type"] = pd.Categorical(["NA"] * (ref.n_obs - 1) + ["Epithelial"])
    with pytest.raises(InputError, match="at least 2 types"):
        compute_proportions(slide, missing, celltype_key="cell_type", use_embeddings=False)


def test_no_shared_genes(planted):
    slide, ref = planted
    other = ref.copy()
    other.var_names = [f"gene{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="share fewer than 5 genes.*--reference-gene-col"):
        compute_proportions(slide, other, celltype_key="cell_type", use_embeddings=False)


@pytest.mark.parametrize("kw,msg", [({"max_cells_per_type": 0}, "max_cells_per_type"),
                                    ({"n_top_genes": 2}, "n_top_genes"),
                                    ({"embedding_weight": -1}, "embedding_weight"),
                                    ({"density_prior": "x"}, "density_prior"),
                                    ({"num_epochs": 0}, "at least 1 epoch"),
                                    ({"spatial_rep": "nope", "reference_rep": "nope"}, "obsm\\['nope'\\]")])
def test_bad_parameters(planted, kw, msg):
    slide, ref = planted
    with pytest.raises(InputError, match=msg):
        compute_proportions(slide, ref, celltype_key="cell_type", **kw)


def test_dominant_labels_and_deconvolution_scores():
    T = pd.DataFrame([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]], columns=list("abc"))
    assert list(M.dominant_labels(T)) == [None, "a", "c", "b"]  # a tie has no dominant type
    s = M.deconvolution_scores(T, T.copy())
    assert s["macro_f1"] == 1.0 and s["accuracy"] == 1.0 and s["jsd_mean"] == 0.0 and s["n_spots_ambiguous"] == 1
    P = pd.DataFrame([[0.6, 0.4], [0.1, 0.9], [0.2, 0.3], [0.0, 1.0]], columns=list("ab"))  # type c missing
    s = M.deconvolution_scores(T, P)
    assert s["accuracy"] == pytest.approx(1 / 3) and 0 < s["jsd_mean"] < 1
