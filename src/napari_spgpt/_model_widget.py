"""Model widget: choose the model (shipped default, a model directory, or an untrained network) and
the device, load it, and see its configuration and how the slide's genes match its vocabulary.

torch is imported when the widget is created or a model loads, not when napari starts.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, FileEdit, Label, SpinBox, TextEdit
from spgpt_core.errors import SpgptError

from ._base import CommandBox
from ._choices import dynamic, set_choices
from ._commands import join
from ._layers import slide_choices
from ._layout import fit_when_docked
from ._state import get_state
from ._worker import JobControls

if TYPE_CHECKING:
    import napari.viewer

DEFAULT = "default (shipped with spgpt)"
DIRECTORY = "model directory (spgpt or scGPT format)"
RANDOM = "untrained network (random weights, for trying the workflow)"
AUTO_GENES = "(automatic)"
COUNTS_X = "X"


class ModelWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        # torch: when the widget is created, not when napari starts
        from spgpt_core.checkpoint.pretrained import default_model_dir

        self.viewer = viewer
        self.state = get_state(viewer)
        shipped = default_model_dir() is not None
        self.source = ComboBox(label="Model", choices=[DEFAULT, DIRECTORY, RANDOM],
                               value=DEFAULT if shipped else RANDOM)
        self.directory = FileEdit(label="Directory", mode="d", visible=False,
                                  tooltip="spgpt directory (config.json, model.safetensors, vocab.json) or scGPT "
                                          "directory (best_model.pt, args.json, vocab.json)")
        self.size = ComboBox(label="Size", choices=["tiny", "small"], value="small")
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto",
                               tooltip="auto = CUDA GPU when available, else CPU")
        self.notice = Label(value="" if shipped else
                            "This spgpt build ships no default model yet: an untrained network lets you try "
                            "every step, but its domains carry no biology. Load a trained model directory for "
                            "real analyses.")
        self.notice.native.setWordWrap(True)
        self.notice.visible = not shipped
        self.slide_combo = ComboBox(label="Slide", choices=lambda _w: slide_choices(viewer),
                                    tooltip="Report how this slide's genes match the model's vocabulary")
        self.gene_col = dynamic(ComboBox, [AUTO_GENES], label="Gene names",
                                 tooltip="var column holding gene symbols; automatic picks the one matching most")
        self.counts = dynamic(ComboBox, [COUNTS_X], label="Counts",
                              tooltip="where the slide's raw counts are: X, a layer, or .raw (spgpt expects raw "
                                      "counts; a log-normalised X gives worse results)")
        self.controls = JobControls("Load model")
        self.info = TextEdit(value="No model loaded yet.")
        self.info.read_only = True
        self.info.native.setMinimumHeight(180)
        self.command = CommandBox()
        super().__init__(widgets=[self.source, self.directory, self.size, self.seed, self.device, self.notice,
                                  self.controls, self.slide_combo, self.gene_col, self.counts, self.info,
                                  self.command])
        fit_when_docked(self)  # scrolls, in one tabbed dock with the other spgpt widgets
        self.source.changed.connect(self._on_source)
        self.controls.run_button.clicked.connect(self.load)
        self.slide_combo.changed.connect(self._on_slide)
        self.gene_col.changed.connect(self._on_gene_col)
        self.counts.changed.connect(self._on_counts)
        for w in (self.source, self.directory, self.size, self.seed, self.device):
            w.changed.connect(self._update_command)
        viewer.layers.events.inserted.connect(self._refresh_slides)
        viewer.layers.events.removed.connect(self._refresh_slides)
        self.state.model_changed.connect(self._show_info)
        self._on_source()
        self._on_slide()
        if self.state.model is not None:
            self._show_info()

    # -- form -------------------------------------------------------------------------------------

    def spec(self) -> str:
        if self.source.value == DEFAULT:
            return "default"
        if self.source.value == DIRECTORY:
            return str(self.directory.value)
        return f"random:{self.size.value}:{self.seed.value}"

    def _on_source(self, *_) -> None:
        self.directory.visible = self.source.value == DIRECTORY
        self.size.visible = self.seed.visible = self.source.value == RANDOM
        self._update_command()

    def _update_command(self, *_) -> None:
        slide = self.slide_combo.value
        parts = ["spgpt", "info", "--model", self.spec()]
        if slide is not None and slide.source and slide.kind == "h5ad":
            parts.append(slide.source)
        if slide is not None and slide.gene_col:
            parts += ["--gene-col", slide.gene_col]
        self.command.value = join(parts)

    def _refresh_slides(self, *_) -> None:
        try:
            self.slide_combo.reset_choices()
        except RuntimeError:
            return
        self._on_slide()

    def _on_slide(self, *_) -> None:
        slide = self.slide_combo.value
        cols = [AUTO_GENES]
        if slide is not None:
            var = slide.adata.var
            cols += ["var_names"] + [str(c) for c in var.columns
                                     if var[c].dtype == object or str(var[c].dtype) == "category"]
        set_choices(self.gene_col, cols, slide.gene_col if slide is not None and slide.gene_col in cols else AUTO_GENES)
        sources = [COUNTS_X]
        if slide is not None:
            sources += [str(k) for k in slide.adata.layers.keys()] + (["raw"] if slide.adata.raw is not None else [])
        current = slide.counts_layer if slide is not None and slide.counts_layer in sources else COUNTS_X
        set_choices(self.counts, sources, current)
        self._show_info()

    def _on_gene_col(self, *_) -> None:
        slide = self.slide_combo.value
        if slide is not None:
            slide.gene_col = None if self.gene_col.value == AUTO_GENES else self.gene_col.value
        self._show_info()

    def _on_counts(self, *_) -> None:
        slide = self.slide_combo.value
        if slide is not None and self.counts.value is not None:
            slide.counts_layer = None if self.counts.value == COUNTS_X else self.counts.value
        self._update_command()

    # -- loading ----------------------------------------------------------------------------------

    def load(self) -> None:
        spec, device = self.spec(), self.device.value

        def work(progress):
            from spgpt_core.checkpoint.pretrained import load_model  # torch: only inside the worker

            progress.start(0, f"loading {spec}")
            return load_model(spec, device=device)

        self.controls.start(work, on_done=lambda model: self.state.set_model(model, spec, device), what="load model")

    def _show_info(self, *_) -> None:
        try:
            self._write_info()
        except RuntimeError:  # the widget was closed; the session state outlives it
            pass

    def _write_info(self) -> None:
        model = self.state.model
        lines = []
        if model is None:
            lines.append(f"No model loaded yet; the analysis widgets will load '{self.state.spec}' "
                         f"on device '{self.state.device}' when they run.")
        else:
            desc = model.describe()
            lines.append(f"Model: {self.state.spec}  (device {model.device})")
            lines.append(json.dumps(desc, indent=1, default=str).strip("{}\n"))
        slide = self.slide_combo.value
        if slide is not None and model is not None:
            from spgpt_core.pp.vocab import resolve_genes  # spgpt_core.pp imports anndata: once a model is loaded


            try:
                match = resolve_genes(slide.adata, model.vocab, gene_col=slide.gene_col)
                lines.append(f"Genes of {slide.name}: {match.report()}")
            except SpgptError as e:
                lines.append(f"Genes of {slide.name}: {e}")
        self.info.value = "\n".join(lines)
        self._update_command()
