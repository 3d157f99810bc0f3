"""The generated sample reference and slide: format conventions, planted truth, determinism."""

from __future__ import annotations

import json
import time
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from spgpt_core.datasets import make_sample_reference, make_sample_slide
from spgpt_core.errors import InputError


@pytest.fixture(scope="module")
def reference():
    return make_sample_reference()


@pytest.fixture(scope="module")
def slide():
    return make_sample_slide()


@pytest.fixture(scope="module")
def vocab():
    text = resources.files("spgpt_core").joinpath("data/scgpt_human_census_vocab.json").read_text()
    return json.loads(text)


def test_reference_format(reference, vocab):
    assert reference.shape == (6 * 150, 400)
    assert sp.issparse(reference.X) and reference.X.format == "csr"
    assert reference.X.dtype in (np.float32, np.int32)
    assert np.array_equal(reference.X.data, np.round(reference.X.data)) and reference.X.data.min() >= 0
    assert isinstance(reference.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert reference.obs["cell_type"].value_counts().tolist() == [150] * 6
    assert reference.var_names.is_unique and all(g in vocab for g in reference.var_names)
    library = np.asarray(reference.X.sum(axis=1)).ravel()
    assert library.std() / library.mean() > 0.2, "library sizes should vary per cell"
    profiles = reference.varm["true_profiles"]
    assert list(profiles.columns) == list(reference.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(profiles.sum(axis=0), 1.0)


def test_reference_markers_are_up_in_their_type(reference):
    """Each type's planted marker block is higher in that type than in every other type."""
    X = np.log1p(reference.X.toarray() / reference.X.sum(axis=1).A * 1e4)
    labels = reference.obs["cell_type"].to_numpy()
    markers = reference.uns["sample_truth"]["markers"]
    assert markers["Epithelial"][:2].tolist() == ["EPCAM", "KRT8"]
    for cell_type, genes in markers.items():
        cols = reference.var_names.get_indexer(list(genes))
        assert 20 <= cols.size <= 40
        own = X[labels == cell_type][:, cols].mean()
        others = [X[labels == t][:, cols].mean() for t in np.unique(labels) if t != cell_type]
        assert own > max(others) + 1.0, cell_type


def test_slide_format_and_truth(slide, reference, vocab):
    assert 1300 <= slide.n_obs <= 2000
    assert slide.X.format == "csr" and np.array_equal(slide.X.data, np.round(slide.X.data))
    assert list(slide.var_names) == list(reference.var_names) and all(g in vocab for g in slide.var_names)
    for col in ("array_row", "array_col", "in_tissue", "domain", "true_dominant_type"):
        assert col in slide.obs
    assert (slide.obs["in_tissue"] == 1).all()
    assert list(slide.obs["domain"].cat.categories) == ["layer_1", "layer_2", "layer_3", "layer_4", "nodule"]
    assert slide.obs["domain"].value_counts().min() >= 50

    props = slide.obsm["true_proportions"]
    assert isinstance(props, pd.DataFrame)
    assert list(props.columns) == list(reference.obs["cell_type"].cat.categories)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert set(slide.obs["true_dominant_type"].unique()) <= set(reference.obs["cell_type"].cat.categories)
    # The recorded dominant type is the most frequent type of the spot.
    dominant_share = props.to_numpy()[np.arange(slide.n_obs), props.columns.get_indexer(slide.obs["true_dominant_type"])]
    np.testing.assert_allclose(dominant_share, props.max(axis=1))
    # Each domain's most common dominant type is the one the generator planted.
    truth = slide.uns["sample_truth"]
    for domain, planted in truth["domain_dominant_type"].items():
        spots = slide.obs["domain"] == domain
        assert slide.obs.loc[spots, "true_dominant_type"].value_counts().idxmax() == planted
    counts_per_spot = slide.obs["true_n_cells"]
    assert counts_per_spot.between(5, 15).all()
    assert truth["seed"] == 0 and truth["n_domains"] == 5


def test_slide_hexagonal_visium_lattice(slide):
    """100 um pitch, odd rows offset by half a pitch, six neighbours in the interior."""
    scale = slide.uns["spatial"]["sample_slide"]["scalefactors"]
    pitch_px = 100.0 / scale["microns_per_pixel"]
    assert scale["spot_diameter_um"] == 55.0
    assert scale["spot_diameter_fullres"] == pytest.approx(55.0 / scale["microns_per_pixel"])
    xy = slide.obsm["spatial"]
    dist, _ = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy)
    np.testing.assert_allclose(dist[:, 1], pitch_px, rtol=1e-6)
    assert (np.isclose(dist[:, 1:], pitch_px).sum(axis=1) == 6).mean() > 0.8
    rows = slide.obs["array_row"].to_numpy()
    cols = slide.obs["array_col"].to_numpy()
    assert np.all(cols % 2 == rows % 2), "odd rows sit on odd array columns (half-pitch offset)"
    np.testing.assert_allclose(np.diff(np.sort(np.unique(xy[:, 1]))), pitch_px * np.sqrt(3) / 2)


def test_slide_image_matches_spots(slide):
    lib = slide.uns["spatial"]["sample_slide"]
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert 1000 <= max(img.shape[:2]) <= 2000
    px = np.round(slide.obsm["spatial"] * lib["scalefactors"]["tissue_hires_scalef"]).astype(int)
    assert px[:, 0].max() < img.shape[1] and px[:, 1].max() < img.shape[0]
    at_spots = img[px[:, 1], px[:, 0]].astype(float)
    # Stained tissue under every spot (eosin and hematoxylin both absorb green; glass is grey)...
    assert (at_spots[:, 0] - at_spots[:, 1] > 20).all()
    # ...white glass in the corners.
    assert img[:20, :20].min() > 235 and img[-20:, -20:].min() > 235
    # Domains are visible: nuclei density differs, the nodule is the darkest region.
    darkness = 255 - img.astype(float).mean(axis=2)
    r = 3
    window = np.stack([darkness[y - r:y + r + 1, x - r:x + r + 1].mean() for x, y in px])
    per_domain = pd.Series(window).groupby(slide.obs["domain"].to_numpy()).mean()
    assert per_domain.idxmax() == "nodule"
    assert per_domain.max() - per_domain.min() > 30


def test_planted_domains_recoverable_by_pca_kmeans(slide):
    """Measured ARI: 0.93 for seed 0 (0.59-0.89 for seeds 1-4)."""
    adata = slide.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    with threadpool_limits(1):  # KMeans' OpenMP threads stall on busy (CI) machines
        pred = KMeans(n_clusters=5, n_init=10, random_state=0).fit_predict(adata.obsm["X_pca"])
    assert adjusted_rand_score(adata.obs["domain"], pred) > 0.8


def test_slide_deterministic_and_fast():
    start = time.perf_counter()
    a = make_sample_slide(seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"generation took {elapsed:.1f} s"
    b = make_sample_slide(seed=3)
    c = make_sample_slide(seed=4)
    assert (a.X != b.X).nnz == 0
    assert np.array_equal(a.uns["spatial"]["sample_slide"]["images"]["hires"],
                          b.uns["spatial"]["sample_slide"]["images"]["hires"])
    assert a.obs["domain"].equals(b.obs["domain"])
    assert a.n_obs != c.n_obs or (a.X != c.X).nnz > 0


def test_slide_from_reference_without_planted_profiles(reference):
    """Any labelled reference works: per-type mean profiles stand in for the planted ones."""
    ref = reference[:, :].copy()
    del ref.varm["true_profiles"]
    slide = make_sample_slide(n_rows=16, n_cols=20, n_domains=3, seed=1, reference=ref)
    assert list(slide.obsm["true_proportions"].columns) == list(ref.obs["cell_type"].cat.categories)
    assert slide.obs["domain"].nunique() == 3
    unlabeled = ref.copy()
    del unlabeled.obs["cell_type"]
    with pytest.raises(InputError, match="cell_type"):
        make_sample_slide(reference=unlabeled)


def test_h5ad_roundtrip(slide, reference, tmp_path):
    import anndata

    slide.write_h5ad(tmp_path / "slide.h5ad")
    reference.write_h5ad(tmp_path / "ref.h5ad")
    back = anndata.read_h5ad(tmp_path / "slide.h5ad")
    pd.testing.assert_frame_equal(back.obsm["true_proportions"], slide.obsm["true_proportions"])
    assert back.uns["spatial"]["sample_slide"]["images"]["hires"].shape == \
        slide.uns["spatial"]["sample_slide"]["images"]["hires"].shape
    assert anndata.read_h5ad(tmp_path / "ref.h5ad").varm["true_profiles"].shape == (400, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_domains": 1}, "n_domains"),
        ({"n_rows": 2}, "rows"),
        ({"n_rows": 5, "n_cols": 5, "n_domains": 5}, "too small"),
    ],
)
def test_slide_bad_parameters(kwargs, message):
    with pytest.raises(InputError, match=message):
        make_sample_slide(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_types": 1}, "n_types"), ({"n_genes": 20}, "n_genes"), ({"n_cells_per_type": 0}, "n_cells_per_type")],
)
def test_reference_bad_parameters(kwargs, message):
    with pytest.raises(InputError, match=message):
        make_sample_reference(**kwargs)
