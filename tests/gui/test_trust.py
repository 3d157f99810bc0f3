"""What is on screen is what is in the slide's AnnData (and so in an export), nothing is lost silently.

Issue 24's findings, each as the biologist met it on the sample slide: re-runs that left stale layers,
a Cancel that changed the slide, a model loaded during a job, the spots layer deleted with results on
it. The QC view's timing and the docked layout have their own files (test_qc_view.py, test_layout.py).
"""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _helpers import add_widget, wait_job

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def slide_of(viewer):
    from napari_spgpt._layers import slide_layers

    (layer,) = slide_layers(viewer)
    return layer, layer.metadata["spgpt_slide"]


def result_layer_names(viewer, slide) -> set[str]:
    from napari_spgpt._layers import KIND_KEY, result_layers

    return {la.name for la in result_layers(viewer, slide) if la.metadata.get(KIND_KEY) != "image"}


def assert_export_matches_layers(viewer, slide, path) -> int:
    """Every result layer shows exactly what the exported file holds, and every result in the file has
    its layer. Returns how many layers were compared."""
    from napari_spgpt._layers import KIND_KEY, result_layers, shown_per_cell, source_exists, source_values

    exported = ad.read_h5ad(path)
    sources = []
    for layer in result_layers(viewer, slide):
        kind = layer.metadata.get(KIND_KEY)
        if kind == "image":
            continue
        src = layer.metadata.get("source")
        assert src is not None, f"{layer.name} shows something the AnnData does not name"
        assert source_exists(exported, src), f"{layer.name} shows {src}, which the export does not hold"
        sources.append(list(src))
        if kind.startswith("qc_"):
            continue  # the QC panels' measured half comes from the counts, compared in test_qc_view.py
        shown = pd.Series(shown_per_cell(layer, slide))
        expected = source_values(exported, src)
        if np.issubdtype(np.asarray(expected).dtype, np.number):
            np.testing.assert_allclose(shown.to_numpy(dtype=float), expected, rtol=1e-6, err_msg=layer.name)
        else:
            assert shown.astype(str).tolist() == [str(v) for v in expected], layer.name
    for key in ("spgpt_domain", "spgpt_dominant_type"):
        if key in exported.obs:
            assert ["obs", key] in sources, f"obs['{key}'] is exported but no layer shows it"
    for key in ("spgpt_proportions", "spgpt_imputed"):
        for col in exported.obsm[key].columns if key in exported.obsm else []:
            assert ["obsm", key, str(col)] in sources, f"obsm['{key}']['{col}'] is exported but not shown"
    return len(sources)


def export_h5ad(viewer, qtbot, tmp_path, name: str):
    w = add_widget(viewer, "Export")
    w.folder.value = str(tmp_path)
    w.basename.value = name
    w.csv.value = w.zarr.value = False
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    return tmp_path / f"{name}.h5ad"


def test_reruns_add_or_replace_and_export_equals_layers(sample_viewer, qtbot, tmp_path):
    """Finding 1: Impute accumulates genes (and can clear them), a Deconvolve re-run against a reference
    without B cells removes that layer, and after every step the export holds what the layers show."""
    viewer = sample_viewer
    _, slide = slide_of(viewer)
    held = [str(g) for g in slide.adata.uns["spgpt_sample"]["held_out_genes"]]
    imp = add_widget(viewer, "Impute")
    imp.epochs.value = 10
    for genes in (held[:2], held[2:3]):
        imp.picker.value = genes
        imp.run()
        wait_job(qtbot, imp, timeout=240_000)
        assert imp.controls.last_error is None, imp.controls.last_error
    assert list(slide.adata.obsm["spgpt_imputed"].columns) == held[:3]
    assert set(imp.show_layer.choices) == set(held[:3]) and imp.show_layer.value == held[2]
    assert {f"sample_slide imputed: {g}" for g in held[:3]} <= result_layer_names(viewer, slide)
    assert list(slide.adata.uns["spgpt_imputed"]["genes"]) == held[:3]

    dec = add_widget(viewer, "Deconvolve")
    dec.epochs.value = 10
    dec.run()
    wait_job(qtbot, dec, timeout=240_000)
    assert "sample_slide proportion: B cell" in viewer.layers
    ref = ad.read_h5ad(slide.reference)
    ref[ref.obs["cell_type"] != "B cell"].copy().write_h5ad(tmp_path / "no_b_cells.h5ad")
    dec.reference.value = str(tmp_path / "no_b_cells.h5ad")
    dec.celltype_key.value = "cell_type"
    dec.run()
    wait_job(qtbot, dec, timeout=240_000)
    assert dec.controls.last_error is None, dec.controls.last_error
    assert "B cell" not in slide.adata.obsm["spgpt_proportions"].columns
    assert "sample_slide proportion: B cell" not in viewer.layers
    assert "B cell" not in dec.show_layer.choices and len(dec.show_layer.choices) == 6  # dominant + 5 types
    assert assert_export_matches_layers(viewer, slide, export_h5ad(viewer, qtbot, tmp_path, "first")) == 9

    imp.clear()
    assert "spgpt_imputed" not in slide.adata.obsm and "spgpt_imputed" not in slide.adata.uns
    assert not any("imputed:" in name for name in result_layer_names(viewer, slide))
    assert list(imp.show_layer.choices) == []
    assert assert_export_matches_layers(viewer, slide, export_h5ad(viewer, qtbot, tmp_path, "second")) == 6


def test_cancel_while_finding_domains_leaves_everything_as_before(sample_viewer, qtbot, notifications, monkeypatch):
    """Finding 2: Cancel during 'finding domains' of a re-run leaves the AnnData, the layer and the
    legend exactly as the first run left them, and says so."""
    import spgpt_core.tl._domains as domains_mod
    from spgpt_core.errors import Cancelled

    viewer = sample_viewer
    _, slide = slide_of(viewer)
    w = add_widget(viewer, "Embed & domains")
    w.features.value = "fused"  # the model's path: the re-run embeds again before finding domains
    w.n_domains.value = 5
    w.umap.value = False
    w.run()
    wait_job(qtbot, w)
    adata = slide.adata
    emb, rec = adata.obsm["X_spgpt"], adata.uns["X_spgpt"]
    labels = adata.obs["spgpt_domain"].astype(str).tolist()
    shown = viewer.layers["sample_slide domains"].features["spgpt_domain"].astype(str).tolist()
    legend = dict(w.legend.items)

    real = domains_mod.cluster

    def slow_cluster(*args, **kwargs):  # a window wide enough to press Cancel in
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(domains_mod, "cluster", slow_cluster)
    w.n_domains.value = 4
    w.seed.value = 1  # an embedding setting: the re-run embeds again, then finds domains
    w.run()
    qtbot.waitUntil(lambda: (w.controls.last_progress or (0, 0, ""))[2] == "finding domains", timeout=180_000)
    w.controls.cancel()
    wait_job(qtbot, w)
    assert isinstance(w.controls.last_error, Cancelled)
    assert adata.obsm["X_spgpt"] is emb and adata.uns["X_spgpt"] is rec
    assert adata.obs["spgpt_domain"].astype(str).tolist() == labels
    assert viewer.layers["sample_slide domains"].features["spgpt_domain"].astype(str).tolist() == shown == labels
    assert w.legend.items == legend
    assert len(adata.uns["spgpt_napari"]) == 1  # the cancelled run is not recorded
    assert "finding domains" in w.controls.status.value and "as before" in w.controls.status.value
    toast = [text for level, text in notifications if text.startswith("Cancelled")][-1]
    assert "finding domains" in toast and "0/0" not in toast


def test_loading_a_model_during_a_job_keeps_both_right(sample_viewer, qtbot):
    """Finding 3: the job uses and records the model it started with; the session keeps the model
    loaded meanwhile, under that model's own name."""
    from napari_spgpt._model_widget import RANDOM
    from napari_spgpt._state import get_state

    viewer = sample_viewer
    state = get_state(viewer)
    assert state.model is None and state.spec == "random:tiny"
    _, slide = slide_of(viewer)
    e = add_widget(viewer, "Embed & domains")
    e.features.value = "fused"  # uses the model
    e.n_domains.value = 5
    e.umap.value = False
    e.batch_size.value = 1  # long enough for the model to load while it runs
    e.run()
    m = add_widget(viewer, "Model")
    m.source.value = RANDOM
    m.size.value = "tiny"
    m.seed.value = 1
    m.device.value = "cpu"
    m.load()
    wait_job(qtbot, m)
    assert e.controls.busy, "the model must arrive while Embed still runs"
    loaded = state.model
    assert loaded is not None and state.spec == "random:tiny:1"
    wait_job(qtbot, e, timeout=300_000)
    assert e.controls.last_error is None, e.controls.last_error
    assert state.model is loaded and state.spec == "random:tiny:1"
    run = slide.adata.uns["spgpt_napari"]["run_000"]
    assert run["params"]["model"] == "random:tiny"
    assert "--model random:tiny " in run["command"] + " " and "random:tiny:1" not in run["command"]
    assert "random:tiny:1" in e.command.value  # the next run will use the new model


def test_removing_the_spots_layer_asks_and_can_keep_the_slide(sample_viewer, qtbot, monkeypatch):
    """Finding 5: removing the spots layer of a slide with results asks; keeping it puts the layer back
    with every result; closing it cancels its job and leaves no orphan result layer."""
    import napari_spgpt._guard as guard
    from spgpt_core.errors import Cancelled

    viewer = sample_viewer
    spots, slide = slide_of(viewer)
    e = add_widget(viewer, "Embed & domains")
    e.features.value = "fused"  # embedding batch by batch: a job long enough to close the slide under
    e.n_domains.value = 5
    e.umap.value = False
    e.run()
    wait_job(qtbot, e)
    asked = []
    monkeypatch.setattr(guard, "confirm_close", lambda parent, title, text: asked.append(text) or False)
    viewer.layers.remove(spots)
    qtbot.waitUntil(lambda: spots in viewer.layers, timeout=5_000)
    assert asked and "embed & domains" in asked[0]
    assert e.slide is slide and not slide.closed and "sample_slide domains" in viewer.layers
    assert "spgpt_domain" in spots.features.columns

    monkeypatch.setattr(guard, "confirm_close", lambda parent, title, text: asked.append(text) or True)
    e.batch_size.value = 1
    e.seed.value = 3
    e.run()
    qtbot.waitUntil(lambda: e.controls.last_progress is not None and e.controls.last_progress[0] > 0, timeout=60_000)
    viewer.layers.remove(spots)
    wait_job(qtbot, e)
    assert len(asked) == 2 and "running" in asked[1]
    assert slide.closed and isinstance(e.controls.last_error, Cancelled)
    qtbot.wait(50)
    assert result_layer_names(viewer, slide) == set()  # no orphan domains layer
    assert e.slide is None and "sample_slide image" in viewer.layers
