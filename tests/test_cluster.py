"""Clustering with a planted truth: well-separated blobs and a spatial layout with label noise."""

import numpy as np
import pytest

from spgpt_core.tl._cluster import cluster_embedding, gmm_labels
from spgpt_core.tl._smoothing import potts_labels, smooth_labels, spatial_smoothing
from spgpt_core.errors import InputError
from spgpt_core.metrics import ari


def _blobs(n_per=60, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, 16))
    X = np.concatenate([c + rng.normal(0, 0.5, (n_per, 16)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(k), n_per)


@pytest.mark.parametrize("method", ["leiden", "louvain", "kmeans"])
def test_every_method_finds_k_planted_clusters(method):
    X, truth = _blobs()
    labels, info = cluster_embedding(X, n_clusters=4, method=method, seed=0)
    assert info["n_clusters_found"] == 4 and info["method"] == method
    assert ari(truth, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["leiden", "louvain"])
def test_graph_methods_accept_a_resolution(method):
    X, _ = _blobs()
    few, info_few = cluster_embedding(X, resolution=0.05, method=method)
    many, info_many = cluster_embedding(X, resolution=3.0, method=method)
    assert info_few["resolution"] == 0.05 and len(np.unique(few)) <= len(np.unique(many))


def test_smoothing_repairs_isolated_label_noise():
    side = 20
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(float)
    truth = (xy[:, 0] >= side / 2).astype(int)
    noisy = truth.copy()
    flip = np.random.default_rng(1).choice(len(truth), 20, replace=False)
    noisy[flip] = 1 - noisy[flip]
    fixed = smooth_labels(noisy, xy, k=6)
    assert (fixed != truth).sum() < (noisy != truth).sum() / 2


def _bands(side=40, noise=1.0, seed=0):
    """4 vertical bands on a grid; each spot's 8 features its band's centre plus noise as large as the
    centres' spread, so a clustering of the features alone mislabels about a fifth of the spots."""
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2).astype(float)
    truth = np.minimum((xy[:, 0] // (side // 4)).astype(int), 3)
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1.0, (4, 8))[truth] + rng.normal(0, noise, (len(truth), 8))
    return X, xy, truth


def test_potts_prior_recovers_planted_domains_from_a_noisy_clustering():
    X, xy, truth = _bands()
    start = gmm_labels(X, 4, seed=0, covariance="tied")
    labels, info = potts_labels(X, start, xy, beta=1.0, k=6)
    assert ari(truth, start) < 0.75
    assert ari(truth, labels) > 0.95
    assert info["smoothing"] == "potts" and info["spatial_prior"] == 1.0 and 1 < info["potts_iterations"] <= 20
    again, _ = potts_labels(X, start, xy, beta=1.0, k=6)
    assert np.array_equal(labels, again)  # no randomness
    weaker, _ = potts_labels(X, start, xy, beta=0.1, k=6)  # the prior's strength matters
    assert ari(truth, weaker) < ari(truth, labels)


def test_potts_keeps_label_names_and_the_vote_stays_available():
    X, xy, truth = _bands()
    start = np.array(["a", "b", "c", "d"])[gmm_labels(X, 4, seed=0, covariance="tied")]
    labels, _ = potts_labels(X, start, xy, beta=1.0)
    assert set(labels) <= set("abcd")
    voted, info = spatial_smoothing(start, xy, X, smooth_k=6, spatial_prior=0.0)
    assert np.array_equal(voted, smooth_labels(start, xy, 6)) and info["smoothing"] == "majority vote"
    with pytest.raises(InputError, match="spatial-prior"):
        cluster_embedding(X, n_clusters=4, method="kmeans", coords=xy, smooth_k=6, spatial_prior=-1)


def test_potts_prior_that_would_merge_a_domain_falls_back_to_the_vote():
    X, xy, truth = _bands()
    start = truth.copy()
    start[[5, 300, 900]] = 7  # a "domain" of 3 scattered spots, not Gaussian in the features: the refit absorbs it
    potts, _ = potts_labels(X, start, xy, beta=0.5)
    assert 7 not in potts
    labels, info = spatial_smoothing(start, xy, X, smooth_k=6, spatial_prior=0.5)
    assert np.array_equal(labels, smooth_labels(start, xy, 6))
    assert info["smoothing"] == "majority vote" and "merged 5 domains into 4" in info["potts_fallback"]


def test_unknown_method_is_an_input_error():
    X, _ = _blobs()
    with pytest.raises(InputError, match="louvain"):
        cluster_embedding(X, n_clusters=4, method="spectral")


def test_record_keeps_the_k_asked_beside_the_k_found():
    import anndata as ad

    from spgpt_core import tl

    X, _ = _blobs(n_per=30, k=3)
    a = ad.AnnData(np.zeros((len(X), 1), dtype=np.float32))
    a.obsm["X_spgpt"] = X
    tl.cluster(a, n_clusters=5, method="leiden")  # 3 tight blobs: Leiden may not reach 5
    params = a.uns["spgpt_domain"]["params"]
    assert params["n_clusters"] == 5
    assert params["n_clusters_found"] == a.obs["spgpt_domain"].nunique()


def test_stable_domains_keep_labels_and_colours_across_runs():
    """A re-clustering keeps the earlier labels (and so colours) where the partitions overlap."""
    from spgpt_core.pl import align_labels, category_colors, celltype_colors, stable_domains

    previous = np.array(["0"] * 5 + ["1"] * 5 + ["2"] * 5, dtype=object)
    # the same partition under other names, plus one spot split off into a new cluster
    new = np.array(["2"] * 5 + ["0"] * 5 + ["1"] * 4 + ["3"], dtype=object)
    assert align_labels(new, previous) == {"2": "0", "0": "1", "1": "2", "3": "3"}
    cats, colors = stable_domains(new, previous)
    assert list(cats[:15]) == list(previous[:14]) + ["3"]
    palette = category_colors(10)
    assert colors == palette[:4]
    # a domain that disappears keeps the others' colours (label 1 gone: 0 and 2 keep theirs)
    merged = np.array(["5"] * 10 + ["7"] * 5, dtype=object)
    cats, colors = stable_domains(merged, previous)
    assert set(cats.categories) == {"0", "2"} and colors == [palette[0], palette[2]]
    # missing values stay missing; no previous run: labels as they are
    cats, _ = stable_domains(np.array(["0", None, "1"], dtype=object))
    assert cats.isna().sum() == 1 and list(cats.categories) == ["0", "1"]
    # cell types never share the domains' colours
    assert not set(celltype_colors(8)) & set(category_colors(10))
