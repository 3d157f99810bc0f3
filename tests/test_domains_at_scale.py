"""`spgpt domains` and `spgpt cluster` above scanpy's 8,192-cell switch: planted domains recovered,
bad requests refused before any embedding."""

from __future__ import annotations

import time

import anndata as ad
import pytest
from sklearn.metrics import adjusted_rand_score

from spgpt_core import tl
from spgpt_core.cli import main
from spgpt_core.datasets import make_sample_slide

N_DOMAINS = 5


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory):
    slide = make_sample_slide(n_rows=130, n_cols=100, n_domains=N_DOMAINS, seed=1)
    assert slide.n_obs >= 10_000
    path = tmp_path_factory.mktemp("scale") / "slide_10k.h5ad"
    slide.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def domains_out(big_slide):
    out = big_slide.with_name("domains_10k.h5ad")
    # the model's path (embedding fused with the expression): its embedding is what `spgpt cluster` re-clusters
    assert main(["-q", "domains", str(big_slide), "--n-clusters", str(N_DOMAINS), "--features", "fused",
                 "--out", str(out)]) == 0
    return out


def test_domains_recovers_planted_bands_at_10k_spots(domains_out):
    a = ad.read_h5ad(domains_out)
    assert a.n_obs >= 10_000 and a.obs["spgpt_domain"].nunique() == N_DOMAINS
    assert a.uns["spgpt_domain"]["params"]["features"] == "fused" and "X_spgpt" in a.obsm
    assert adjusted_rand_score(a.obs["domain"], a.obs["spgpt_domain"]) > 0.6


def test_default_domains_at_10k_spots(big_slide, tmp_path):
    """The default (the slide's expression beside its neighbourhood, no model) at 10k spots."""
    out = tmp_path / "default_10k.h5ad"
    assert main(["-q", "domains", str(big_slide), "--n-clusters", str(N_DOMAINS), "--out", str(out)]) == 0
    a = ad.read_h5ad(out)
    params = a.uns["spgpt_domain"]["params"]
    assert a.n_obs >= 10_000 and params["features"] == "expression"
    assert params["consensus"] == 5 and params["consensus_members"] == 10  # the default's 2 views x 5 seeds
    assert params["smoothing"] == "potts" and params["spatial_prior"] == 0.5 and params["potts_k"] == 6
    assert adjusted_rand_score(a.obs["domain"], a.obs["spgpt_domain"]) > 0.6


def test_cluster_recovers_planted_bands_at_10k_spots(domains_out, tmp_path):
    out = tmp_path / "clustered.h5ad"
    assert main(["-q", "cluster", str(domains_out), "--n-clusters", str(N_DOMAINS), "--smooth-k", "6",
                 "--key-added", "again", "--out", str(out)]) == 0
    a = ad.read_h5ad(out)
    assert a.obs["again"].nunique() == N_DOMAINS
    assert adjusted_rand_score(a.obs["domain"], a.obs["again"]) > 0.6
    # Louvain and k-means take the same graph / embedding at this size
    for method in ("louvain", "kmeans"):
        assert main(["-q", "cluster", str(domains_out), "--n-clusters", str(N_DOMAINS), "--method", method,
                     "--key-added", method, "--out", str(tmp_path / f"{method}.h5ad")]) == 0


@pytest.fixture
def no_embedding(monkeypatch):
    """Fail the test if anything reaches the embedding."""
    def refuse(*args, **kwargs):
        raise AssertionError("the slide was embedded before its inputs were checked")

    monkeypatch.setattr(tl, "embed", refuse)


def _refused(args, capsys) -> str:
    t0 = time.time()
    assert main(args) == 2
    assert time.time() - t0 < 10
    return capsys.readouterr().err


def test_domains_checks_inputs_before_embedding(big_slide, tmp_path, no_embedding, capsys):
    slide = ad.read_h5ad(big_slide)
    del slide.obsm["spatial"]
    slide.obs = slide.obs.drop(columns=["array_row", "array_col"])
    bare = tmp_path / "no_coords.h5ad"
    slide.write_h5ad(bare)
    out = str(tmp_path / "out.h5ad")
    err = _refused(["-q", "domains", str(bare), "--n-clusters", "5", "--out", out], capsys)
    assert "no spatial coordinates" in err and "Traceback" not in err

    err = _refused(["-q", "domains", str(big_slide), "--n-clusters", "20000", "--out", out], capsys)
    assert "n_clusters=20000" in err and "10,3" in err

    slide = ad.read_h5ad(big_slide)
    slide.obsm["spatial"][3, 0] = float("nan")
    nan_xy = tmp_path / "nan_coords.h5ad"
    slide.write_h5ad(nan_xy)
    err = _refused(["-q", "domains", str(nan_xy), "--n-clusters", "5", "--out", out], capsys)
    assert "1 cells have missing or infinite coordinates" in err


def test_cluster_checks_inputs_before_clustering(domains_out, tmp_path, capsys):
    out = str(tmp_path / "out.h5ad")
    err = _refused(["-q", "cluster", str(domains_out), "--n-clusters", "20000", "--out", out], capsys)
    assert "n_clusters=20000" in err
    err = _refused(["-q", "cluster", str(domains_out), "--use-rep", "X_missing", "--n-clusters", "5", "--out", out],
                   capsys)
    assert "obsm['X_missing'] not found" in err


def test_fused_neighbourhood_features_at_10k_spots(domains_out):
    """The features behind --features fused --spatial-weight (PCA of the slide's own expression beside the
    embedding, each next to its spatial neighbours' mean) and a GMM, on the 10k-spot embedding."""
    import numpy as np

    from spgpt_core.io import get_coordinates
    from spgpt_core.tl._cluster import cluster_embedding
    from spgpt_core.tl._features import domain_features, expression_pcs

    a = ad.read_h5ad(domains_out)
    t = time.time()
    expr = expression_pcs(a, n_top_genes=3000, n_pcs=30)
    F = domain_features(expression=expr, embedding=np.asarray(a.obsm["X_spgpt"]), coords=get_coordinates(a),
                        features="fused", embedding_weight=0.5, spatial_weight=0.5, spatial_k=6, n_pcs=30)
    labels, info = cluster_embedding(F, n_clusters=N_DOMAINS, method="gmm", coords=get_coordinates(a), smooth_k=6)
    assert F.shape == (a.n_obs, 30) and info["n_clusters_found"] == N_DOMAINS
    assert adjusted_rand_score(a.obs["domain"], labels) > 0.6
    assert time.time() - t < 120


def test_expression_domains_need_no_model(monkeypatch):
    """--features expression finds domains from the slide's own expression: no model is loaded."""
    import spgpt_core.tl._domains as d

    monkeypatch.setattr(d, "load_model", lambda *a, **k: pytest.fail("no model should be loaded"))
    slide = make_sample_slide(n_rows=30, n_cols=30, n_domains=N_DOMAINS, seed=2)
    tl.domains(slide, "default", n_clusters=N_DOMAINS, features="expression", spatial_weight=0.5, method="gmm")
    rec = slide.uns["spgpt_domain"]["params"]
    assert rec["features"] == "expression" and rec["spatial_weight"] == 0.5 and rec["method"] == "gmm"
    assert "X_spgpt" not in slide.obsm and slide.obsm["spgpt_domain_features"].shape[0] == slide.n_obs
    assert adjusted_rand_score(slide.obs["domain"], slide.obs["spgpt_domain"]) > 0.5


def test_expression_domains_refuse_negative_values():
    """The default path reads X itself (no model checks it): negative or NaN values are refused with the fix."""
    from spgpt_core.errors import InputError

    slide = make_sample_slide(n_rows=12, n_cols=12, n_domains=3, seed=5)
    slide.X = slide.X.astype("float32")
    slide.X.data[:3] = -1.0
    with pytest.raises(InputError, match="negative value.*raw counts"):
        tl.domains(slide, None, n_clusters=3)
    assert "spgpt_domain" not in slide.obs
