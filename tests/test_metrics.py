"""Metrics on small planted truths with known answers, plus checks on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from spgpt_core import metrics as M
from spgpt_core.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def _blobs(n_per=150, n_labels=4, dim=8, spread=12.0, seed=0):
    """Well separated Gaussian clusters: embedding and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, size=(n_labels, dim))
    labels = np.repeat(np.array([f"t{i}" for i in range(n_labels)]), n_per)
    emb = centres[np.repeat(np.arange(n_labels), n_per)] + rng.normal(size=(n_labels * n_per, dim))
    return emb, labels


def _grid(side=30):
    yy, xx = np.mgrid[0:side, 0:side]
    return np.column_stack([xx.ravel(), yy.ravel()]).astype(float)


# ------------------------------------------------------------------------------ ARI / NMI


def test_ari_nmi_perfect_relabelled_and_shuffled():
    rng = np.random.default_rng(0)
    truth = np.repeat(["a", "b", "c", "d"], 250)
    renamed = np.repeat([3, 0, 2, 1], 250)  # same partition, different names
    assert M.ari(truth, renamed) == pytest.approx(1.0)
    assert M.nmi(truth, renamed) == pytest.approx(1.0)
    shuffled = rng.permutation(truth)
    assert abs(M.ari(truth, shuffled)) < 0.02
    assert M.nmi(truth, shuffled) < 0.02


def test_missing_labels_are_dropped():
    truth = pd.Series(["a", "a", "b", "b", "NA", None, np.nan, "c", "c"], dtype=object)
    pred = np.array([0, 0, 1, 1, 1, 0, 2, 2, 2])
    assert M.valid_label_mask(truth).tolist() == [True] * 4 + [False] * 3 + [True] * 2
    assert M.ari(truth, pred) == pytest.approx(1.0)
    categorical = pd.Categorical(["x", "x", None, "y", "y"])
    assert M.nmi(categorical, [1, 1, 0, 2, 2]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (["a", "b", "a"], ["x", "y"], "different lengths"),
        (["a", "a", "a"], ["x", "y", "z"], "at least 2"),
        (["NA", "NA", "a"], ["x", "y", "z"], "at least 2"),
        ([], [], "empty"),
    ],
)
def test_ari_bad_input(truth, pred, message):
    with pytest.raises(InputError, match=message):
        M.ari(truth, pred)


# ------------------------------------------------------------------------ ASW / connectivity


def test_asw_label_separated_vs_random():
    emb, labels = _blobs()
    assert M.asw_label(emb, labels) > 0.85
    rng = np.random.default_rng(1)
    assert M.asw_label(emb, rng.permutation(labels)) == pytest.approx(0.5, abs=0.06)
    with pytest.raises(InputError, match="at least 2"):
        M.asw_label(emb, np.full(len(labels), "t0"))
    with pytest.raises(InputError, match="lengths"):
        M.asw_label(emb, labels[:-1])


def test_asw_batch_mixed_vs_separated():
    emb, labels = _blobs()
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 2, size=len(labels))
    mixed = M.asw_batch(emb, batch, labels)
    assert mixed > 0.9
    separated = emb + 40.0 * batch[:, None]  # every cell type split by batch
    assert M.asw_batch(separated, batch, labels) < 0.2
    with pytest.raises(InputError, match="at least 2 batches"):
        M.asw_batch(emb, np.zeros(len(labels)), labels)


def test_asw_batch_skips_labels_seen_in_one_batch():
    emb, labels = _blobs(n_labels=3)
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 2, size=len(labels))
    batch[labels == "t2"] = 0  # t2 only in batch 0: scib skips it rather than scoring it 1
    emb_sep = emb.copy()
    emb_sep[labels == "t0"] += 40.0 * batch[labels == "t0", None]
    # t0 separated (~0), t1 mixed (~1), t2 skipped -> about 0.5
    assert M.asw_batch(emb_sep, batch, labels) == pytest.approx(0.5, abs=0.1)


def test_graph_connectivity():
    emb, labels = _blobs()
    assert M.graph_connectivity(emb, labels) == pytest.approx(1.0)
    # One label split into two far-apart halves: its largest component holds half its cells.
    split = emb.copy()
    idx = np.flatnonzero(labels == "t0")[:75]
    split[idx] += 200.0
    assert M.graph_connectivity(split, labels) == pytest.approx((0.5 + 3) / 4, abs=0.01)
    # A precomputed graph works too (two disconnected cliques of label "a").
    block = sp.block_diag([np.ones((5, 5)), np.ones((5, 5))]).tocsr()
    assert M.graph_connectivity(block, ["a"] * 5 + ["b"] * 5) == 1.0
    assert M.graph_connectivity(block, ["a", "b"] * 5) == 0.6  # each label split 3 + 2


# ----------------------------------------------------------------- clustering and aggregates


@pytest.mark.parametrize("method", ["leiden", "louvain"])
def test_cluster_for_metrics_recovers_blobs(method):
    emb, labels = _blobs()
    clusters = M.cluster_for_metrics(emb, labels, method=method)
    assert len(clusters) == len(labels)
    assert M.ari(labels, clusters) == pytest.approx(1.0)
    # Deterministic for a given seed.
    assert np.array_equal(clusters, M.cluster_for_metrics(emb, labels, method=method))


def test_cluster_for_metrics_bad_method():
    emb, labels = _blobs(n_per=20)
    with pytest.raises(InputError, match="leiden"):
        M.cluster_for_metrics(emb, labels, method="kmeans")


def test_integration_scores_good_vs_batchy_embedding():
    emb, labels = _blobs()
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 2, size=len(labels))
    good = M.integration_scores(emb, labels, batch)
    assert set(good) == {"ari", "nmi", "asw_label", "avg_bio", "asw_batch", "graph_connectivity", "avg_batch"}
    assert good["ari"] == pytest.approx(1.0) and good["nmi"] == pytest.approx(1.0)
    assert good["avg_bio"] == pytest.approx((good["ari"] + good["nmi"] + good["asw_label"]) / 3)
    assert good["avg_batch"] == pytest.approx((good["asw_batch"] + good["graph_connectivity"]) / 2)
    assert good["avg_batch"] > 0.9
    batchy = emb + 60.0 * batch[:, None]
    bad = M.integration_scores(batchy, labels, batch)
    assert bad["avg_batch"] < 0.5 and bad["avg_bio"] < good["avg_bio"]
    assert M.avg_bio(emb, labels) == pytest.approx(good["avg_bio"])
    assert M.avg_batch(batchy, batch, labels) == pytest.approx(bad["avg_batch"])
    assert "asw_batch" not in M.integration_scores(emb, labels)


# ------------------------------------------------------------ deconvolution and imputation


def test_macro_f1():
    truth = np.array(["A"] * 6 + ["B"] * 3 + ["C"])
    assert M.macro_f1(truth, truth) == 1.0
    # A: P=1, R=4/6 -> 0.8; B: P=3/5, R=1 -> 0.75; C: P=R=1 -> 1.0
    pred = np.array(["A"] * 4 + ["B"] * 2 + ["B"] * 3 + ["C"])
    assert M.macro_f1(truth, pred) == pytest.approx((0.8 + 0.75 + 1.0) / 3)
    # A type predicted but never true counts as F1 = 0.
    assert M.macro_f1(["A", "A", "B", "B"], ["A", "A", "B", "D"]) == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(InputError, match="lengths"):
        M.macro_f1(["A"], ["A", "B"])


def test_pearson_per_gene():
    rng = np.random.default_rng(5)
    genes = ["G1", "G2", "G3", "G4"]
    measured = pd.DataFrame(rng.normal(size=(200, 4)), columns=genes)
    imputed = pd.DataFrame(
        {
            "G4": rng.normal(size=200),                      # unrelated
            "G3": 5.0,                                       # constant -> NaN
            "G1": 2.0 * measured["G1"] + 3.0,                # perfect
            "G2": -measured["G2"],                           # perfectly anti-correlated
        }
    )
    r = M.pearson_per_gene(measured, imputed)  # aligned by gene name, measured's order
    assert list(r.index) == genes
    assert r["G1"] == pytest.approx(1.0) and r["G2"] == pytest.approx(-1.0)
    assert np.isnan(r["G3"]) and abs(r["G4"]) < 0.2
    assert M.pearson_per_gene(measured.to_numpy(), measured.to_numpy()).tolist() == [1.0] * 4
    with pytest.raises(InputError, match="lacks columns"):
        M.pearson_per_gene(measured, imputed.drop(columns="G2"))
    with pytest.raises(InputError, match="shape"):
        M.pearson_per_gene(np.ones((5, 2)), np.ones((4, 2)))
    with pytest.raises(InputError, match="NaN"):
        M.pearson_per_gene(np.array([[1.0, np.nan], [2.0, 3.0]]), np.ones((2, 2)))


def test_pearson_per_gene_anndata():
    import anndata

    rng = np.random.default_rng(6)
    X = rng.poisson(3.0, size=(50, 3)).astype(np.float32)
    a = anndata.AnnData(sp.csr_matrix(X))
    a.var_names = ["A", "B", "C"]
    b = a[::-1, ::-1].copy()  # reversed spots and genes: aligned back by name
    assert np.allclose(M.pearson_per_gene(a, b).to_numpy(), 1.0)


def test_jensen_shannon():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    q = np.array([[2.0, 3.0, 5.0], [0.0, 0.5, 0.5], [0.0, 0.0, 4.0]])  # rows get normalised
    js = M.jensen_shannon(p, q)
    assert js.shape == (3,)
    assert js[0] == pytest.approx(0.0, abs=1e-12)
    assert js[1] == pytest.approx(1.0) and js[2] == pytest.approx(1.0)
    # An intermediate value by hand: p=[1,0], q=[.5,.5], mixture m=[.75,.25].
    half = M.jensen_shannon([[1.0, 0.0]], [[0.5, 0.5]])[0]
    expected = 0.5 * (np.log2(1 / 0.75)) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert half == pytest.approx(expected)
    # DataFrames are aligned by cell-type column.
    P = pd.DataFrame(p[:1], columns=["x", "y", "z"])
    Q = pd.DataFrame(q[:1, ::-1], columns=["z", "y", "x"])
    assert M.jensen_shannon(P, Q)[0] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="non-negative"):
        M.jensen_shannon([[-1.0, 2.0]], [[0.5, 0.5]])
    with pytest.raises(InputError, match="summing to 0"):
        M.jensen_shannon([[0.0, 0.0]], [[0.5, 0.5]])


# -------------------------------------------------------------------------------- Moran's I


def test_morans_i_gradient_noise_checkerboard():
    xy = _grid()
    n = len(xy)
    assert M.morans_i(xy[:, 0] + 0.5 * xy[:, 1], xy, k=4) > 0.9
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(n, 200))
    values = M.morans_i(noise, xy, k=4)
    assert isinstance(values, pd.Series) and len(values) == 200
    assert values.mean() == pytest.approx(-1.0 / (n - 1), abs=0.01)
    checker = (xy[:, 0] + xy[:, 1]) % 2
    assert M.morans_i(checker, xy, k=4) < -0.9  # rook neighbours all of the other colour


def test_morans_i_table_and_constant_column():
    xy = _grid(12)
    table = pd.DataFrame({"smooth": xy[:, 0], "flat": 1.0})
    out = M.morans_i(table, xy)
    assert list(out.index) == ["smooth", "flat"]
    assert out["smooth"] > 0.8 and np.isnan(out["flat"])
    with pytest.raises(InputError, match="coords"):
        M.morans_i(xy[:, 0], xy[:, 0])
    with pytest.raises(InputError, match="lengths"):
        M.morans_i(xy[:-1, 0], xy)
    with pytest.raises(InputError, match="k="):
        M.morans_i(xy[:, 0], xy, k=len(xy))


# ------------------------------------------------------------------------------ real data


@needs_data
def test_dlpfc_layer_ari_nmi_and_morans_i():
    """PCA + k-means (K=7) vs the DLPFC layers: a weak baseline, ARI ~0.2 (literature: 0.2-0.3)."""
    import anndata
    import scanpy as sc
    from sklearn.cluster import KMeans

    adata = anndata.read_h5ad(DATA / "dlpfc" / "DLPFC_151673.h5ad")
    layer = adata.obs["layer"]
    assert (layer == "NA").sum() > 0, "DLPFC marks unannotated spots as 'NA'"
    mbp = adata[:, adata.var["gene_symbol"] == "MBP"].X.toarray().ravel()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=0)
    with threadpool_limits(1):  # KMeans' OpenMP threads stall on busy (CI) machines
        pred = KMeans(n_clusters=7, n_init=10, random_state=0).fit_predict(adata.obsm["X_pca"])

    keep = (layer != "NA").to_numpy()
    ari, nmi = M.ari(layer, pred), M.nmi(layer, pred)
    assert ari == pytest.approx(adjusted_rand_score(layer[keep], pred[keep]))
    assert nmi == pytest.approx(normalized_mutual_info_score(layer[keep], pred[keep]))
    assert 0.1 < ari < 0.6 and 0.2 < nmi < 0.7
    # MBP (myelin, white matter) is strongly spatially patterned; permuted it is not.
    xy = adata.obsm["spatial"]
    assert M.morans_i(mbp, xy) > 0.5
    assert abs(M.morans_i(np.random.default_rng(0).permutation(mbp), xy)) < 0.05


@needs_data
def test_starmap_two_slices_integration_scores():
    """Two STARmap mPFC slices, PCA on shared genes: all scores computable and within [0, 1]."""
    import anndata
    import scanpy as sc

    files = sorted((DATA / "starmap_mpfc").glob("*.h5ad"))
    assert len(files) == 2
    adata = anndata.concat([anndata.read_h5ad(f) for f in files], label="slice", index_unique="-")
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    scores = M.integration_scores(adata.obsm["X_pca"], adata.obs["cell_type"], adata.obs["slice"])
    for name, value in scores.items():
        assert 0.0 <= value <= 1.0, name
    assert scores["nmi"] > 0.3  # cell types are well resolved by expression
