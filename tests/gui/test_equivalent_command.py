"""The Embed & domains widget and the command it shows are one workflow (tl.domains): the command,
run in a subprocess, gives the same domain labels. And with a GPU present, the plugin's device choice
'cpu' keeps everything on the CPU."""

from __future__ import annotations

import shlex
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from helpers.device_guard import install
from _helpers import add_widget, wait_job

pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore:zarr v3 autosharding")]


def _slide(viewer):
    from napari_spgpt._layers import slide_layers

    return slide_layers(viewer)[0].metadata["spgpt_slide"]


def test_widget_equals_its_command(sample_viewer, qtbot, tmp_path):
    w = add_widget(sample_viewer, "Embed & domains")
    w.features.value = "fused"  # the model's path (the default's command has no model: test_plugin)
    w.n_domains.value = 5
    w.n_top_genes.value = 200
    w.umap.value = False
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    command = w.command.value
    assert command.startswith("spgpt domains ") and "\n" not in command
    assert "--model random:tiny" in command and "--n-top-genes 200" in command
    args = shlex.split(command)[1:]
    res = subprocess.run([sys.executable, "-m", "spgpt_core.cli", "-q", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = ad.read_h5ad(tmp_path / args[args.index("--out") + 1])
    gui = _slide(sample_viewer).adata
    assert list(out.obs_names) == list(gui.obs_names)
    np.testing.assert_array_equal(out.obs["spgpt_domain"].astype(str), gui.obs["spgpt_domain"].astype(str))
    np.testing.assert_allclose(out.obsm["X_spgpt"], gui.obsm["X_spgpt"], atol=1e-5)


def test_plugin_device_cpu_never_touches_cuda(sample_viewer, qtbot, monkeypatch):
    from napari_spgpt._state import get_state

    seen = install(monkeypatch)
    assert get_state(sample_viewer).device == "cpu"
    w = add_widget(sample_viewer, "Embed & domains")
    w.features.value = "fused"  # loads and runs the model
    w.n_domains.value = 5
    w.run()
    wait_job(qtbot, w)
    assert w.controls.last_error is None, w.controls.last_error
    assert seen == []
    assert _slide(sample_viewer).adata.uns["X_spgpt"]["params"]["device"] == "cpu"
