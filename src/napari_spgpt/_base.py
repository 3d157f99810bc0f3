"""Pieces every widget shares: the slide picker, Run/Cancel/progress, the equivalent command, a
colour legend and the run record written next to the results.

torch and the analyses are imported inside the workers so napari starts fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox, TextEdit
from napari.utils import notifications
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QApplication, QGridLayout, QHeaderView, QLabel, QTableWidget,
                            QTableWidgetItem, QWidget)
from spgpt_core.errors import SpgptError
from spgpt_core.records import h5ad_safe

from . import _guard as guard
from ._layout import fit_when_docked
from ._choices import dynamic, set_choices
from ._reference import gene_name_columns
from ._layers import MISSING, prune_results, slide_choices
from ._state import get_state
from ._worker import JobControls

if TYPE_CHECKING:
    import napari


def add_native(container: Container, widget: QWidget) -> None:
    """Append a plain Qt widget (legend, plot) to a magicgui container."""
    container.native.layout().addWidget(widget)


class CommandBox(Container):
    """'Show command' toggle + read-only text of the equivalent ``spgpt`` command line(s)."""

    def __init__(self) -> None:
        self.toggle = CheckBox(value=False, text="Show equivalent spgpt command")
        self.text = TextEdit(value="")
        self.text.read_only = True
        self.text.visible = False
        self.text.native.setMaximumHeight(110)
        self.copy_button = PushButton(text="Copy command", visible=False)
        super().__init__(widgets=[self.toggle, self.text, self.copy_button], labels=False)
        self.margins = (0, 0, 0, 0)
        self.toggle.changed.connect(self._toggle)
        self.copy_button.clicked.connect(self._copy)

    def _toggle(self, on: bool) -> None:
        self.text.visible = on
        self.copy_button.visible = on

    def _copy(self) -> None:
        QApplication.clipboard().setText(self.text.value)

    @property
    def value(self) -> str:
        return self.text.value

    @value.setter
    def value(self, text: str) -> None:
        self.text.value = text


class Legend(QWidget):
    """Colour swatches with labels, for categorical overlays (napari has no categorical legend)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(6)
        self._grid.setVerticalSpacing(2)
        self.items: dict[str, str] = {}
        self.title = ""
        self.setVisible(False)

    def set_items(self, mapping: dict[str, str], title: str = "", counts: dict[str, int] | None = None,
                  columns: int = 2) -> None:
        while self._grid.count():
            w = self._grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.items = {k: v for k, v in mapping.items() if k != MISSING or (counts or {}).get(MISSING)}
        self.title = title
        row = 0
        if title:
            head = QLabel(f"<b>{title}</b>")
            self._grid.addWidget(head, 0, 0, 1, 2 * columns)
            row = 1
        for i, (label, color) in enumerate(self.items.items()):
            r, c = row + i // columns, 2 * (i % columns)
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #444; border-radius: 2px;")
            text = label if counts is None else f"{label} ({counts.get(label, 0):,})"
            lab = QLabel(text)
            lab.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            self._grid.addWidget(swatch, r, c)
            self._grid.addWidget(lab, r, c + 1)
        self.setVisible(bool(self.items))


class ResultTable(QTableWidget):
    """A read-only table of text cells, one row selectable at a time (QC results)."""

    def __init__(self, columns: list[str], parent=None) -> None:
        super().__init__(0, len(columns), parent)
        self.columns = list(columns)
        self.setHorizontalHeaderLabels(self.columns)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setVisible(False)
        self.setMinimumHeight(160)

    def set_rows(self, rows: list[list[str]]) -> None:
        self.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                self.setItem(i, j, QTableWidgetItem(str(text)))

    def to_dataframe(self):
        return pd.DataFrame([[self.item(i, j).text() for j in range(self.columnCount())]
                             for i in range(self.rowCount())], columns=self.columns)

    def selected_row(self) -> int | None:
        rows = {i.row() for i in self.selectedItems()}
        return rows.pop() if len(rows) == 1 else None


AUTO_GENES = "(automatic)"


class SlideWidget(Container):
    """Base: a slide combo box kept in sync with the viewer's slide layers, job controls and the
    equivalent command. Subclasses add their parameters between the two."""

    run_text = "Run"
    job_name = "job"

    def __init__(self, viewer: napari.Viewer, params: list, *, after: list | None = None,
                 run_tooltip: str | None = None) -> None:
        self.viewer = viewer
        self.state = get_state(viewer)
        self.slide_combo = ComboBox(label="Slide", choices=self._slide_choices,
                                    tooltip="Spots layer of a slide opened with spgpt (File > Open, or sample data)")
        self.controls = JobControls(self.run_text, tooltip=run_tooltip)
        self.command = CommandBox()
        super().__init__(widgets=[self.slide_combo, *params, self.controls, *(after or []), self.command])
        self.controls.run_button.clicked.connect(self.run)
        self.slide_combo.changed.connect(self._on_slide_changed)
        viewer.layers.events.inserted.connect(self._refresh_slides)
        viewer.layers.events.removed.connect(self._refresh_slides)
        guard.install(viewer, self.state)  # removing a slide's spots layer asks before results are lost
        fit_when_docked(self)  # scrolls, in one tabbed dock with the other spgpt widgets
        self.state.model_changed.connect(self.update_command)
        for w in params:
            if hasattr(w, "changed"):
                w.changed.connect(self.update_command)

    # -- slides ---------------------------------------------------------------------------------

    def _slide_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return slide_choices(self.viewer)

    def _refresh_slides(self, event=None) -> None:
        try:
            self.slide_combo.reset_choices()
        except RuntimeError:  # widget already deleted while the viewer closes
            return
        self._on_slide_changed()

    @property
    def slide(self):
        return self.slide_combo.value

    def _on_slide_changed(self, *_: Any) -> None:
        self.update_command()

    def require_slide(self):
        slide = self.slide
        if slide is None:
            notifications.show_warning("Open a slide first (File > Open a .zarr / .h5ad, or File > Open Sample > spgpt).")
        return slide

    # -- command / records -----------------------------------------------------------------------

    def command_text(self) -> str:  # pragma: no cover - overridden
        return ""

    def update_command(self, *_: Any) -> None:
        try:
            self.command.value = self.command_text()
        except Exception as e:  # noqa: BLE001 - never fail on a half-filled form
            self.command.value = f"(command not available: {e})"

    def model_spec(self) -> tuple[str, str]:
        return self.state.spec, self.state.device

    def adopt_model(self, result: dict, choice: ModelChoice) -> None:
        """Keep a model the worker loaded as the session's model (main thread, after the run), unless the
        Model widget chose another one meanwhile: then the session keeps that one, under its own name."""
        model = result.get("model")
        state = self.state
        if model is not None and state.model is None and (state.spec, state.device) == (choice.spec, choice.device):
            state.set_model(model, choice.spec, choice.device)

    def commit(self, slide, result: dict, job: JobInputs) -> bool:
        """Apply a finished job's staged results to the slide's AnnData and draw them from it (GUI thread).

        The single place where a job changes a slide; False (nothing applied) when the slide was closed
        while the job ran."""
        if slide.closed:
            self.controls.status.value = f"{slide.name} was closed while {self.job_name} ran; its results were discarded."
            notifications.show_warning(self.controls.status.value)
            return False
        result["staged"].apply(slide.adata)
        slide.unsaved = list(dict.fromkeys([*slide.unsaved, self.job_name]))
        prune_results(self.viewer, slide)  # no layer may show what the AnnData no longer holds
        self.adopt_model(result, job.model)
        self.record(slide, job.params, result["staged"].keys(), job.command)
        self.render(slide)
        self.update_command()
        return True

    def render(self, slide) -> None:  # pragma: no cover - overridden
        """Draw (add / update / remove) this widget's result layers from ``slide.adata``."""

    def job_inputs(self, slide, params: dict) -> JobInputs:
        """The model, parameters and command of a run, fixed when it starts (GUI thread)."""
        return JobInputs(ModelChoice(self.state.model, self.state.spec, self.state.device), dict(params),
                         self.command_text())

    def record(self, slide, params: dict, keys: list[str], command: str) -> None:
        """Note this run (widget, parameters, command, result keys) in ``uns['spgpt_napari']``.

        The results' own records (parameters, model, versions) are in ``uns[key]``, written by
        spgpt_core; this adds how they were produced from the GUI."""
        runs = slide.adata.uns.setdefault("spgpt_napari", {})
        run_id = f"run_{len(runs):03d}"
        runs[run_id] = h5ad_safe({"widget": type(self).__name__, "job": self.job_name,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": params,
                                  "command": command, "result_keys": list(keys)})


class ReferenceSlideWidget(SlideWidget):
    """A slide widget that also needs a reference ``.h5ad`` (``self.reference``, a FileEdit).

    Subclasses create ``self.reference`` before calling ``super().__init__`` and implement
    ``_on_reference`` (re-read the reference's columns / genes). A slide opened with a
    reference (the sample data) fills the field in."""

    def reference_path(self) -> str | None:
        v = self.reference.value
        return None if v is None or str(v) in ("", ".") else str(v)

    def _on_slide_changed(self, *_: Any) -> None:
        slide = self.slide
        if slide is not None and slide.reference and self.reference_path() is None:
            self.reference.value = slide.reference
        self._on_reference()
        super()._on_slide_changed()

    def _on_reference(self, *_: Any) -> None:  # pragma: no cover - overridden
        pass

    def reference_gene_control(self) -> ComboBox:
        """'Reference gene names': the reference's var column with gene symbols (automatic by default)."""
        self.reference_gene_col = dynamic(ComboBox, [AUTO_GENES], label="Reference gene names",
                                          tooltip="var column of the reference holding gene symbols comparable "
                                                  "to the slide's; automatic compares var_names and every text column")
        return self.reference_gene_col

    def fill_reference_gene_cols(self, path: str | None) -> None:
        cols = []
        if path is not None:
            try:
                cols = gene_name_columns(path)
            except SpgptError:
                cols = []
        set_choices(self.reference_gene_col, [AUTO_GENES, "var_names", *cols])

    def mapping_job_inputs(self, choice: str, value, missing: str) -> MappingJob | None:
        """Everything a reference-mapping worker needs, captured on the GUI thread, or None after telling
        the user what is missing. ``choice``/``value``: the widget's own required input (cell-type column,
        genes); the widget has ``epochs`` and ``seed`` spin boxes."""
        slide = self.require_slide()
        if slide is None:
            return None
        ref_path = self.reference_path()
        if ref_path is None or not value:
            notifications.show_warning(missing)
            return None
        config = self.mapping_config()
        params = {"reference": ref_path, choice: value, "num_epochs": config.num_epochs, "seed": config.seed,
                  "model": self.state.spec, "device": self.state.device}
        return MappingJob(self.job_inputs(slide, params), slide, ref_path, config)

    def mapping_config(self):
        """The mapping options the widget's controls set, as the core declares them (``config_class``)."""
        ref_col = self.reference_gene_col.value
        method = getattr(self, "method", None)
        return self.config_class(num_epochs=int(self.epochs.value), seed=int(self.seed.value),
                                 reference_gene_col=None if ref_col in (None, AUTO_GENES) else ref_col,
                                 **({"method": method.value} if method is not None else {}))

    def _declared(self, name: str):
        from dataclasses import fields

        return next(f for f in fields(self.config_class) if f.name == name)

    def method_control(self):
        """The mapping method box, its choices and default as the core declares them (``config_class``)."""
        f = self._declared("method")
        return ComboBox(label="Method", choices=list(f.metadata["choices"]), value=f.default,
                        tooltip=f.metadata["help"])

    def mapping_controls(self) -> tuple:
        """The mapping-epochs and seed boxes, their defaults and help as the core declares them."""
        e, s = self._declared("num_epochs"), self._declared("seed")
        epochs = SpinBox(label="Mapping epochs", value=e.default, min=1, max=100_000, step=100,
                         tooltip=f"{e.metadata['help']} (default {e.default})")
        seed = SpinBox(label="Seed", value=s.default, min=0, max=2**31 - 1, tooltip=s.metadata["help"])
        return epochs, seed


@dataclass(frozen=True)
class ModelChoice:
    """The session's model when a job started. The job uses and records this one, whatever the Model
    widget loads while it runs."""

    model: Any  # spgpt_core.SpGPT, or None: the worker loads ``spec``
    spec: str
    device: str

    def get(self, progress):
        """(model, loaded here?), inside the worker."""
        if self.model is not None:
            return self.model, False
        from spgpt_core.checkpoint.pretrained import load_model  # torch: only inside a worker, napari starts fast

        progress.start(0, f"loading model {self.spec}")
        return load_model(self.spec, device=self.device), True


@dataclass(frozen=True)
class JobInputs:
    """What a run records, captured on the GUI thread when it starts."""

    model: ModelChoice
    params: dict
    command: str


@dataclass(frozen=True)
class MappingJob:
    """A deconvolution / imputation run's inputs: the worker reads these, never the widgets."""

    inputs: JobInputs
    slide: Any
    ref_path: str
    config: Any  # spgpt_core.params.DeconvolveConfig / ImputeConfig

    @property
    def model(self) -> ModelChoice:
        return self.inputs.model

    def get_model(self, progress):
        """(model, loaded here?) in the worker; the spec alone, unloaded, when the mapping uses no
        embeddings (imputation's default): no model load, no torch import for nothing."""
        if not self.config.may_use_embeddings:
            return self.model.model if self.model.model is not None else self.model.spec, False
        return self.model.get(progress)

    @property
    def params(self) -> dict:
        return self.inputs.params

    @property
    def gene_col(self):
        return self.slide.gene_col

    @property
    def counts_layer(self):
        return self.slide.counts_layer
