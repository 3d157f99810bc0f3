"""End-to-end tests of the napari plugin on the generated sample slide (and one real slide).

Each widget is docked through napari's plugin machinery, run on the sample data opened through the
plugin's reader, and the resulting layers, features and colours are checked.
"""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import pytest
from _helpers import add_widget, data_file, wait_job

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def hex_rgba(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgba

    return np.array(to_rgba(color), dtype=np.float32)


def slide_of(viewer):
    from napari_spgpt._layers import slide_layers

    layers = slide_layers(viewer)
    assert len(layers) == 1
    return layers[0], layers[0].metadata["spgpt_slide"]


def grab_canvas(viewer, qtbot) -> np.ndarray:
    viewer.window._qt_window.resize(1400, 1000)
    viewer.window._qt_window.show()
    qtbot.waitExposed(viewer.window._qt_window)
    viewer.reset_view()
    viewer.window._qt_viewer.canvas.native.grab()  # realise the GL widget (Qt 6)
    return viewer.screenshot(canvas_only=True, flash=False)


# ------------------------------------------------------------------------------------------------
# Reader, sample data, manifest
# ------------------------------------------------------------------------------------------------


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, napari_spgpt; bad = [m for m in ('torch', 'scanpy', 'spatialdata', 'napari', 'qtpy') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_manifest_contributions():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("spgpt")
    widgets = {w.display_name for w in mf.contributions.widgets}
    assert widgets == {"Load slide", "Model", "Embed & domains", "Deconvolve", "Impute", "Imputation QC", "Export"}
    assert mf.contributions.readers[0].accepts_directories
    assert {".h5ad", ".csv"} <= set(mf.contributions.writers[0].filename_extensions)
    assert mf.contributions.sample_data[0].key == "visium_sample"


def test_sample_data_through_reader(sample_viewer):
    viewer = sample_viewer
    assert [layer.name for layer in viewer.layers] == ["sample_slide image", "sample_slide spots"]
    image = viewer.layers["sample_slide image"]
    assert image.rgb and image.data.shape[:2] == (1487, 2000)
    spots, slide = slide_of(viewer)
    adata = slide.adata
    assert len(spots.data) == adata.n_obs == 1481
    # spots sit in the hires image's pixel frame: full-resolution coordinates x tissue_hires_scalef
    scalef = slide.to_pixels[0, 0]
    np.testing.assert_allclose(scalef, 0.18691588785046728)  # tissue_hires_scalef of the generated slide
    np.testing.assert_allclose(spots.data[:, ::-1], adata.obsm["spatial"] * scalef, rtol=1e-6)
    assert 0 <= spots.data[:, 0].min() and spots.data[:, 0].max() < 1487
    # size = 55 um spot diameter = 110 full-resolution px, scaled to hires px
    np.testing.assert_allclose(spots.size, 110 * scalef, rtol=1e-6)
    # obs as features (hover shows them), spot names first
    assert list(spots.features.columns[:2]) == ["spot", "array_row"]
    assert {"domain", "true_dominant_type"} <= set(spots.features.columns)
    assert spots.features["spot"].tolist() == adata.obs_names.tolist()
    # the reference generated with the sample is attached for Deconvolve / Impute
    assert slide.reference and slide.reference.endswith("sample_reference.h5ad")
    assert len(adata.uns["spgpt_sample"]["held_out_genes"]) == 12


def test_reader_h5ad_and_zarr_paths(viewer, sample_files, tmp_path):
    import anndata as ad

    from napari_spgpt._reader import get_reader
    from spgpt_core import datasets

    zarr_path, ref_path = sample_files
    assert get_reader(str(zarr_path)) is not None
    assert get_reader(str(ref_path)) is not None
    assert get_reader(str(tmp_path / "x.tif")) is None
    (tmp_path / "plain.zarr").mkdir()
    assert get_reader(str(tmp_path / "plain.zarr")) is None  # not a SpatialData store: left to others

    slide = datasets.make_sample_slide(n_rows=12, n_cols=14, n_domains=3, seed=1)
    h5 = tmp_path / "small.h5ad"
    slide.write_h5ad(h5)
    layers = viewer.open(str(h5), plugin="spgpt")
    assert [la.name for la in layers] == ["small image", "small spots"]
    spots = viewer.layers["small spots"]
    scalef = slide.uns["spatial"]["sample_slide"]["scalefactors"]["tissue_hires_scalef"]
    np.testing.assert_allclose(spots.data[:, ::-1], slide.obsm["spatial"] * scalef)
    assert ad.read_h5ad(h5).n_obs == len(spots.data)


def test_reader_bad_file_notifies(viewer, notifications, tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    viewer.open(str(bad), plugin="spgpt")
    assert len(viewer.layers) == 0
    assert any(level == "error" and "broken.h5ad" in text for level, text in notifications)


def test_load_widget_choices_and_drawing(viewer, sample_files, qtbot):
    w = add_widget(viewer, "Load slide")
    w.path.value = str(sample_files[0])
    assert w.table.choices == ("table",)
    assert w.coordinate_system.value == "global"
    assert w.image.value == "image"
    assert w.draw.value == "auto"
    w.image.value = "(no image)"
    w.load()
    wait_job(qtbot, w)
    spots, slide = slide_of(viewer)
    assert len(viewer.layers) == 1  # no image asked for
    assert len(spots.data) == 1481 and slide.adata.n_obs == 1481  # every spot
    assert "all 1,481 cells drawn as points" in w.controls.status.value
    # without an image the frame is the coordinate system (full-resolution pixels)
    np.testing.assert_allclose(spots.data[:, ::-1], slide.adata.obsm["spatial"])
    np.testing.assert_allclose(spots.size, 110.0)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


def test_model_widget_loads_and_reports_gene_match(sample_viewer, qtbot):
    from napari_spgpt._model_widget import DEFAULT, RANDOM
    from napari_spgpt._state import get_state
    from spgpt_core.checkpoint.pretrained import default_model_dir

    w = add_widget(sample_viewer, "Model")
    shipped = default_model_dir() is not None
    # the shipped model is preselected; without one, an untrained network and a notice saying so
    assert w.source.value == (DEFAULT if shipped else RANDOM)
    assert w.notice.native.isHidden() == shipped
    w.source.value = RANDOM
    w.size.value = "tiny"
    w.device.value = "cpu"
    w.load()
    wait_job(qtbot, w)
    state = get_state(sample_viewer)
    assert state.model is not None and state.spec == "random:tiny:0"
    assert '"d_model": 32' in w.info.value
    assert "matched 388 / 388 genes" in w.info.value
    assert "spgpt info --model random:tiny:0" in w.command.value


def test_log_normalised_slide_uses_its_counts_layer(viewer, qtbot, tmp_path):
    """A file with log1p values in X and the counts in layers['counts'] is analysed from the counts,
    says so when loaded, and the choice shows (and can be changed) in the Model widget."""
    import scipy.sparse as sp

    from spgpt_core import datasets

    slide = datasets.make_sample_slide(n_rows=12, n_cols=14, n_domains=3, seed=1)
    slide.layers["counts"] = slide.X.copy()
    # log1p of counts per 10,000, as scanpy writes it (scanpy itself stays out of this Qt process: its
    # numba kernels here ended the run in "Fatal Python error: none_dealloc" at interpreter exit)
    counts = sp.csr_matrix(slide.X, dtype=np.float64)
    slide.X = sp.diags(1e4 / np.asarray(counts.sum(axis=1)).ravel()) @ counts
    slide.X.data = np.log1p(slide.X.data)
    slide.uns["log1p"] = {"base": None}
    h5 = tmp_path / "lognorm.h5ad"
    slide.write_h5ad(h5)
    w = add_widget(viewer, "Load slide")
    w.path.value = str(h5)
    w.load()
    wait_job(qtbot, w)
    _, loaded = slide_of(viewer)
    assert loaded.counts_layer == "counts"
    assert "analyses use the raw counts in layers['counts']" in w.controls.status.value
    m = add_widget(viewer, "Model")
    m.slide_combo.value = loaded
    assert m.counts.value == "counts" and set(m.counts.choices) == {"X", "counts"}
    e = add_widget(viewer, "Embed & domains")
    e.update_command()
    assert "--counts-layer counts" in e.command.value
    e.n_domains.value = 3
    e.run()
    wait_job(qtbot, e)
    assert e.controls.last_error is None, e.controls.last_error
    # the default finds domains in the expression: read from the counts, not from X's log values
    assert loaded.adata.uns["spgpt_domain"]["params"]["counts_layer"] == "counts"
    m.counts.value = "X"
    assert loaded.counts_layer is None


def test_model_widget_errors_are_notifications(sample_viewer, qtbot, notifications, tmp_path):
    from napari_spgpt._model_widget import DIRECTORY, RANDOM

    w = add_widget(sample_viewer, "Model")
    w.source.value = DIRECTORY
    w.directory.value = str(tmp_path)
    w.load()
    wait_job(qtbot, w)
    assert any(level == "error" and "missing config.json" in text for level, text in notifications)
    w.source.value = RANDOM
    w.device.value = "cuda"  # no GPU here
    w.load()
    wait_job(qtbot, w)
    assert any(level == "error" and "no CUDA GPU is available" in text for level, text in notifications)
    assert w.controls.run_button.enabled and not w.controls.busy
    assert len(sample_viewer.layers) == 2  # viewer untouched


def test_missing_default_model_is_a_notification(sample_viewer, qtbot, notifications, monkeypatch):
    """Builds without a shipped model: choosing 'default' explains the alternatives."""
    import spgpt_core.checkpoint.pretrained as pretrained
    from napari_spgpt._model_widget import DEFAULT

    monkeypatch.setattr(pretrained, "default_model_dir", lambda: None)
    w = add_widget(sample_viewer, "Model")
    w.source.value = DEFAULT
    w.load()
    wait_job(qtbot, w)
    assert any(level == "error" and "ships no default model" in text for level, text in notifications)


# ------------------------------------------------------------------------------------------------
# Embed & domains
# ------------------------------------------------------------------------------------------------


def test_embed_domains_layers_colours_legend_umap_screenshot(sample_viewer, qtbot, tmp_path):
    viewer = sample_viewer
    w = add_widget(viewer, "Embed & domains")
    spots, slide = slide_of(viewer)
    assert w.slide is slide
    assert w.controls.run_button.text == "Find domains"  # the default: the slide's expression, no model
    w.features.value = "fused"  # the model's path: embed, then domains from expression and embedding
    assert w.controls.run_button.text == "Embed && find domains"
    w.n_domains.value = 5
    w.smooth_k.value = 0
    assert not w.spatial_prior.enabled  # without smoothing neighbours the prior has nothing to act over
    w.smooth_k.value = 6
    assert w.spatial_prior.enabled
    w.spatial_prior.value = 1.0  # the Potts prior's strength reaches the core and the command
    w.n_top_genes.value = 200  # the sample slide has 400 genes: the model gets the 200 most variable
    w.run()
    assert not w.controls.run_button.enabled and w.controls.busy  # Run disabled while busy
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    adata = slide.adata
    assert adata.obsm["X_spgpt"].shape == (1481, 32)
    assert adata.obs["spgpt_domain"].nunique() == 5
    # the progress bar showed the core's totals: every spot for the embedding, then busy stages
    assert w.controls.totals["embedding"] == 1481
    assert w.controls.totals["finding domains"] == 0 and w.controls.progress_bar.native.format() == "done"

    layer = viewer.layers["sample_slide domains"]
    assert layer.metadata["spgpt_result_of"] == slide.uid
    assert layer.features["spgpt_domain"].tolist() == adata.obs["spgpt_domain"].astype(str).tolist()
    colors = dict(zip(adata.obs["spgpt_domain"].cat.categories, adata.uns["spgpt_domain_colors"], strict=True))
    expected = np.stack([hex_rgba(colors[d]) for d in adata.obs["spgpt_domain"]])
    np.testing.assert_allclose(layer.face_color, expected, atol=1e-6)
    assert w.legend.items == {k: v for k, v in colors.items()}
    # what the domains were found from, and how (fused features beside neighbours, gmm-tied)
    assert w.legend.title.endswith("; fused + neighbours 0.8, gmm-tied consensus x10, Potts 1.0 over 6)"), \
        w.legend.title
    assert "spgpt_domain" in spots.features.columns  # hovering the spots shows the domain too
    assert w.umap_canvas is not None and w.umap_canvas.n_points == 1481
    assert w.umap_canvas.title == "UMAP of the features (fused + neighbours 0.8)"

    # run record and equivalent command
    assert adata.uns["X_spgpt"]["model"]["d_model"] == 32
    assert adata.uns["spgpt_domain"]["params"]["smooth_k"] == 6
    assert adata.uns["spgpt_domain"]["params"]["spatial_prior"] == 1.0
    assert adata.uns["spgpt_domain"]["params"]["smoothing"] == "potts"
    assert adata.uns["X_spgpt"]["summary"]["n_genes_used"] == 200
    assert "--n-top-genes 200" in w.command.value
    run = adata.uns["spgpt_napari"]["run_000"]
    assert run["params"]["n_clusters"] == 5
    assert run["command"].startswith("spgpt domains ") and "--n-clusters 5" in run["command"]
    assert "--smooth-k 6" in w.command.value and "--spatial-prior 1.0" in w.command.value

    # screenshot: domains over the image, not blank, showing the domain colours
    arr = grab_canvas(viewer, qtbot)
    rgb = arr[..., :3].reshape(-1, 3).astype(int)
    assert len(np.unique(rgb, axis=0)) > 100
    for c in colors.values():
        target = (hex_rgba(c)[:3] * 255).round().astype(int)
        assert (np.abs(rgb - target).max(axis=1) <= 12).sum() > 20, f"domain colour {c} not visible"


def test_default_domains_need_no_model(viewer, qtbot, tmp_path):
    """The widget's default is the core's: domains from the slide's expression beside its neighbourhood,
    no embedding; the command it shows names no model, and the legend says what was used."""
    from spgpt_core import datasets

    small = datasets.make_sample_slide(n_rows=12, n_cols=14, n_domains=3, seed=3)
    small.write_h5ad(tmp_path / "small.h5ad")
    viewer.open(str(tmp_path / "small.h5ad"), plugin="spgpt")
    w = add_widget(viewer, "Embed & domains")
    w.n_domains.value = 3
    assert w.controls.run_button.text == "Find domains"
    assert "spgpt domains" in w.command.value and "--model" not in w.command.value
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    _, slide = slide_of(viewer)
    assert "X_spgpt" not in slide.adata.obsm and slide.adata.uns["spgpt_domain"]["params"]["features"] == "expression"
    assert w.legend.title.endswith("; expression + neighbours 0.8, gmm-tied consensus x10, Potts 0.5 over 6)"), \
        w.legend.title
    assert w.umap_canvas.title == "UMAP of the features (expression + neighbours 0.8)"
    assert viewer.layers["small domains"].features["spgpt_domain"].nunique() == 3


def test_finetune_then_embed(viewer, qtbot, tmp_path):
    from napari_spgpt._embed_widget import FINETUNE
    from spgpt_core import datasets

    small = datasets.make_sample_slide(n_rows=10, n_cols=12, n_domains=3, seed=2)
    small.write_h5ad(tmp_path / "small.h5ad")
    viewer.open(str(tmp_path / "small.h5ad"), plugin="spgpt")
    w = add_widget(viewer, "Embed & domains")
    assert w.mode.enabled  # spgpt_core.train is in this build
    assert w.features.value == "expression"  # the core's default: no model
    w.mode.value = FINETUNE
    assert w.features.value == "fused"  # fine-tuning only matters to features that use the embedding
    w.epochs.value = 1
    w.method.value = "kmeans"
    w.n_domains.value = 3
    w.umap.value = False
    assert "spgpt domains" in w.command.value and "--finetune-epochs 1" in w.command.value
    assert "--features fused" in w.command.value
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    _, slide = slide_of(viewer)
    assert slide.adata.obsm["X_spgpt"].shape == (slide.adata.n_obs, 32)
    assert viewer.layers["small domains"].features["spgpt_domain"].nunique() == 3
    params = slide.adata.uns["spgpt_napari"]["run_000"]["params"]
    assert params["mode"] == FINETUNE and params["finetune_epochs"] == 1
    w.features.value = "expression"  # and back: the expression alone is found zero-shot, with no model
    assert w.mode.value != FINETUNE and "--finetune-epochs" not in w.command.value


def test_cancel_stops_between_batches(sample_viewer, qtbot, notifications):
    viewer = sample_viewer
    w = add_widget(viewer, "Embed & domains")
    w.features.value = "fused"  # the model's path: embedding, batch by batch
    w.batch_size.value = 1
    w.umap.value = False
    w.run()
    qtbot.waitUntil(lambda: w.controls.last_progress is not None and w.controls.last_progress[0] > 0, timeout=60_000)
    w.controls.cancel()
    wait_job(qtbot, w)
    from spgpt_core.errors import Cancelled

    assert isinstance(w.controls.last_error, Cancelled)
    assert "sample_slide domains" not in viewer.layers
    _, slide = slide_of(viewer)
    assert "X_spgpt" not in slide.adata.obsm and slide.busy is None
    assert w.controls.run_button.enabled
    assert any(level == "info" and text.startswith("Cancelled") for level, text in notifications)


def test_bad_parameters_keep_the_viewer_alive(sample_viewer, qtbot, notifications):
    viewer = sample_viewer
    w = add_widget(viewer, "Embed & domains")
    w.method.value = "kmeans"
    w.n_domains.value = 60
    _, slide = slide_of(viewer)
    slide.adata.X = slide.adata.X.copy()
    slide.adata.X.data[:5] = -1.0  # negative counts: spgpt_core refuses them with a message
    w.run()
    wait_job(qtbot, w)
    assert any(level == "error" and "negative value" in text for level, text in notifications)
    assert "sample_slide domains" not in viewer.layers
    assert w.controls.run_button.enabled


# ------------------------------------------------------------------------------------------------
# Deconvolve, Impute, QC
# ------------------------------------------------------------------------------------------------


def test_deconvolve_proportion_and_dominant_layers(sample_viewer, qtbot):
    viewer = sample_viewer
    w = add_widget(viewer, "Deconvolve")
    _, slide = slide_of(viewer)
    assert w.reference_path() == slide.reference  # the sample's reference is preselected
    assert w.celltype_key.value == "cell_type"
    w.epochs.value = 30  # the default 1000 Tangram epochs take minutes on 2 CPU cores
    w.run()
    wait_job(qtbot, w, timeout=240_000)
    assert w.controls.last_error is None, w.controls.last_error
    props = slide.adata.obsm["spgpt_proportions"]
    types = [str(t) for t in props.columns]
    assert len(types) == 6
    np.testing.assert_allclose(props.to_numpy().sum(axis=1), 1.0, atol=1e-5)
    for t in types:
        layer = viewer.layers[f"sample_slide proportion: {t}"]
        assert layer.face_color_mode == "colormap"
        assert layer.face_colormap.name == "viridis" and layer.face_colorbar.visible
        lo, hi = layer.face_contrast_limits
        assert lo == 0.0 and 0.05 <= hi <= 1.0
        np.testing.assert_allclose(layer.features["proportion"], props[t].to_numpy(), rtol=1e-6)
        assert not layer.visible
    dom = viewer.layers["sample_slide dominant type"]
    assert dom.visible
    mapping = w.legend.items
    expected = np.stack([hex_rgba(mapping[str(v)]) for v in dom.features["dominant_type"]])
    np.testing.assert_allclose(dom.face_color, expected, atol=1e-6)
    assert (dom.features["dominant_type"].astype(str).to_numpy() == props.idxmax(axis=1).astype(str).to_numpy()).all()
    # show one type instead of the dominant type; shared 0-1 scale
    w.show_layer.value = types[0]
    assert viewer.layers[f"sample_slide proportion: {types[0]}"].visible and not dom.visible
    w.scale.value = w.scale.choices[1]
    assert viewer.layers[f"sample_slide proportion: {types[1]}"].face_contrast_limits == (0.0, 1.0)
    assert "spgpt deconvolve" in w.command.value and "--celltype-key cell_type --model random:tiny" in w.command.value
    assert "--mapping-epochs 30" in w.command.value
    assert slide.adata.uns["spgpt_proportions"]["params"]["num_epochs"] == 30


def test_impute_gene_search_and_overlays(sample_viewer, qtbot):
    viewer = sample_viewer
    w = add_widget(viewer, "Impute")
    _, slide = slide_of(viewer)
    held_out = [str(g) for g in slide.adata.uns["spgpt_sample"]["held_out_genes"]]
    assert sorted(w.picker.all) == sorted(held_out)  # only genes the slide did not measure
    w.picker.search.value = held_out[0][:3]
    assert held_out[0] in w.picker.genes.choices
    w.picker.value = held_out[:2]
    w.picker.search.value = "zzz"  # a new search keeps the selection
    assert w.picker.value == held_out[:2]
    w.epochs.value = 30
    w.run()
    wait_job(qtbot, w, timeout=240_000)
    assert w.controls.last_error is None, w.controls.last_error
    from napari_spgpt._state import get_state

    assert get_state(viewer).model is None  # the default maps on expression: no model was loaded for it
    imputed = slide.adata.obsm["spgpt_imputed"]
    assert list(imputed.columns) == held_out[:2]
    for i, g in enumerate(held_out[:2]):
        layer = viewer.layers[f"sample_slide imputed: {g}"]
        assert layer.face_color_mode == "colormap" and layer.face_colormap.name == "viridis"
        np.testing.assert_allclose(layer.features[f"imputed {g}"], imputed[g].to_numpy(), rtol=1e-6)
        lo, hi = layer.face_contrast_limits
        assert lo < hi
        assert layer.visible == (i == 0)
    assert f"--genes {held_out[0]},{held_out[1]}" in w.command.value


def test_imputation_qc_table_and_layouts(sample_viewer, qtbot, tmp_path):
    from napari_spgpt._qc_widget import GRID

    viewer = sample_viewer
    w = add_widget(viewer, "Imputation QC")
    _, slide = slide_of(viewer)
    w.n_random.value = 3
    w.pick_random()
    genes = w.picker.value
    assert len(genes) == 3 and all(g in slide.adata.var_names for g in genes)
    w.epochs.value = 30
    w.run()
    wait_job(qtbot, w, timeout=240_000)
    assert w.controls.last_error is None, w.controls.last_error
    qtbot.waitUntil(lambda: w.view_ready, timeout=10_000)
    table = w.table.to_dataframe()
    assert sorted(table["gene"]) == sorted(genes)
    r = w.pearson
    assert r.notna().all() and (r.abs() <= 1).all()
    assert "Median Pearson r" in w.summary.value
    assert slide.adata.uns["spgpt_imputed_qc"]["pearson"].keys() == set(genes)
    # the equivalent commands (spgpt impute, then spgpt evaluate --task imputation) give the same r
    import json
    import shlex
    import subprocess
    import sys

    impute_cmd, evaluate_cmd = w.command.value.splitlines()
    assert impute_cmd.startswith("spgpt impute ") and evaluate_cmd.startswith("spgpt evaluate ")
    for line in (impute_cmd, evaluate_cmd + " --json qc.json"):
        res = subprocess.run([sys.executable, "-m", "spgpt_core.cli", "-q", *shlex.split(line)[1:]], cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    per_gene = json.loads((tmp_path / "qc.json").read_text())["per_gene"]
    assert per_gene.keys() == set(genes)
    np.testing.assert_allclose([per_gene[g] for g in r.index], r.to_numpy(), atol=1e-4)
    # side by side: one gene, measured then imputed, right of the tissue (tests/gui/test_qc_view.py has more)
    g = w.gene.value
    panels = next(la for la in viewer.layers if la.metadata.get("spgpt_kind") == "qc_panels")
    assert set(panels.features["gene"]) == {g} and panels.data[:, 1].min() > slide.image.shape_yx[1]
    # a layer change elsewhere (napari resets widget choices then) keeps the gene shown
    viewer.add_points(np.zeros((1, 2)), name="unrelated")
    assert w.gene.value == g and set(panels.features["gene"]) == {g}
    # grid: every gene in its own row, titled with its r
    w.layout_mode.value = GRID
    assert set(panels.features["gene"]) == set(genes)
    labels = viewer.layers["sample_slide QC titles"]
    assert len(labels.data) == 6 and any("r = " in t for t in labels.features["label"])


# ------------------------------------------------------------------------------------------------
# Export and writer
# ------------------------------------------------------------------------------------------------


def test_export_formats_and_overwrite_confirmation(viewer, sample_files, qtbot, tmp_path, monkeypatch):
    import shutil

    import anndata as ad
    import spatialdata as sd

    import napari_spgpt._export_widget as ew

    # a copy of the sample store: the export below writes into the store itself, and the session's
    # sample must stay as generated for the other tests
    store = tmp_path / "store" / "sample_slide.zarr"
    shutil.copytree(sample_files[0], store)
    viewer.open(str(store), plugin="spgpt")
    _, slide = slide_of(viewer)
    slide.adata.obs["spgpt_domain"] = pd.Categorical(np.arange(slide.adata.n_obs) % 3)
    w = add_widget(viewer, "Export")
    w.folder.value = str(tmp_path)
    w.basename.value = "out"
    w.zarr.value = True
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    h5, csv, zarr = tmp_path / "out.h5ad", tmp_path / "out.csv", tmp_path / "out.zarr"
    assert ad.read_h5ad(h5).obs["spgpt_domain"].tolist() == slide.adata.obs["spgpt_domain"].tolist()
    table = pd.read_csv(csv, index_col=0)
    assert list(table.columns[:2]) == ["x", "y"] and "spgpt_domain" in table.columns and len(table) == 1481
    back = sd.read_zarr(zarr)
    assert "image" in back.images and "spots" in back.shapes
    assert "spgpt_domain" in back.tables["table"].obs

    # the widget's command (spgpt export, from the exported .h5ad) writes the same table
    cli_csv = tmp_path / "cli.csv"
    cmd = next(line for line in w.command_text().splitlines() if "--out" in line and line.endswith("out.csv"))
    assert cmd.startswith("spgpt export ") and str(h5) in cmd
    from spgpt_core.cli import main

    assert main(shlex.split(cmd)[1:-1] + [str(cli_csv)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(cli_csv, index_col=0), table)

    # existing files: nothing is written without a yes
    asked = []
    monkeypatch.setattr(ew, "confirm", lambda parent, title, text: asked.append(text) or False)
    before = h5.stat().st_mtime_ns
    w.run()
    assert asked and "out.h5ad" in asked[0] and not w.controls.busy
    assert h5.stat().st_mtime_ns == before
    monkeypatch.setattr(ew, "confirm", lambda parent, title, text: True)
    w.run()
    wait_job(qtbot, w)
    assert h5.stat().st_mtime_ns != before

    # back into the slide's own store: only its table is rewritten
    w.folder.value = str(slide.source).rsplit("/", 1)[0]
    w.basename.value = "sample_slide"
    w.h5ad.value = w.csv.value = False
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    store = sd.read_zarr(slide.source)
    assert set(store.tables) == {"table"} and "spgpt_domain" in store.tables["table"].obs
    assert "image" in store.images


def test_writer_saves_slide_layer(sample_viewer, tmp_path):
    import anndata as ad

    spots, slide = slide_of(sample_viewer)
    sample_viewer.layers.selection = {spots}
    written = sample_viewer.layers.save(str(tmp_path / "spots.h5ad"), selected=True, plugin="spgpt")
    assert ad.read_h5ad(written[0]).n_obs == 1481
    written = sample_viewer.layers.save(str(tmp_path / "spots.csv"), selected=True, plugin="spgpt")
    table = pd.read_csv(written[0], index_col=0)
    assert len(table) == 1481 and {"x", "y", "domain"} <= set(table.columns)


def test_multichannel_multiscale_store_with_labels(viewer, qtbot, tmp_path):
    """spatialdata's blobs: a 3-channel multiscale image and a table annotating labels (cells)."""
    from spatialdata.datasets import blobs

    blobs(length=256).write(tmp_path / "blobs.zarr")
    w = add_widget(viewer, "Load slide")
    w.path.value = str(tmp_path / "blobs.zarr")
    assert set(w.image.choices) == {"blobs_image", "blobs_multiscale_image", "(no image)"}
    w.image.value = "blobs_multiscale_image"
    w.load()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    channels = [la for la in viewer.layers if la.name.startswith("blobs blobs_multiscale_image")]
    assert len(channels) == 3 and all(la.multiscale for la in channels)
    spots, slide = slide_of(viewer)
    assert len(spots.data) == slide.adata.n_obs == 26
    assert spots.data.min() >= 0 and spots.data.max() <= 256  # label centroids in image pixels


# ------------------------------------------------------------------------------------------------
# A real slide from ../shared/data, converted to SpatialData
# ------------------------------------------------------------------------------------------------


def test_real_dlpfc_slide_as_zarr_embeds_and_clusters(viewer, qtbot, tmp_path):
    import anndata as ad

    from spgpt_core.io import to_spatialdata, write_spatialdata

    a = ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"))
    store = write_spatialdata(to_spatialdata(a), tmp_path / "DLPFC_151673.zarr")
    w = add_widget(viewer, "Load slide")
    w.path.value = str(store)
    assert w.table.value == "table" and w.coordinate_system.value == "global"
    w.load()
    wait_job(qtbot, w)
    spots, slide = slide_of(viewer)
    assert len(spots.data) == 3639
    e = add_widget(viewer, "Embed & domains")
    e.n_domains.value = 7
    e.features.value = "fused"  # embeds the real slide (its gene symbols matched to the model's)
    e.umap.value = False
    e.run()
    wait_job(qtbot, e)
    assert e.controls.last_error is None, e.controls.last_error
    gm = slide.adata.uns["X_spgpt"]["gene_match"]
    assert gm["source"] == "var['gene_symbol']" and gm["n_matched"] > 4000
    domains = viewer.layers["DLPFC_151673 domains"]
    assert domains.features["spgpt_domain"].nunique() == 7


# ------------------------------------------------------------------------------------------------
# Large slides
# ------------------------------------------------------------------------------------------------


def test_large_slide_is_drawn_whole_as_a_raster(viewer, qtbot, tmp_path, notifications):
    import time

    import anndata as ad
    import scipy.sparse as sp
    from napari.layers import Labels

    n = 150_000
    rng = np.random.default_rng(0)
    big = ad.AnnData(sp.random(n, 20, density=0.2, format="csr", dtype=np.float32, random_state=0),
                     obs=pd.DataFrame({"cell_type": pd.Categorical(rng.choice(list("ABCDE"), n))},
                                      index=[f"cell_{i}" for i in range(n)]))
    big.obsm["spatial"] = rng.random((n, 2)) * 20_000
    path = tmp_path / "big.h5ad"
    big.write_h5ad(path)
    w = add_widget(viewer, "Load slide")
    w.path.value = str(path)
    assert w.draw.value == "auto"
    t0 = time.perf_counter()
    w.load()
    wait_job(qtbot, w)
    elapsed = time.perf_counter() - t0
    spots, slide = slide_of(viewer)
    assert isinstance(spots, Labels) and slide.drawn_as == "raster"
    assert slide.adata.n_obs == n and spots.name == "big spots"
    assert len(np.unique(spots.data)) == n + 1  # every cell owns a pixel (0 is the background)
    assert "all 150,000 cells drawn as raster" in w.controls.status.value
    # each cell's pixel sits where the cell is, and hovering it names the cell
    r = slide.raster
    rows, cols = np.unravel_index(r.cell_pixel, r.ids.shape)
    centre = np.column_stack([rows, cols]) * r.scale + np.asarray(r.translate)
    assert np.abs(centre - slide.points_yx).max() <= 3 * r.scale
    assert spots.features["index"].tolist()[:3] == [1, 2, 3]
    assert (spots.features["spot"].to_numpy() == big.obs_names.to_numpy()).all()
    assert elapsed < 60
    # a continuous overlay added hidden gets its colorbar (a costly vispy overlay) only once it is shown
    from napari_spgpt._layers import upsert_result

    feats = pd.DataFrame({"spot": big.obs_names, "value": rng.random(n)})
    layer = upsert_result(viewer, slide, "big value", feats, kind="proportion", column="value", visible=False,
                          colorbar=True)
    assert not layer.visible and not layer.colorbar.visible
    layer.visible = True
    assert layer.colorbar.visible
    layer.visible = False
    assert not layer.colorbar.visible


def test_labels_and_warning_say_which_smoothing_was_used():
    """The layer label names the smoothing the record says was used; a Potts fallback is also told."""
    from napari_spgpt._embed_widget import clustering_label, smoothing_warning

    potts = {"n_clusters": 5, "method": "gmm-tied", "smooth_k": 6, "smoothing": "potts", "spatial_prior": 0.5,
             "features": "expression"}
    assert clustering_label({"params": potts}) == "k=5, expression, gmm-tied, Potts 0.5 over 6"
    assert smoothing_warning(potts) is None
    fell_back = {**potts, "smoothing": "majority vote",
                 "potts_fallback": "the Potts prior merged 5 domains into 4; the majority vote was used instead"}
    assert clustering_label({"params": fell_back}) == "k=5, expression, gmm-tied, smooth 6"
    assert smoothing_warning(fell_back).startswith("The Potts prior merged 5 domains into 4")
    assert clustering_label({"params": {**potts, "smooth_k": 0}}) == "k=5, expression, gmm-tied"
