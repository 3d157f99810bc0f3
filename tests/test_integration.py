"""Integration: joint zero-shot embedding of real slides on shared genes, records, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers.data import data_file
from spgpt_core import metrics as M
from spgpt_core import tl
from spgpt_core.errors import InputError
from spgpt_core.tl._integrate import integrate, integrated_features, per_slide_correct


@pytest.fixture(scope="module")
def mpfc():
    return [ad.read_h5ad(data_file(f"starmap_mpfc/STARmap_mPFC_{n}_control.h5ad"))
            for n in ("20180417_BZ5", "20180419_BZ9")]


def test_two_starmap_slices(mpfc, tiny_model):
    before = [a.copy() for a in mpfc]
    out = integrate(mpfc, tiny_model, batch_names=["BZ5", "BZ9"])
    assert out.n_obs == sum(a.n_obs for a in mpfc) and out.n_vars == 154  # genes in the vocabulary of both
    assert list(out.obs["batch"].cat.categories) == ["BZ5", "BZ9"]
    assert (out.obs["batch"].value_counts()[["BZ5", "BZ9"]].to_numpy() == [a.n_obs for a in mpfc]).all()
    assert out.obs["modality"].dtype == "category" and out.obs["modality"].nunique() == 1
    emb = out.obsm["X_spgpt"]
    assert emb.shape == (out.n_obs, tiny_model.config.d_model)
    ok = np.isfinite(emb).all(axis=1)
    np.testing.assert_allclose(np.linalg.norm(emb[ok], axis=1), 1.0, atol=1e-4)
    assert "spatial" in out.obsm and "cell_type" in out.obs
    rec = out.uns["X_spgpt"]
    assert rec["n_shared_genes"] == 154 and set(rec["slides"]) == {"BZ5", "BZ9"} and "versions" in rec
    for a, b in zip(mpfc, before):  # inputs untouched
        assert a.shape == b.shape and (a.X != b.X).nnz == 0 and list(a.obs.columns) == list(b.obs.columns)
    s = M.integration_scores(emb[ok], out.obs["cell_type"].to_numpy()[ok], out.obs["batch"].to_numpy()[ok])
    assert 0 <= s["avg_bio"] <= 1 and 0 <= s["avg_batch"] <= 1
    # slides given as an iterator (the CLI's way, so each slide can be freed once copied): the same result
    again = integrate(iter(mpfc), tiny_model, batch_names=["BZ5", "BZ9"])
    np.testing.assert_array_equal(again.obsm["X_spgpt"], emb)
    assert (again.X != out.X).nnz == 0 and again.obs.equals(out.obs)


def test_ensembl_slides_share_genes_through_symbols(dlpfc_small, tiny_model, tmp_path):
    other = ad.read_h5ad(data_file("dlpfc/DLPFC_151674.h5ad"), backed="r")[:150].to_memory()
    out = tl.integrate([dlpfc_small, other], tiny_model, modalities="visium", n_clusters=3, cluster_key="cl")
    assert out.n_vars > 1000 and out.obs["cl"].nunique() == 3
    assert set(out.obs["modality"]) == {"visium"}
    out.write_h5ad(tmp_path / "joint.h5ad")  # h5ad-writable (outer-joined obs, records)
    back = ad.read_h5ad(tmp_path / "joint.h5ad")
    assert back.obs["batch"].dtype == "category" and back.obsm["X_spgpt"].shape[0] == 350


def test_bad_input(mpfc, tiny_model):
    with pytest.raises(InputError, match="at least 2 slides"):
        integrate(mpfc[:1], tiny_model)
    with pytest.raises(InputError, match="2 batch names for 3 slides|3 slides"):
        integrate([mpfc[0], mpfc[1], mpfc[0]], tiny_model, batch_names=["a", "b"])
    with pytest.raises(InputError, match="distinct"):
        integrate(mpfc, tiny_model, batch_names=["a", "a"])
    x = ad.AnnData(np.ones((5, 6), np.float32), var=pd.DataFrame(index=["GAPDH", "ACTB", "B2M", "CD3E", "CD19", "MS4A1"]))
    y = ad.AnnData(np.ones((5, 6), np.float32), var=pd.DataFrame(index=["EPCAM", "KRT8", "KRT18", "VWF", "PECAM1", "LYZ"]))
    with pytest.raises(InputError, match="needs coordinates on every slide"):  # the default uses neighbours
        integrate([x, y], tiny_model)
    with pytest.raises(InputError, match="share only 0 vocabulary genes"):
        integrate([x, y], tiny_model, spatial_weight=0)


def _planted(n_per_type=60, shift=12.0, seed=0):
    """Two slides with the same three cell types in the same proportions; slide 2 shifted by a planted offset."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 20))
    labels = np.tile(np.repeat(["a", "b", "c"], n_per_type), 2)
    batch = np.repeat(["s1", "s2"], 3 * n_per_type)
    X = centres[np.searchsorted(["a", "b", "c"], labels)] + rng.normal(0, 1, (len(labels), 20))
    direction = rng.normal(0, 1, 20)
    X[batch == "s2"] += shift * direction / np.linalg.norm(direction)
    return X, labels, batch


def test_per_slide_centring_removes_a_planted_offset():
    X, labels, batch = _planted()
    opts = dict(expression=None, coords=None, features="embedding", embedding_share=0.5, spatial_weight=0.0,
                spatial_k=6, n_pcs=10)
    raw = M.integration_scores(integrated_features(embedding=X, batch=batch, per_slide="none", **opts), labels, batch)
    F = integrated_features(embedding=X, batch=batch, per_slide="centre", **opts)
    fixed = M.integration_scores(F, labels, batch)
    assert raw["avg_batch"] < 0.6  # the offset is planted: slides apart
    assert fixed["avg_batch"] > raw["avg_batch"] + 0.3 and fixed["avg_batch"] > 0.9
    assert fixed["ari"] > 0.95  # cell types kept
    for b in ("s1", "s2"):
        np.testing.assert_allclose(F[batch == b].mean(axis=0), 0, atol=1e-5)


def test_per_slide_scaling_equalises_the_slides_spread():
    X, _, batch = _planted()
    X[batch == "s2"] *= 5
    S = per_slide_correct(X, batch, "scale")
    spread = [np.sqrt((S[batch == b] ** 2).sum() / (batch == b).sum()) for b in ("s1", "s2")]
    np.testing.assert_allclose(spread, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(per_slide_correct(X, batch, "none"), X)


def test_neighbourhood_stays_on_each_slide():
    """Slides share a coordinate frame by accident (both start at 0, 0): a spot's neighbours must still come
    from its own slide, so constant slides keep their own values in the neighbour block."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (50, 2))
    coords = np.vstack([xy, xy + 0.01])
    batch = np.repeat(["s1", "s2"], 50)
    expr = np.where(batch == "s1", 0.0, 1.0)[:, None]
    F = integrated_features(embedding=None, expression=expr, batch=batch, coords=coords, features="expression",
                            embedding_share=0.5, per_slide="none", spatial_weight=0.5, spatial_k=6, n_pcs=2)
    assert F.shape == (100, 2)
    np.testing.assert_allclose(F[:, 1], F[:, 0])  # own value == own-slide neighbours' mean


def test_integration_options_are_recorded(mpfc, tiny_model):
    out = integrate(mpfc, tiny_model, batch_names=["BZ5", "BZ9"], features="fused", embedding_share=0.25,
                    per_slide="centre", spatial_weight=0.5, n_pcs=10, n_clusters=3)
    rec = out.uns["X_spgpt"]
    assert rec["integrated_key"] == "X_spgpt_integrated"
    assert {k: rec["params"][k] for k in ("features", "embedding_share", "per_slide", "spatial_weight", "spatial_k",
                                          "n_pcs")} == dict(features="fused", embedding_share=0.25, per_slide="centre",
                                                            spatial_weight=0.5, spatial_k=6, n_pcs=10)
    F = out.obsm["X_spgpt_integrated"]
    assert F.shape == (out.n_obs, 10) and out.obsm["X_spgpt"].shape[1] == tiny_model.config.d_model
    for b in ("BZ5", "BZ9"):  # centred on each slide
        rows = (out.obs["batch"] == b).to_numpy() & np.isfinite(F).all(axis=1)
        np.testing.assert_allclose(F[rows].mean(axis=0), 0, atol=1e-4)
    assert out.obs["spgpt_cluster"].nunique() == 3
    expr = integrate(mpfc, tiny_model, batch_names=["BZ5", "BZ9"], features="expression", per_slide="scale")
    assert "X_spgpt" not in expr.obsm and expr.obsm["X_spgpt_integrated"].shape == (expr.n_obs, 30)
    with pytest.raises(InputError, match="needs coordinates on every slide"):
        no_xy = mpfc[1].copy()
        del no_xy.obsm["spatial"]
        no_xy.obs = no_xy.obs.drop(columns=["x", "y"])
        integrate([mpfc[0], no_xy], "no/such/model", spatial_weight=0.2)  # refused before the model is loaded
