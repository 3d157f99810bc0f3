"""Binning, normalisation, deterministic tokenisation and batching."""

import numpy as np
import pytest
import scipy.sparse as sp

from spgpt_core.pp.tokenize import (GeneStats, SlideStats, gene_divisors, hash_uniform, length_buckets, pad_batch,
                                   quality_masks, tokenize_rows)


def _reference_bins(values, n_bins=51):
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    return np.digitize(values, edges)  # no ties -> the reference's random part is inactive


def _tokens_by_cell(tok):
    return [dict(zip(tok.genes[a:b].tolist(), tok.values[a:b].tolist())) for a, b in zip(tok.offsets[:-1], tok.offsets[1:])]


def test_binning_matches_numpy_quantile_digitize_without_ties():
    rng = np.random.default_rng(0)
    X = sp.random(40, 300, density=0.3, format="csr", random_state=1, dtype=np.float64)
    X.data = rng.gamma(1.0, 3.0, size=X.nnz) + 0.01  # continuous: no ties
    ids = np.arange(300)
    tok = tokenize_rows(X, ids, np.ones(300), first_cell=0, n_bins=51, max_genes=10_000, seed=0)
    for r, cell in enumerate(_tokens_by_cell(tok)):
        row = X.getrow(r)
        expected = dict(zip(row.indices.tolist(), _reference_bins(row.data).tolist()))
        assert cell == expected
    assert tok.values.min() >= 1 and tok.values.max() == 50


def test_ties_are_broken_reproducibly_and_within_the_tied_range():
    X = sp.csr_matrix(np.array([[1, 1, 1, 1, 2, 2, 3, 0, 1, 5]] * 3, dtype=np.float32))
    ids = np.arange(10) + 100
    a = tokenize_rows(X, ids, np.ones(10), first_cell=0, n_bins=51, max_genes=100, seed=7)
    b = tokenize_rows(X, ids, np.ones(10), first_cell=0, n_bins=51, max_genes=100, seed=7)
    c = tokenize_rows(X, ids, np.ones(10), first_cell=0, n_bins=51, max_genes=100, seed=8)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    row = X.getrow(0).data
    edges = np.quantile(row, np.linspace(0, 1, 50))
    lo = np.digitize(row, edges, right=True) + 1
    hi = np.digitize(row, edges)
    vals = np.array(list(_tokens_by_cell(a)[0].values()))
    genes = np.array(list(_tokens_by_cell(a)[0].keys())) - 100
    order = np.argsort(genes)  # tokens are in value order; put them back in column order
    # a tied value may take any bin among the edges it equals: right+1 .. left (left when untied)
    assert (vals[order] >= np.minimum(lo, hi)).all() and (vals[order] <= hi).all()
    # different cells with identical rows get different tie-breaks (keyed by cell index)
    cells = _tokens_by_cell(a)
    assert cells[0] != cells[1]


def test_tokens_do_not_depend_on_chunking():
    rng = np.random.default_rng(3)
    X = sp.random(50, 80, density=0.4, format="csr", random_state=2)
    X.data = rng.integers(1, 6, X.nnz).astype(np.float64)  # many ties
    ids = np.arange(80)
    full = tokenize_rows(X, ids, np.ones(80), first_cell=0, n_bins=51, max_genes=20, seed=1)
    parts = [tokenize_rows(X[s:s + 13], ids, np.ones(80), first_cell=s, n_bins=51, max_genes=20, seed=1)
             for s in range(0, 50, 13)]
    assert _tokens_by_cell(full) == [c for p in parts for c in _tokens_by_cell(p)]


def test_subsampling_keeps_max_genes_of_the_expressed_ones():
    X = sp.csr_matrix(np.arange(1, 101, dtype=np.float32)[None, :].repeat(2, 0))
    tok = tokenize_rows(X, np.arange(100), np.ones(100), first_cell=0, n_bins=51, max_genes=30, seed=0)
    assert list(tok.lengths) == [30, 30]
    cells = _tokens_by_cell(tok)
    assert set(cells[0]) != set(cells[1])  # per-cell random subsets
    # bins were computed on all 100 genes before subsampling: gene k has value k+1 -> bin from the full row
    full = _reference_bins(np.arange(1, 101, dtype=float))
    assert all(cells[0][g] == full[g] for g in cells[0])


def test_unmatched_genes_and_zeros_are_ignored():
    X = sp.csr_matrix(np.array([[0, 3, 5, 0, 2]], dtype=np.float32))
    ids = np.array([10, -1, 12, 13, 14])
    tok = tokenize_rows(X, ids, np.ones(5), first_cell=0, n_bins=51, max_genes=10, seed=0)
    assert sorted(tok.genes.tolist()) == [12, 14]


def test_two_level_normalisation_changes_ranks_by_gene_mean():
    X = sp.csr_matrix(np.array([[10.0, 1.0], [10.0, 1.0]]))
    ids = np.array([0, 1])
    stats = SlideStats.from_chunks([(0, 2, X)], 2, ids >= 0)
    assert stats.nonzero_mean == pytest.approx(5.5)
    gs = GeneStats(np.array([100.0, 0.1]))  # gene 0 is usually very high, gene 1 usually very low
    div, info = gene_divisors(stats, ids, gs)
    np.testing.assert_allclose(div, [5.5 * 100, 5.5 * 0.1])
    tok = tokenize_rows(X, ids, div, first_cell=0, n_bins=51, max_genes=10, seed=0)
    cell = _tokens_by_cell(tok)[0]
    assert cell[1] > cell[0]  # after gene normalisation the "low" gene ranks higher


def test_fallback_gene_mean_and_no_stats():
    X = sp.csr_matrix(np.array([[4.0, 0.0, 1.0], [2.0, 6.0, 0.0]]))
    ids = np.array([0, 1, -1])
    stats = SlideStats.from_chunks([(0, 2, X)], 3, ids >= 0)
    assert stats.nonzero_mean == pytest.approx(4.0)  # (4 + 2 + 6) / 3 over matched genes only
    gs = GeneStats(np.array([np.nan, 2.0]))
    div, info = gene_divisors(stats, ids, gs)
    assert div[0] == pytest.approx(4.0 * (3.0 / 4.0))  # fallback: gene 0's non-zero mean / slide mean
    assert div[1] == pytest.approx(4.0 * 2.0) and np.isnan(div[2])
    assert info["n_genes_slide_fallback"] == 1
    div2, info2 = gene_divisors(stats, ids, None)
    np.testing.assert_allclose(div2[:2], [4.0, 4.0])
    assert "none" in info2["gene_normalization"]


def test_gene_stats_round_trip_and_scgpt_spatial_csv(tmp_path):
    gs = GeneStats(np.array([np.nan, 2.5, np.nan, 0.5]))
    gs.save(tmp_path / "gene_stats.csv", ["a", "b", "c", "d"])
    back = GeneStats.load(tmp_path / "gene_stats.csv", 4)
    np.testing.assert_array_equal(np.isnan(back.means), np.isnan(gs.means))
    assert back.means[1] == 2.5 and back.n_known == 2
    (tmp_path / "all_dict_mean_std.csv").write_text(",mean\n3,1.5\n0,4.0\n")
    spatial = GeneStats.load(tmp_path / "all_dict_mean_std.csv", 4)
    assert spatial.means[3] == 1.5 and spatial.means[0] == 4.0
    from spgpt_core.errors import CheckpointError

    (tmp_path / "bad.csv").write_text(",mean\n99,1.5\n")
    with pytest.raises(CheckpointError, match="another vocabulary"):
        GeneStats.load(tmp_path / "bad.csv", 4)


def test_length_buckets_cover_all_cells_within_budget():
    lengths = np.random.default_rng(0).integers(1, 600, 1000)
    batches = length_buckets(lengths, max_cells=64, max_tokens=64 * 200)
    idx = np.concatenate(batches)
    assert sorted(idx.tolist()) == list(range(1000))
    for b in batches:
        assert len(b) <= 64 and lengths[b].max() * len(b) <= 64 * 200 or len(b) == 1


def test_pad_batch_layout():
    X = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
    tok = tokenize_rows(X, np.array([5, 6, 7]), np.ones(3), first_cell=0, n_bins=51, max_genes=10, seed=0)
    genes, values, pad = pad_batch(tok, np.array([0, 1]), cls_id=99, pad_id=98, pad_value=-2)
    assert genes.shape == (2, 3) and (genes[:, 0] == 99).all() and (values[:, 0] == -2).all()
    assert genes[1, 2] == 98 and pad[1].tolist() == [False, False, True] and not pad[0].any()


def test_hash_uniform_is_uniform_and_keyed():
    u = hash_uniform(0, np.repeat(np.arange(1000), 10), np.tile(np.arange(10), 1000), stream=0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, hash_uniform(1, np.repeat(np.arange(1000), 10), np.tile(np.arange(10), 1000), 0))


def test_quality_masks_per_modality_thresholds():
    rng = np.random.default_rng(0)
    dense = np.zeros((10, 100))
    for i in range(10):
        dense[i, rng.choice(100, 5 * (i + 1), replace=False)] = 1
    X = sp.csr_matrix(dense)
    ids = np.arange(100)
    ids[0] = -1
    stats = SlideStats.from_chunks([(0, 10, X)], 100, ids >= 0)
    cells, genes = quality_masks(stats, ids, min_genes_per_cell=10)
    assert cells.tolist() == (stats.cell_n_expressed >= 10).tolist()
    assert not genes[0] and genes[ids >= 0].tolist() == (stats.gene_nonzero_count[1:] >= 1).tolist()
