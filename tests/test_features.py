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
