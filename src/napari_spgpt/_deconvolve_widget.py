"""Deconvolve widget: cell-type proportions of every spot from a labelled reference ``.h5ad``
(``spgpt_core.tl.deconvolve``, as ``spgpt deconvolve``), drawn as one continuous layer per cell
type and a categorical layer of the dominant type with a legend.

torch and the analyses are imported inside the workers so napari starts fast.
"""


from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, RadioButtons
from napari.utils import notifications
from spgpt_core.errors import SpgptError
from spgpt_core.params import DeconvolveConfig

from . import _commands
from ._base import Legend, ReferenceSlideWidget, add_native
from ._choices import dynamic, set_choices
from ._layers import (as_values, base_layer, categorical, categorical_colors, result_layers, robust_limits, set_limits,
                      source_values, upsert_result)
from ._reference import label_columns, obs_and_genes, read_reference

if TYPE_CHECKING:
    import napari.viewer

KEY = "spgpt_proportions"
DOMINANT_KEY = "spgpt_dominant_type"
PER_TYPE = "0 to 99th percentile, per type"
SHARED = "0 to 1, same for every type"
DOMINANT = "dominant type"


class DeconvolveWidget(ReferenceSlideWidget):
    config_class = DeconvolveConfig
    run_text = "Deconvolve"
    job_name = "deconvolve"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.reference = FileEdit(label="Reference", mode="r", filter="AnnData (*.h5ad)",
                                  tooltip="Single-cell reference .h5ad with a cell-type column")
        self.celltype_key = dynamic(ComboBox, label="Cell-type column")
        self.epochs, self.seed = self.mapping_controls()
        self.method = self.method_control()
        self.scale = RadioButtons(label="Colour scale", choices=[PER_TYPE, SHARED], value=PER_TYPE)
        self.show_layer = dynamic(ComboBox, [DOMINANT], label="Show", tooltip="Which result layer is visible")
        self.legend = Legend()
        extras = Container(widgets=[self.show_layer], labels=True)
        extras.margins = (0, 0, 0, 0)
        super().__init__(viewer, [self.reference, self.celltype_key, self.reference_gene_control(), self.method,
                                  self.epochs, self.seed, self.scale],
                         after=[extras])
        add_native(extras, self.legend)
        self.reference.changed.connect(self._on_reference)
        self.scale.changed.connect(self._restyle)
        self.show_layer.changed.connect(self._on_show)
        self._slide_for_layers = None
        self._shown = None
        self._on_slide_changed()

    # -- form -------------------------------------------------------------------------------------

    def _on_reference(self, *_) -> None:
        path = self.reference.value
        if path is None or str(path) in ("", "."):
            return
        self.fill_reference_gene_cols(self.reference_path())
        try:
            obs, _ = obs_and_genes(path)
        except SpgptError as e:
            notifications.show_error(str(e))
            set_choices(self.celltype_key, [])
            return
        columns = label_columns(obs)
        if not columns:  # say why the box stays empty
            notifications.show_warning(
                f"The reference has no column usable as cell-type labels (text, categories or integer codes with "
                f"2 to 500 values); its obs columns: {', '.join(map(str, obs.columns)) or 'none'}.")
        set_choices(self.celltype_key, columns)
        self.update_command()

    def command_text(self) -> str:
        spec, device = self.model_spec()
        return _commands.deconvolve(self.slide, spec, device, reference=self.reference_path(),
                                    celltype_key=self.celltype_key.value, config=self.mapping_config())

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        key = self.celltype_key.value
        job = self.mapping_job_inputs("celltype_key", key, "Choose a reference .h5ad and its cell-type column first.")
        if job is None:
            return

        def work(progress):
            from ._staging import Staged, scratch

            progress.start(0, "reading the reference")
            reference = read_reference(job.ref_path)
            progress.check()
            model, loaded = job.get_model(progress)
            from spgpt_core import tl  # torch, scanpy: only inside the worker, napari starts fast

            work_ad = scratch(job.slide.adata)  # the slide itself changes only in commit, after success
            tl.deconvolve(work_ad, reference, key, model, config=job.config, key_added=KEY,
                          dominant_key=DOMINANT_KEY, gene_col=job.gene_col, counts_layer=job.counts_layer,
                          device=job.model.device, progress=progress)
            progress.check()
            staged = Staged.collect(work_ad, obs=[DOMINANT_KEY], obsm=[KEY], uns=[KEY, f"{DOMINANT_KEY}_colors"])
            return {"model": model if loaded else None, "staged": staged}

        self.controls.start(work, on_done=lambda r: self.commit(job.slide, r, job.inputs), slide=job.slide,
                            what=self.job_name)

    def render(self, slide) -> None:
        """The dominant-type layer, one proportion layer per cell type and the legend, from the AnnData."""
        adata = slide.adata
        if KEY not in adata.obsm or DOMINANT_KEY not in adata.obs:
            return
        props = adata.obsm[KEY]
        if not isinstance(props, pd.DataFrame):
            props = pd.DataFrame(np.asarray(props), index=adata.obs_names)
        types = [str(c) for c in props.columns]
        names = as_values(adata.obs_names.to_numpy())
        values = np.asarray(props, dtype=float)
        dom_col = DOMINANT_KEY
        dominant = adata.obs[dom_col].values
        dom_cats = list(pd.Categorical(dominant).categories)
        mapping = categorical_colors(dom_cats, adata.uns.get(f"{dom_col}_colors"))
        dom_values = categorical(as_values(pd.Categorical(dominant)), categories=dom_cats)
        upsert_result(self.viewer, slide, f"{slide.name} dominant type", pd.DataFrame({"spot": names,
                      "dominant_type": dom_values}), kind="dominant", column="dominant_type",
                      categorical_map=mapping, extra_metadata={"source": ["obs", dom_col]})
        all_values = as_values(values)
        for j, t in enumerate(types):
            feats = pd.DataFrame({"spot": names, "proportion": all_values[:, j]})
            upsert_result(self.viewer, slide, f"{slide.name} proportion: {t}", feats, kind="proportion",
                          column="proportion", colormap="viridis", limits=self._limits(all_values[:, j]),
                          visible=False, extra_metadata={"cell_type": t, "source": ["obsm", KEY, t]}, colorbar=True)
        base = base_layer(self.viewer, slide)
        if base is not None and slide.raster is None:  # a raster's overlay layer hovers it (its features)
            feats = base.features.copy()
            feats["dominant_type"] = dom_values
            base.features = feats
        counts = {str(k): int(v) for k, v in pd.Series(categorical(dominant)).value_counts().items()}  # codes: fast at 1M
        self.legend.set_items(mapping, title="Dominant cell type", counts=counts)
        self._slide_for_layers = slide
        set_choices(self.show_layer, [DOMINANT, *types], DOMINANT)
        self._on_show(force=True)

    def _limits(self, v) -> tuple[float, float]:
        if self.scale.value == SHARED:
            return (0.0, 1.0)
        lo, hi = robust_limits(v, lower=0.0)
        return (0.0, max(hi, 0.05))

    def _restyle(self, *_) -> None:
        slide = self._slide_for_layers
        if slide is None:
            return
        for layer in result_layers(self.viewer, slide, "proportion"):
            set_limits(layer, self._limits(source_values(slide.adata, layer.metadata["source"])))

    def _on_show(self, *_, force: bool = False) -> None:
        slide = self._slide_for_layers
        if slide is None or (self.show_layer.value == self._shown and not force):
            return  # a choices reset (napari does one on every layer change) must not re-show hidden layers
        self._shown = self.show_layer.value
        choice = self.show_layer.value
        for layer in result_layers(self.viewer, slide, "dominant"):
            layer.visible = choice == DOMINANT
        for layer in result_layers(self.viewer, slide, "proportion"):
            layer.visible = layer.metadata.get("cell_type") == choice
