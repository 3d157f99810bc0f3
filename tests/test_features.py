"""Domain features: the in-place column scaling that keeps expression PCs to one copy of the slide."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spgpt_core.tl._features import scale_columns_in_place


def test_in_place_scaling_is_scipys_product_bit_for_bit():
    rng = np.random.default_rng(0)
    X = sp.random(700, 40, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    X[5] = 0  # an empty row
    X.eliminate_zeros()
    f = rng.uniform(0.1, 3, 40).astype(np.float32)
    want = X @ sp.diags(f).astype(np.float32)
    got = X.copy()
    scale_columns_in_place(got, f, rows_per_step=64)  # several steps, one of them ragged
    # same entries in the same order (what later sums depend on), same float32 values
    assert np.array_equal(got.indptr, want.indptr)
    assert np.array_equal(got.indices, want.indices)
    assert np.array_equal(got.data, want.data)
    assert not got.has_sorted_indices
    v = rng.normal(size=40).astype(np.float32)
    assert np.array_equal(got @ v, want @ v)


def test_covariance_pcs_are_the_arpack_pcs(monkeypatch):
    """The streamed solver (used from STREAMED_PCA_FROM cells) gives the arpack path's components, and
    tl.domains records which one ran."""
    from sklearn.metrics import adjusted_rand_score

    from spgpt_core import tl
    from spgpt_core.datasets import make_sample_slide
    from spgpt_core.tl import _features
    from spgpt_core.tl._features import expression_pcs

    slide = make_sample_slide(n_rows=40, n_cols=40, n_domains=5, seed=4)
    a = expression_pcs(slide, n_pcs=10, solver="arpack")
    info = {}
    b = expression_pcs(slide, n_pcs=10, solver="covariance", chunk_size=333, info=info)
    assert info == {"pca_solver": "covariance"} and b.shape == a.shape
    for j in range(5):  # the leading components (the later ones of near-equal variance may rotate)
        r = np.corrcoef(a[:, j], b[:, j])[0, 1]
        assert abs(r) > 0.999, (j, r)
        np.testing.assert_allclose(np.abs(b[:, j]), np.abs(a[:, j]), atol=1e-3 * np.abs(a[:, j]).max())
    monkeypatch.setattr(_features, "STREAMED_PCA_FROM", 1000)
    tl.domains(slide, "default", n_clusters=5, features="expression")
    assert slide.uns["spgpt_domain"]["params"]["expression_pca_solver"] == "covariance"
    assert adjusted_rand_score(slide.obs["domain"], slide.obs["spgpt_domain"]) > 0.5


def _planted(n, seed=1):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2))
    domain = (coords[:, 0] // 200).astype(int)
    centres = rng.standard_normal((5, 94))
    expr = (centres[domain, :30] + rng.standard_normal((n, 30))).astype(np.float32)
    emb = (centres[domain, 30:] + 2 * rng.standard_normal((n, 64))).astype(np.float32)
    return expr, emb, coords


def test_domain_features_are_the_banksy_formula():
    """The in-place build equals the plain formula: blocks centred at unit total variance, the embedding
    with its share, each row beside its neighbours' mean, PCA."""
    from sklearn.decomposition import PCA

    from spgpt_core.neighbors import knn_indices
    from spgpt_core.tl._features import domain_features

    expr, emb, xy = _planted(3000)

    def unit(F):
        F = F.astype(np.float64) - F.astype(np.float64).mean(axis=0)
        return F / np.sqrt((F ** 2).sum() / len(F))

    w, lam, k = 0.25, 0.8, 12
    fused = np.hstack([np.sqrt(1 - w) * unit(expr), np.sqrt(w) * unit(emb)])
    nbr = fused[knn_indices(xy, k)].mean(axis=1)
    want = PCA(n_components=10, random_state=0).fit_transform(np.hstack([np.sqrt(1 - lam) * fused,
                                                                         np.sqrt(lam) * nbr]))
    info = {}
    got = domain_features(expression=expr, embedding=emb, coords=xy, features="fused", embedding_weight=w,
                          spatial_weight=lam, spatial_k=k, n_pcs=10, info=info)
    assert info == {"features_dtype": "float64"} and got.dtype == np.float32
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-5)


def test_big_slides_get_float32_features_in_one_array(monkeypatch):
    """From FLOAT32_FROM spots the features are float32 (the same components, |r| > 0.9999) and the build
    holds little more than the one array it fills: at 1M spots the old copies peaked at 4.5 GB."""
    import tracemalloc

    from spgpt_core.tl import _features
    from spgpt_core.tl._features import domain_features

    expr, emb, xy = _planted(120_000)
    kw = dict(expression=expr, embedding=emb, coords=xy, features="fused", embedding_weight=0.25,
              spatial_weight=0.8, spatial_k=12, n_pcs=10)
    want = domain_features(**kw)
    monkeypatch.setattr(_features, "FLOAT32_FROM", 100_000)
    info = {}
    tracemalloc.start()
    got = domain_features(**kw, info=info)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info == {"features_dtype": "float32"}
    for j in range(5):
        assert abs(np.corrcoef(got[:, j], want[:, j])[0, 1]) > 0.9999
    one_array = 120_000 * 188 * 4  # the copies before came to about 6 of these
    assert peak < 2 * one_array, peak / one_array


def test_expression_pcs_are_scanpys_on_the_most_variable_genes_of_a_real_slide():
    """Library sizes over all the spot's genes, then the most variable genes (scanpy's normalize_total
    before highly_variable_genes): on a transcriptome-wide slide, dividing by the selected genes' total
    instead changes the components (and cost 0.02-0.1 ARI on the HER2ST dev sections)."""
    import anndata as ad
    import scanpy as sc
    from helpers.data import data_file

    from spgpt_core.pp.hvg import highly_variable_mask
    from spgpt_core.tl._features import expression_pcs

    a = ad.read_h5ad(data_file("her2st/HER2ST_A1.h5ad"))
    hv = highly_variable_mask(a, 500)
    got = expression_pcs(a, n_top_genes=500, n_pcs=5)
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    b = b[:, hv].copy()
    sc.pp.scale(b)  # unit variance, no clipping, as expression_pcs
    want = sc.pp.pca(b, n_comps=5, svd_solver="arpack", random_state=0, copy=True).obsm["X_pca"]
    for j in range(3):
        assert abs(np.corrcoef(got[:, j], want[:, j])[0, 1]) > 0.999, j
    # the selected genes' own totals are not the spots' library sizes on this slide
    assert np.median(np.asarray(a.X[:, hv].sum(axis=1)).ravel() / np.asarray(a.X.sum(axis=1)).ravel()) < 0.5
