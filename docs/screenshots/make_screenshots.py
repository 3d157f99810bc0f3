"""Regenerate the plugin screenshots in this folder (one per widget, in use on the sample slide).

    xvfb-run -a -s "-screen 0 1700x1100x24" python docs/screenshots/make_screenshots.py [--model random:small]

Uses the generated sample slide and reference (File > Open Sample > spgpt) and the shipped default
model (``--model random:small`` for an untrained network).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def wait(app, predicate, timeout=1800.0):
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError
        app.processEvents()
        time.sleep(0.01)


def settle(app, seconds=1.0):
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--epochs", type=int, default=300, help="Tangram epochs for deconvolution / imputation")
    args = p.parse_args()
    os.environ.setdefault("SPGPT_CACHE_DIR", str(Path.home() / ".cache" / "spgpt"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_spgpt._sample_data import ensure_sample_files

    slide_path, _ = ensure_sample_files()
    viewer = napari.Viewer(show=True, title="napari + spgpt")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1700, 1080)
    docked = []

    def dock(name):
        for dw in docked:
            viewer.window.remove_dock_widget(dw)
        docked.clear()
        dw, widget = viewer.window.add_plugin_dock_widget("spgpt", name)
        docked.append(dw)
        settle(app, 0.5)
        return widget

    def shot(name, frame=None):
        viewer.fit_to_view(layers=frame)  # None: every layer
        settle(app, 1.0)
        viewer.window._qt_viewer.canvas.native.grab()
        path = HERE / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        from PIL import Image

        Image.open(path).convert("RGB").save(path, optimize=True)  # lossless; no alpha channel
        print("wrote", path, flush=True)

    # Load slide: the sample store, its table / coordinate system / image
    w = dock("Load slide")
    w.path.value = str(slide_path)
    w.slide_name.value = "sample_slide"
    w.load()
    wait(app, lambda: not w.controls.busy)
    shot("load_slide")

    # Model
    w = dock("Model")
    from napari_spgpt._model_widget import DEFAULT, RANDOM

    if args.model == "default":
        w.source.value = DEFAULT
    else:
        w.source.value = RANDOM
        w.size.value = args.model.split(":")[1]
    w.load()
    wait(app, lambda: not w.controls.busy)
    shot("model")

    # Embed & domains
    w = dock("Embed & domains")
    w.n_domains.value = 5
    w.smooth_k.value = 6
    w.command.toggle.value = True
    w.run()
    wait(app, lambda: not w.controls.busy)
    spots = [la for la in viewer.layers if la.name.endswith("spots")][0]
    spots.visible = False
    shot("embed_domains")
    viewer.layers["sample_slide domains"].visible = False

    # Deconvolve
    w = dock("Deconvolve")
    w.epochs.value = args.epochs
    w.run()
    wait(app, lambda: not w.controls.busy)
    shot("deconvolve_dominant")
    types = list(w.show_layer.choices)[1:]
    w.show_layer.value = types[0]
    shot("deconvolve_proportion")
    w.show_layer.value = types[0]
    for la in viewer.layers:
        if "proportion" in la.name or "dominant" in la.name:
            la.visible = False

    # Impute
    w = dock("Impute")
    w.picker.search.value = ""
    w.picker.value = w.picker.all[:3]
    w.epochs.value = args.epochs
    w.run()
    wait(app, lambda: not w.controls.busy)
    shot("impute")
    for la in viewer.layers:
        if "imputed:" in la.name:
            la.visible = False

    # Imputation QC
    w = dock("Imputation QC")
    w.n_random.value = 6
    w.pick_random()
    w.epochs.value = args.epochs
    w.run()
    wait(app, lambda: not w.controls.busy and w.view_ready)  # the panels are drawn in short steps after Done
    from napari_spgpt._qc_widget import GRID

    w.layout_mode.value = GRID
    settle(app, 1.0)
    shot("imputation_qc", frame=[la for la in viewer.layers if la.metadata.get("spgpt_kind") == "qc_panels"])

    # Export
    for la in viewer.layers:
        if " QC " in la.name:
            la.visible = False
    viewer.layers["sample_slide domains"].visible = True
    w = dock("Export")
    out = Path(os.environ["SPGPT_CACHE_DIR"]) / "screenshot_export"
    out.mkdir(parents=True, exist_ok=True)
    w.folder.value = str(out)
    import napari_spgpt._export_widget as ew

    ew.confirm = lambda *a: True
    w.run()
    wait(app, lambda: not w.controls.busy)
    shot("export")

    # every widget docked on a 1366 x 768 laptop screen: one tabbed dock, each widget scrolls
    for dw in docked:
        viewer.window.remove_dock_widget(dw)
    docked.clear()
    for name in ("Load slide", "Model", "Embed & domains", "Deconvolve", "Impute", "Imputation QC", "Export"):
        viewer.window.add_plugin_dock_widget("spgpt", name)
    settle(app, 1.0)
    viewer.window._qt_window.resize(1366, 768)
    viewer.window.add_plugin_dock_widget("spgpt", "Embed & domains")[0].raise_()
    viewer.layers["sample_slide domains"].visible = True
    shot("laptop_layout", frame=[viewer.layers["sample_slide domains"]])
    viewer.close()


if __name__ == "__main__":
    main()
