"""Pieces every widget shares: the slide picker, Run/Cancel/progress, the equivalent command, a
colour legend and the run record written next to the results.

torch and the analyses are imported inside the workers so napari starts fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, TextEdit
from napari.utils import notifications
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QApplication, QGridLayout, QHeaderView, QLabel, QTableWidget,
                            QTableWidgetItem, QWidget)
from spgpt_core.records import h5ad_safe

from ._layers import MISSING, slide_choices
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
        self.setVisible(False)

    def set_items(self, mapping: dict[str, str], title: str = "", counts: dict[str, int] | None = None,
                  columns: int = 2) -> None:
        while self._grid.count():
            w = self._grid.takeAt(0).widget()
            if w is not None:
                w.deleteLater()
        self.items = {k: v for k, v in mapping.items() if k != MISSING or (counts or {}).get(MISSING)}
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

    def adopt_model(self, result: dict) -> None:
        """Keep a model the worker loaded as the session's model (main thread, after the run)."""
        if result.get("model") is not None:
            self.state.set_model(result["model"], self.state.spec, self.state.device)

    def record(self, slide, params: dict, keys: list[str]) -> None:
        """Note this run (widget, parameters, command, result keys) in ``uns['spgpt_napari']``.

        The results' own records (parameters, model, versions) are in ``uns[key]``, written by
        spgpt_core; this adds how they were produced from the GUI."""
        runs = slide.adata.uns.setdefault("spgpt_napari", {})
        run_id = f"run_{len(runs):03d}"
        runs[run_id] = h5ad_safe({"widget": type(self).__name__, "job": self.job_name,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "params": params,
                                  "command": self.command_text(), "result_keys": keys})


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
        return MappingJob(self.state, slide, ref_path, params, config)

    def mapping_config(self):
        """The mapping options the widget's controls set, as the core declares them (``config_class``)."""
        return self.config_class(num_epochs=int(self.epochs.value), seed=int(self.seed.value))


@dataclass(frozen=True)
class MappingJob:
    """A deconvolution / imputation run's inputs: the worker reads these, never the widgets."""

    state: Any
    slide: Any
    ref_path: str
    params: dict
    config: Any  # spgpt_core.params.DeconvolveConfig / ImputeConfig

    @property
    def adata(self):
        return self.slide.adata

    @property
    def gene_col(self):
        return self.slide.gene_col

    @property
    def counts_layer(self):
        return self.slide.counts_layer



def load_model_in_worker(state, progress):
    """The session's model, or the session's spec loaded now (called inside a worker)."""
    from spgpt_core.checkpoint.pretrained import load_model  # torch: only inside a worker, napari starts fast


    model = state.model_for()
    if model is not None:
        return model, False
    progress.start(0, f"loading model {state.spec}")
    return load_model(state.spec, device=state.device), True
