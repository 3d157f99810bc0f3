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
from spgpt_core.tl._integrate import integrate


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
    with pytest.raises(InputError, match="share only 0 vocabulary genes"):
        integrate([x, y], tiny_model)
