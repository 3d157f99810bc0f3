"""The Embed & domains widget above scanpy's 8,192-cell switch, with the shipped model: the planted
domains of a generated 10,000-spot slide come back, the UMAP view included (same kNN graph)."""

from __future__ import annotations

import pytest
from _helpers import add_widget, wait_job
from sklearn.metrics import adjusted_rand_score

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def test_embed_domains_widget_at_10k_spots(viewer, qtbot, tmp_path):
    from napari_spgpt._layers import slide_layers
    from napari_spgpt._state import get_state
    from spgpt_core.datasets import make_sample_slide

    big = make_sample_slide(n_rows=130, n_cols=100, n_domains=5, seed=1)
    assert big.n_obs >= 10_000
    big.write_h5ad(tmp_path / "big.h5ad")
    get_state(viewer).spec = "default"
    viewer.open(str(tmp_path / "big.h5ad"), plugin="spgpt")
    w = add_widget(viewer, "Embed & domains")
    w.n_domains.value = 5
    w.run()
    wait_job(qtbot, w, timeout=600_000)
    assert w.controls.last_error is None, w.controls.last_error
    adata = slide_layers(viewer)[0].metadata["spgpt_slide"].adata
    assert adata.obs["spgpt_domain"].nunique() == 5
    assert adjusted_rand_score(adata.obs["domain"], adata.obs["spgpt_domain"]) > 0.6
    assert w.umap_canvas is not None and w.umap_canvas.n_points == adata.n_obs
    assert viewer.layers["big domains"].features["spgpt_domain"].nunique() == 5
