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
