"""Imputation QC widget: how far can imputed genes be trusted on this slide?

For genes the slide *did* measure: impute them from the reference with ``spgpt_core.tl.impute``
(which leaves requested genes out of the genes the mapping is trained on, so a gene is hidden
from its own imputation) and compare with what was measured: per-gene Pearson r
(``spgpt_core.metrics.pearson_per_gene``) in a table, and the measured and imputed maps next to
each other, right of the tissue (one gene side by side, or a grid of genes). Measured and imputed
share a gene's colour scale. Every panel is in one Points layer (titles in a second): a re-run or a
new gene updates those two in place, so the viewer never waits on adding or removing dozens of layers.

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
from qtpy.QtCore import QTimer
from spgpt_core.errors import SpgptError
from spgpt_core.params import ImputeConfig

from . import _commands
from ._base import ResultTable, ReferenceSlideWidget, add_native
from ._choices import dynamic, set_choices
from ._impute_widget import COLORMAP, UNITS, GenePicker, impute_in_worker, slide_gene_names
from ._layers import KIND_KEY, RESULT_KEY, apply_continuous, as_values, result_layers, robust_limits, upsert_result
from ._reference import obs_and_genes

if TYPE_CHECKING:
    import napari.viewer

KEY = "spgpt_imputed_qc"
SIDE = "side by side (one gene)"
GRID = "grid (all genes)"
MAX_GRID = 8
STEP_MS = 30


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
        super().__init__(viewer, [self.reference, self.reference_gene_control(), self.picker, self.n_random,
                                  self.pick_button, self.epochs, self.seed],
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
        self.view: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # gene -> (measured, imputed) of the drawn spots
        self.limits: dict[str, float] = {}
        self.view_ready = False  # the last run's panels are drawn and framed
        self._titles = None  # (positions, features) of the panel titles last drawn
        self._on_slide_changed()

    # -- form -------------------------------------------------------------------------------------

    def _on_reference(self, *_) -> None:
        path, slide = self.reference_path(), self.slide
        if path is None or slide is None:
            return
        self.fill_reference_gene_cols(path)
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
            work_ad = result.pop("work")
            qc = imputation_qc(work_ad, KEY, gene_col=job.gene_col, counts_layer=job.counts_layer)
            # the staged record is this dict: the Pearson r are committed with it
            work_ad.uns[KEY]["pearson"] = {str(k): float(v) for k, v in qc["pearson"].items()}
            progress.check()
            return {**result, "qc": qc}

        self.controls.start(work, on_done=lambda res: self._done(job, res), slide=job.slide, what=self.job_name)

    def _done(self, job, res: dict) -> None:
        qc = res["qc"]
        r: pd.Series = qc["pearson"]
        order = r.sort_values(ascending=False, na_position="last").index.tolist()
        # what the panels draw, prepared once per run: measured and imputed per gene for the drawn spots,
        # with one colour scale per gene shared by both (0 to the larger 99th percentile)
        slide = job.slide
        self.view = {g: (as_values(qc["measured"][g].to_numpy(dtype=float)),
                         as_values(qc["imputed"][g].to_numpy(dtype=float))) for g in order}
        self.limits = {g: _shared_limit(*self.view[g]) for g in order}
        self.pearson = r
        self.expressing = qc["expressing"]
        if not self.commit(slide, res, job.inputs):
            return
        self.table.set_rows([[g, _fmt(r[g]), f"{qc['expressing'][g]:.0f}"] for g in order])
        med = float(np.nanmedian(r.to_numpy())) if np.isfinite(r.to_numpy()).any() else float("nan")
        self.summary.value = (f"Median Pearson r = {med:.2f} over {len(order)} held-out genes "
                              f"({int(np.isfinite(r.to_numpy()).sum())} with a defined r). Genes near 0 or below "
                              "are not reproduced from the reference on this slide: treat imputed genes like them "
                              "with caution." + (f" The grid shows the best {MAX_GRID}." if len(order) > MAX_GRID
                                                 else ""))
        self._laying_out = True  # one drawing below, not one per changed choice
        try:
            set_choices(self.gene, order, order[0])
        finally:
            self._laying_out = False
        # the panels are drawn in the next turns of the event loop, one short step each, so napari can
        # repaint and react in between (adding a layer alone can take a few tenths of a second)
        self.view_ready = False
        self._steps([self._add_panels, lambda: self.apply_layout(force=True), self._add_titles, self._colorbar,
                     self._frame])

    def _steps(self, steps: list) -> None:
        # 30 ms apart: napari repaints between two steps (a first paint of new text or a colourbar is
        # slow on its own: vispy renders the glyphs then)
        if steps:
            QTimer.singleShot(STEP_MS, lambda: (steps[0](), self._steps(steps[1:])))

    def _add_panels(self) -> None:
        """The panels' Points layer on a run's first drawing, with one placeholder point (adding a layer
        is slow enough for a step of its own; the colourbar comes later, in _colorbar)."""
        slide = self._slide_for_layers
        if slide is None or slide.closed or self._qc_layers("qc_panels"):
            return
        feats = pd.DataFrame({"gene": [""], "panel": [""], "value": [0.0]})
        upsert_result(self.viewer, slide, f"{slide.name} QC", feats, kind="qc_panels", column="value",
                      colormap=COLORMAP, limits=(0.0, 1.0), data=slide.points_yx[:1],
                      extra_metadata={"source": ["obsm", KEY]})

    def _colorbar(self) -> None:
        for layer in self._qc_layers("qc_panels"):
            layer.face_colorbar.visible = True

    def _frame(self) -> None:
        """Frame the view on the panels (the last step of drawing a run's results)."""
        panels = self._qc_layers("qc_panels")
        if panels:
            self.viewer.fit_to_view(layers=panels)
        self.view_ready = True

    def _qc_layers(self, kind: str) -> list:
        slide = self._slide_for_layers
        return [] if slide is None or slide.closed else result_layers(self.viewer, slide, kind)

    def render(self, slide) -> None:
        self._slide_for_layers = slide

    # -- layout -----------------------------------------------------------------------------------

    def _panel_size(self, slide) -> tuple[float, float]:
        if slide.image is not None:
            h, w = slide.image.shape_yx
            return float(h), float(w)
        ymax, xmax = slide.points_yx.max(axis=0) + slide.spot_diameter
        return float(ymax), float(xmax)

    def apply_layout(self, *_, force: bool = False) -> None:
        """Draw the panels: a row per gene shown, measured at the left, imputed to its right, all in one
        Points layer to the right of the tissue (titles in one text layer). Updates the two layers in
        place: a new gene or layout never adds or removes layers."""
        slide = self._slide_for_layers
        if slide is None or self.pearson is None or self._laying_out or not self.view:
            return
        state = (self.layout_mode.value, self.gene.value, id(self.pearson))
        if state == self._applied and not force:
            return  # a choices reset (napari does one on every layer change) must not redraw
        self._applied = state
        if slide.closed:
            return
        self._laying_out = True
        try:
            self._draw(slide)
        finally:
            self._laying_out = False

    def _draw(self, slide) -> None:
        h, w = self._panel_size(slide)
        gap = 0.08 * max(h, w)  # room for the titles above each panel
        x0 = w + gap  # right of the tissue: the slide's own layers stay visible and unobstructed
        grid = self.layout_mode.value == GRID
        rows = [g for g in self.gene.choices][:MAX_GRID] if grid else [self.gene.value]
        pos, value, gene_col, what_col, titles, title_pos = [], [], [], [], [], []
        for i, g in enumerate(rows):
            oy = i * (h + gap)
            lim = self.limits[g]
            for j, (what, v) in enumerate(zip(("measured", "imputed"), self.view[g], strict=True)):
                ox = x0 + j * (w + gap)
                pos.append(slide.points_yx + (oy, ox))
                # the grid colours every gene on its own scale: values as a fraction of the gene's shared limit
                value.append(v / lim if grid else v)
                gene_col += [g] * len(v)
                what_col += [what] * len(v)
                # short on the left (the imputed panel's title follows at the panel's width), details right
                titles.append(f"{g} measured" if not j else
                              f"imputed  r = {_fmt(self.pearson.get(g, np.nan))}  (scale 0-{lim:.2g})")
                title_pos.append((oy - 0.02 * h, ox))
        feats = pd.DataFrame({"gene": gene_col, "panel": what_col, "value": np.concatenate(value)})
        limits = (0.0, 1.0) if grid else (0.0, self.limits[rows[0]])
        name = f"{slide.name} QC " + ("grid (each gene scaled to its own maximum)" if grid
                                      else f"{rows[0]} ({UNITS})")
        panels = result_layers(self.viewer, slide, "qc_panels")
        if not panels:  # the layer is added empty by _add_panels, a step of its own; draw into it next step
            return
        layer = panels[0]
        layer.data = np.concatenate(pos)
        layer.name = name
        layer.features = feats
        apply_continuous(layer, "value", COLORMAP, limits)
        layer.visible = True
        self._titles = (np.asarray(title_pos), pd.DataFrame({"label": titles}))
        labels = result_layers(self.viewer, slide, "qc_labels")
        if labels:
            labels[0].data, labels[0].features = self._titles
            labels[0].refresh_text()

    def _add_titles(self) -> None:
        """The panel titles' text layer, on a run's first drawing (its own step, see _steps)."""
        slide = self._slide_for_layers
        if slide is None or slide.closed or self._titles is None or self._qc_layers("qc_labels"):
            return
        positions, features = self._titles
        text = {"string": "{label}", "color": "white", "size": 10, "anchor": "lower_left"}
        self.viewer.add_points(positions, features=features, size=0.01, face_color="transparent", border_width=0,
                               name=f"{slide.name} QC titles", text=text,
                               metadata={RESULT_KEY: slide.uid, KIND_KEY: "qc_labels", "source": ["obsm", KEY]})

    def _on_table_selection(self) -> None:
        row = self.table.selected_row()
        if row is not None:
            g = self.table.item(row, 0).text()
            if g in self.gene.choices:
                self.gene.value = g


def _shared_limit(measured: np.ndarray, imputed: np.ndarray) -> float:
    """Upper end of a gene's colour scale: the larger 99th percentile of its measured and imputed values."""
    hi = max(robust_limits(measured, lower=0.0)[1], robust_limits(imputed, lower=0.0)[1])
    return float(hi) if hi > 0 else 1.0


def _fmt(r) -> str:
    return "n/a" if r is None or not np.isfinite(r) else f"{r:.2f}"
