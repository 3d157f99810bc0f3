"""Impute widget: expression of genes the slide did not measure, from a reference ``.h5ad``
(``spgpt_core.tl.impute``, as ``spgpt impute``), one continuous overlay per gene.

torch and the analyses are imported inside the workers so napari starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton, Select
from napari.utils import notifications
from spgpt_core.errors import SpgptError
from spgpt_core.params import ImputeConfig

from . import _commands
from ._base import MappingJob, ReferenceSlideWidget
from ._choices import dynamic, set_choices
from ._layers import as_values, prune_results, result_layers, robust_limits, upsert_result
from ._reference import obs_and_genes, read_reference

if TYPE_CHECKING:
    import napari.viewer

KEY = "spgpt_imputed"
MAX_LISTED = 400
COLORMAP = "viridis"
UNITS = "log1p(counts per 10,000)"  # spgpt_core.tl.impute's scale (per 10,000 training-gene counts)


def slide_gene_names(slide) -> pd.Index:
    """The slide's gene names as the reference would name them (var_names or the chosen gene column)."""
    var = slide.adata.var
    if slide.gene_col and slide.gene_col not in ("index", "var_names") and slide.gene_col in var.columns:
        return pd.Index(var[slide.gene_col].astype(str))
    return pd.Index(slide.adata.var_names.astype(str))


class GenePicker(Container):
    """A search box over a gene list and a multi-selection that survives new searches."""

    def __init__(self, label: str = "Genes") -> None:
        self.search = LineEdit(label="Search", value="", tooltip="Part of a gene name; the list shows matches")
        self.genes = dynamic(Select, label=label, allow_multiple=True)
        self.genes.native.setMinimumHeight(140)
        self.count_label = Label(value="")
        super().__init__(widgets=[self.search, self.genes, self.count_label])
        self.margins = (0, 0, 0, 0)
        self.all: list[str] = []
        self.search.changed.connect(self.refresh)
        self.genes.changed.connect(self._count)

    def set_genes(self, genes: list[str], selected: list[str] | None = None) -> None:
        self.all = list(genes)
        self.refresh(selected=selected or [])

    def refresh(self, *_, selected: list[str] | None = None) -> None:
        keep = list(self.genes.value) if selected is None else [g for g in selected if g in set(self.all)]
        text = self.search.value.strip().upper()
        hits = [g for g in self.all if text in g.upper()] if text else self.all
        listed = keep + [g for g in hits if g not in set(keep)][:MAX_LISTED]
        set_choices(self.genes, listed, keep)
        self._count()

    def _count(self, *_) -> None:
        self.count_label.value = f"{len(self.genes.value)} selected; {len(self.all):,} genes available"

    @property
    def value(self) -> list[str]:
        return list(self.genes.value)

    @value.setter
    def value(self, genes: list[str]) -> None:
        self.refresh(selected=list(genes))


class ImputeWidget(ReferenceSlideWidget):
    config_class = ImputeConfig
    run_text = "Impute"
    job_name = "impute"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.reference = FileEdit(label="Reference", mode="r", filter="AnnData (*.h5ad)",
                                  tooltip="Reference .h5ad (single-cell or another slide) that measured the genes")
        self.missing_only = CheckBox(value=True, text="List only genes the slide did not measure")
        self.picker = GenePicker("Genes to impute")
        self.epochs, self.seed = self.mapping_controls()
        self.method = self.method_control()
        self.show_layer = dynamic(ComboBox, label="Show", tooltip="Which imputed gene is visible")
        self.scale_note = Label(value=f"Colour: 0 to the gene's 99th percentile, in {UNITS}; colourbar on the canvas")
        self.scale_note.native.setWordWrap(True)
        self.clear_button = PushButton(text="Clear imputed genes", enabled=False,
                                       tooltip="Runs add genes to those imputed before; this removes them all")
        super().__init__(viewer, [self.reference, self.reference_gene_control(), self.missing_only, self.picker,
                                  self.method, self.epochs, self.seed],
                         after=[Container(widgets=[self.show_layer, self.scale_note, self.clear_button])])
        self.clear_button.clicked.connect(self.clear)
        self.reference.changed.connect(self._on_reference)
        self.missing_only.changed.connect(self._on_reference)
        self.picker.genes.changed.connect(self.update_command)
        self.show_layer.changed.connect(self._on_show)
        self._slide_for_layers = None
        self._shown = None
        self._on_slide_changed()

    def _on_reference(self, *_) -> None:
        path = self.reference_path()
        if path is None:
            return
        self.fill_reference_gene_cols(path)
        try:
            _, genes = obs_and_genes(path)
        except SpgptError as e:
            notifications.show_error(str(e))
            self.picker.set_genes([])
            return
        slide = self.slide
        genes = list(genes)
        if self.missing_only.value and slide is not None:
            measured = set(slide_gene_names(slide).str.upper())
            genes = [g for g in genes if g.upper() not in measured]
        self.picker.set_genes(sorted(genes), selected=self.picker.value)
        self.update_command()

    def command_text(self) -> str:
        spec, device = self.model_spec()
        return _commands.impute(self.slide, spec, device, reference=self.reference_path(), genes=self.picker.value,
                                config=self.mapping_config())

    def run(self) -> None:
        genes = self.picker.value
        job = self.mapping_job_inputs("genes", genes, "Choose a reference .h5ad and at least one gene to impute.")
        if job is None:
            return
        self.controls.start(lambda progress: impute_in_worker(job, genes, progress, accumulate=True),
                            on_done=lambda r: self._done(job, r, genes), slide=job.slide, what=self.job_name)

    def _done(self, job: MappingJob, result: dict, genes: list[str]) -> None:
        if self.commit(job.slide, result, job.inputs):
            self._on_show(force=True, gene=genes[0] if genes else None)

    def clear(self) -> None:
        """Drop every imputed gene of the slide (obsm / uns and their layers): Impute starts afresh."""
        slide = self.require_slide()
        if slide is None:
            return
        if slide.busy:
            notifications.show_warning(f"'{slide.busy}' is running on {slide.name}; wait for it or cancel it first.")
            return
        for store in (slide.adata.obsm, slide.adata.uns):
            store.pop(KEY, None)
        prune_results(self.viewer, slide)
        self.render(slide)
        self.controls.status.value = f"Cleared the imputed genes of {slide.name}."

    def render(self, slide) -> None:
        """One hidden overlay per gene of ``obsm['spgpt_imputed']``; the 'Show' list offers exactly these."""
        imputed = slide.adata.obsm.get(KEY)
        self._slide_for_layers = slide
        if imputed is None:
            set_choices(self.show_layer, [], None)
            self.clear_button.enabled = False
            return
        if not isinstance(imputed, pd.DataFrame):
            genes = [str(g) for g in np.atleast_1d(slide.adata.uns.get(KEY, {}).get("genes", []))]
            imputed = pd.DataFrame(np.asarray(imputed), index=slide.adata.obs_names,
                                   columns=genes[: np.shape(imputed)[1]])
        names = as_values(slide.adata.obs_names.to_numpy())
        for g in [str(c) for c in imputed.columns]:
            v = as_values(np.asarray(imputed[g], dtype=float))
            upsert_result(self.viewer, slide, f"{slide.name} imputed: {g}", pd.DataFrame({"spot": names,
                          f"imputed {g}": v}), kind="imputed", column=f"imputed {g}", colormap=COLORMAP,
                          limits=robust_limits(v, lower=0.0), visible=False, colorbar=True,
                          extra_metadata={"gene": g, "source": ["obsm", KEY, g], "units": UNITS})
        set_choices(self.show_layer, [layer.metadata["gene"] for layer in result_layers(self.viewer, slide, "imputed")],
                    self.show_layer.value)
        self.clear_button.enabled = True

    def _on_show(self, *_, force: bool = False, gene: str | None = None) -> None:
        slide = self._slide_for_layers
        if gene is not None and gene in self.show_layer.choices:
            self.show_layer.value = gene
        if slide is None or (self.show_layer.value == self._shown and not force):
            return  # a choices reset (napari does one on every layer change) must not re-show hidden layers
        self._shown = self.show_layer.value
        for layer in result_layers(self.viewer, slide, "imputed"):
            layer.visible = layer.metadata.get("gene") == self.show_layer.value


def impute_in_worker(job: MappingJob, genes, progress, key: str = KEY, accumulate: bool = False) -> dict:
    """Read the reference, get the job's model and impute ``genes`` on a scratch copy of the slide
    (called inside a thread worker; shared by the Impute and Imputation QC widgets). Returns the staged
    ``obsm[key]`` / ``uns[key]`` (with ``accumulate``: merged with the genes imputed before) and the
    scratch AnnData."""
    from ._staging import Staged, scratch

    progress.start(0, "reading the reference")
    reference = read_reference(job.ref_path)
    progress.check()
    model, loaded = job.get_model(progress)
    from spgpt_core import tl  # torch, scanpy: only inside the worker, napari starts fast
    from spgpt_core.tl._impute import merge_imputed

    adata = job.slide.adata
    work = scratch(adata)  # the slide itself changes only in commit, after success
    tl.impute(work, reference, genes, model, config=job.config, key_added=key, gene_col=job.gene_col,
              counts_layer=job.counts_layer, device=job.model.device, progress=progress)
    if accumulate and key in adata.obsm:
        work.obsm[key], work.uns[key] = merge_imputed(adata.obsm[key], adata.uns.get(key), work.obsm[key],
                                                      work.uns[key])
    progress.check()
    return {"model": model if loaded else None, "staged": Staged.collect(work, obsm=[key], uns=[key]), "work": work}
