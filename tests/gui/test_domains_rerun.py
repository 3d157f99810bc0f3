"""Findings 7 and 8: re-clustering without re-embedding, clusterings kept side by side with stable
colours, no stale UMAP; integer cell-type labels, errors worded for the GUI with the whole text shown."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from _helpers import add_widget, wait_job

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def slide_of(viewer):
    from napari_spgpt._layers import slide_layers

    (layer,) = slide_layers(viewer)
    return layer.metadata["spgpt_slide"]


def test_recluster_reuses_the_embedding_and_keeps_clusterings(sample_viewer, qtbot, tmp_path):
    viewer = sample_viewer
    slide = slide_of(viewer)
    w = add_widget(viewer, "Embed & domains")
    w.features.value = "fused"  # the model's path: its embedding is what a re-clustering reuses
    w.n_domains.value = 5
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    adata = slide.adata
    emb = adata.obsm["X_spgpt"]
    first = adata.obs["spgpt_domain"].astype(str).to_numpy()
    colors1 = dict(w.legend.items)
    assert w.umap_canvas is not None and not w.umap_canvas.isHidden()
    w.keep_clustering()
    kept = "sample_slide domains k=5, fused, gmm-tied consensus x10, Potts 0.5 over 6"  # fused features, gmm-tied
    assert kept in viewer.layers and "spgpt_domain__k_5__fused__gmm_tied_consensus_x10__Potts_0_5_over_6" in adata.obs
    assert "spgpt_domain_features" in adata.obsm

    # only a clustering setting changed: the embedding stays; the features are built again from it
    w.n_domains.value = 6
    w.umap.value = False
    assert w.command.value.startswith("spgpt domains ") and "--n-clusters 6" in w.command.value
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    run = adata.uns["spgpt_napari"]["run_001"]
    assert run["params"]["reused_embedding"] and run["command"].startswith("spgpt domains "), run
    assert "embedding" not in w.controls.totals, w.controls.totals
    assert adata.obsm["X_spgpt"] is emb
    second = adata.obs["spgpt_domain"].astype(str).to_numpy()
    assert adata.obs["spgpt_domain"].nunique() == 6
    # labels follow the first run where the partitions overlap, so their colours do too
    for label, color in w.legend.items.items():
        if label in colors1 and (first[second == label] == label).mean() > 0.5:
            assert colors1[label] == color
    assert (first == second).mean() > 0.5
    # both clusterings are on screen and in the AnnData; the UMAP of the first run is gone
    assert kept in viewer.layers and "sample_slide domains" in viewer.layers
    assert viewer.layers[kept].features["spgpt_domain__k_5__fused__gmm_tied_consensus_x10__Potts_0_5_over_6"].astype(str).tolist() == \
        first.tolist()
    assert w.umap_canvas.isHidden()
    # the paper's path (the embedding alone, no neighbourhood) re-clusters it: `spgpt cluster`
    w.features.value, w.spatial_weight.value, w.method.value = "embedding", 0.0, "leiden"
    assert w.command.value.startswith("spgpt cluster ")
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    assert adata.obsm["X_spgpt"] is emb and "spgpt_domain_features" not in adata.obsm  # not these domains'
    assert adata.uns["spgpt_napari"]["run_002"]["command"].startswith("spgpt cluster ")
    # an embedding setting changed: tl.domains again
    w.seed.value = 1
    assert w.command.value.startswith("spgpt domains ")


def test_integer_labels_and_gui_worded_errors(sample_viewer, qtbot, tmp_path, notifications):
    viewer = sample_viewer
    slide = slide_of(viewer)
    ref = ad.read_h5ad(slide.reference)
    ref.obs["cluster_id"] = ref.obs["cell_type"].cat.codes.astype(np.int64)
    ref.var["symbol"] = ref.var_names.astype(str)
    ref.write_h5ad(tmp_path / "int_labels.h5ad")
    w = add_widget(viewer, "Deconvolve")
    w.reference.value = str(tmp_path / "int_labels.h5ad")
    assert "cluster_id" in w.celltype_key.choices
    assert "symbol" in w.reference_gene_col.choices
    w.celltype_key.value = "cluster_id"
    w.reference_gene_col.value = "symbol"
    assert "--reference-gene-col symbol" in w.command.value
    w.epochs.value = 10
    w.run()
    wait_job(qtbot, w, timeout=240_000)
    assert w.controls.last_error is None, w.controls.last_error
    n_types = ref.obs["cluster_id"].nunique()
    assert len(w.show_layer.choices) == 1 + n_types
    assert slide.adata.uns["spgpt_proportions"]["params"]["reference_gene_col"] == "symbol"

    # a reference sharing no genes: the message names the widget's control, whole text in the details box
    other = ref.copy()
    other.var_names = [f"X{i}" for i in range(other.n_vars)]
    other.var["symbol"] = other.var_names.astype(str)
    other.write_h5ad(tmp_path / "no_shared.h5ad")
    w.reference.value = str(tmp_path / "no_shared.h5ad")
    w.celltype_key.value = "cell_type"
    w.run()
    wait_job(qtbot, w, timeout=240_000)
    text = [t for level, t in notifications if level == "error"][-1]
    assert "--reference-gene-col" not in text and "'Reference gene names' (this widget)" in text
    assert not w.controls.details.native.isHidden() and w.controls.details.value == text
    assert "the slide is unchanged" in w.controls.status.value
