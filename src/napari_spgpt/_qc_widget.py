"""Imputation QC widget: how far can imputed genes be trusted on this slide?

For genes the slide *did* measure: impute them from the reference with ``spgpt_core.tl.impute``
(which leaves requested genes out of the genes the mapping is trained on, so a gene is hidden
from its own imputation) and compare with what was measured: per-gene Pearson r
(``spgpt_core.metrics.pearson_per_gene``) in a table, and the measured and imputed maps next to
each other (one gene side by side, or a grid of genes).

Measured values are put on the imputation's scale by ``spgpt_core.tl._impute.measured_expression``
(log1p counts per 10,000 training-gene counts, with the training genes the run used).

torch and the analyses are imported inside the workers so napari starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, RadioButtons, SpinBox
from napari.utils import notifications
from spgpt_core.errors import SpgptError
from spgpt_core.params import ImputeConfig

from . import _commands
from ._base import ResultTable, ReferenceSlideWidget, add_native
from ._choices import dynamic, set_choices
from ._impute_widget import COLORMAP, GenePicker, impute_in_worker, slide_gene_names
from ._layers import KIND_KEY, RESULT_KEY, drawn, get_slide, result_layers, robust_limits, upsert_result
from ._reference import obs_and_genes

if TYPE_CHECKING:
    import napari.viewer

KEY = "spgpt_imputed_qc"
SIDE = "side by side (one gene)"
GRID = "grid (all genes)"
MAX_GRID = 8
QC_KINDS = ("qc_measured", "qc_imputed", "qc_image", "qc_labels")


class QCWidget(ReferenceSlideWidget):
    config_class = ImputeConfig
    run_text = "Hide, impute and compare"
    job_name = "imputation QC"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.reference = FileEdit(label="Reference", mode="r", filter="AnnData (*.h5ad)")
        self.picker = GenePicker("Measured genes to test")
        self.n_random = SpinBox(label="Random genes", value=6, min=1, max=200)
        self.pick_button = PushButton(text="Pick random measured genes")
        self.epochs = SpinBox(label="Mapping epochs", value=1000, min=1, max=100_000, step=100,
                              tooltip="Tangram optimisation epochs (spgpt default 1000)")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.layout_mode = RadioButtons(label="Layout", choices=[SIDE, GRID], value=SIDE)
        self.gene = dynamic(ComboBox, label="Gene", tooltip="Gene shown side by side")
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.table = ResultTable(["gene", "Pearson r", "% spots expressing"])
        after = Container(widgets=[self.layout_mode, self.gene, self.summary])
        after.margins = (0, 0, 0, 0)
        add_native(after, self.table)
        super().__init__(viewer, [self.reference, self.picker, self.n_random, self.pick_button, self.epochs, self.seed],
                         after=[after])
        self.reference.changed.connect(self._on_reference)
        self.pick_button.clicked.connect(self.pick_random)
        self.layout_mode.changed.connect(self.apply_layout)
        self.gene.changed.connect(self.apply_layout)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self._slide_for_layers = None
        self._laying_out = False
        self._applied = None
        self.pearson: pd.Series | None = None
        self._on_slide_changed()

    # -- form -------------------------------------------------------------------------------------

    def _on_reference(self, *_) -> None:
        path, slide = self.reference_path(), self.slide
        if path is None or slide is None:
            return
        try:
            _, ref_genes = obs_and_genes(path)
        except SpgptError as e:
            notifications.show_error(str(e))
            return
        ref_upper = set(ref_genes.str.upper())
        shared = sorted({g for g in slide_gene_names(slide) if g.upper() in ref_upper})
        self.picker.set_genes(shared, selected=self.picker.value)
        self.update_command()

    def pick_random(self) -> None:
        genes = self.picker.all
        if not genes:
            return
        rng = np.random.default_rng(len(self.picker.value))
        n = min(int(self.n_random.value), len(genes))
        self.picker.value = sorted(rng.choice(genes, size=n, replace=False).tolist())
        self.update_command()

    def command_text(self) -> str:
        spec, device = self.model_spec()
        return _commands.imputation_qc(self.slide, spec, device, reference=self.reference_path(), genes=self.picker.value,
                             config=self.mapping_config(), key_added=KEY)

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        genes = self.picker.value
        job = self.mapping_job_inputs("genes", genes, "Choose a reference and at least one measured gene to test.")
        if job is None:
            return

        def work(progress):
            from spgpt_core.tl._impute import imputation_qc  # torch, scanpy: only inside the worker


            result = impute_in_worker(job, genes, progress, key=KEY)
            qc = imputation_qc(job.adata, KEY, gene_col=job.gene_col, counts_layer=job.counts_layer)
            return {**result, **qc}

        self.controls.start(work, on_done=lambda res: self._show(job.slide, res, job.params), slide=job.slide,
                            what=self.job_name)

    def _show(self, slide, res: dict, params: dict) -> None:
        self.adopt_model(res)
        adata = slide.adata
        adata.uns[KEY]["pearson"] = {str(k): float(v) for k, v in res["pearson"].items()}
        for kind in QC_KINDS:
            for layer in result_layers(self.viewer, slide, kind):
                self.viewer.layers.remove(layer)
        r: pd.Series = res["pearson"]
        order = r.sort_values(ascending=False, na_position="last").index.tolist()
        names = drawn(slide, adata.obs_names.to_numpy())
        for g in order:
            for kind, df, what in (("qc_measured", res["measured"], "measured"),
                                   ("qc_imputed", res["imputed"], "imputed")):
                v = drawn(slide, df[g].to_numpy(dtype=float))
                col = f"{what} {g}"
                upsert_result(self.viewer, slide, f"{slide.name} QC {what}: {g}",
                              pd.DataFrame({"spot": names, col: v}), kind=kind, column=col, colormap=COLORMAP,
                              limits=robust_limits(v, lower=None), visible=False,
                              extra_metadata={"gene": g, "pearson": float(r[g]) if np.isfinite(r[g]) else None})
        self._add_panel_layers(slide, n_rows=min(len(order), MAX_GRID))
        self.pearson = r
        self.table.set_rows([[g, _fmt(r[g]), f"{res['expressing'][g]:.0f}"] for g in order])
        med = float(np.nanmedian(r.to_numpy())) if np.isfinite(r.to_numpy()).any() else float("nan")
        self.summary.value = (f"Median Pearson r = {med:.2f} over {len(order)} held-out genes "
                              f"({int(np.isfinite(r.to_numpy()).sum())} with a defined r). Genes near 0 or below "
                              "are not reproduced from the reference on this slide: treat imputed genes like them "
                              "with caution." + (f" The grid shows the best {MAX_GRID}." if len(order) > MAX_GRID
                                                 else ""))
        self._slide_for_layers = slide
        set_choices(self.gene, order, order[0])
        self.apply_layout(force=True)
        self.record(slide, params, [KEY])
        self.update_command()

    def _add_panel_layers(self, slide, n_rows: int) -> None:
        """Tissue image copies (same data, nothing copied in memory) for every panel but the first, and a
        text-only Points layer for the panel titles. Created once per run; layouts only move them."""
        if slide.image is not None:
            data = slide.image.data if len(slide.image.data) > 1 else slide.image.data[0]
            for i in range(2 * n_rows - 1):
                layer = self.viewer.add_image(data, rgb=slide.image.rgb, multiscale=len(slide.image.data) > 1,
                                              name=f"{slide.name} QC image {i + 1}", visible=False,
                                              metadata={RESULT_KEY: slide.uid, KIND_KEY: "qc_image"})
                self.viewer.layers.move(self.viewer.layers.index(layer), 0)  # below every spots layer
        n = 2 * n_rows
        self.viewer.add_points(np.zeros((n, 2)), features=pd.DataFrame({"label": [""] * n}), size=0.01,
                               face_color="transparent", border_width=0, name=f"{slide.name} QC labels",
                               text={"string": "{label}", "color": "white", "size": 12, "anchor": "upper_left"},
                               metadata={RESULT_KEY: slide.uid, KIND_KEY: "qc_labels"})

    # -- layout -----------------------------------------------------------------------------------

    def _panel_size(self, slide) -> tuple[float, float]:
        if slide.image is not None:
            h, w = slide.image.shape_yx
            return float(h), float(w)
        ymax, xmax = slide.points_yx.max(axis=0) + slide.spot_diameter
        return float(ymax), float(xmax)

    def apply_layout(self, *_, force: bool = False) -> None:
        """Place the panels: measured at the left, imputed to its right, one row per gene shown.
        Only moves and shows/hides existing layers (safe inside layer-list events)."""
        slide = self._slide_for_layers
        if slide is None or self.pearson is None or self._laying_out:
            return
        state = (self.layout_mode.value, self.gene.value, id(self.pearson))
        if state == self._applied and not force:
            return  # a choices reset (napari does one on every layer change) must not re-show hidden layers
        self._applied = state
        if all(get_slide(layer) is not slide for layer in self.viewer.layers):
            return  # the slide was closed
        self._laying_out = True
        try:
            h, w = self._panel_size(slide)
            gap = 0.04 * max(h, w)
            dx = w + gap
            genes = list(self.gene.choices)
            rows = genes[:MAX_GRID] if self.layout_mode.value == GRID else [self.gene.value]
            offsets = {g: i * (h + gap) for i, g in enumerate(rows)}
            for kind, x in (("qc_measured", 0.0), ("qc_imputed", dx)):
                for layer in result_layers(self.viewer, slide, kind):
                    g = layer.metadata.get("gene")
                    layer.visible = g in offsets
                    if g in offsets:
                        layer.translate = (offsets[g], x)
            panels = [(oy, x) for oy in offsets.values() for x in (0.0, dx)]
            for i, layer in enumerate(result_layers(self.viewer, slide, "qc_image")):
                if i + 1 < len(panels):
                    layer.translate = panels[i + 1]
                layer.visible = i + 1 < len(panels)
            shown = np.zeros(0, dtype=bool)
            for layer in result_layers(self.viewer, slide, "qc_labels"):
                n = len(layer.data)
                pos = np.zeros((n, 2))
                text = [""] * n
                for j, g in enumerate(rows[: n // 2]):
                    pos[2 * j] = (offsets[g], 0.0)
                    pos[2 * j + 1] = (offsets[g], dx)
                    text[2 * j] = f"{g} measured"
                    text[2 * j + 1] = f"{g} imputed  (r = {_fmt(self.pearson.get(g, np.nan))})"
                layer.data = pos
                layer.features = pd.DataFrame({"label": text})
                shown = np.array([bool(t) for t in text])
                layer.shown = shown
                layer.refresh_text()
        finally:
            self._laying_out = False

    def _on_table_selection(self) -> None:
        row = self.table.selected_row()
        if row is not None:
            g = self.table.item(row, 0).text()
            if g in self.gene.choices:
                self.gene.value = g


def _fmt(r) -> str:
    return "n/a" if r is None or not np.isfinite(r) else f"{r:.2f}"
