"""Embed & domains widget: spot embeddings (zero-shot, or fine-tune then embed), spatial domains by
number or resolution, drawn as categorical colours over the tissue with a legend and a UMAP view.

Runs ``spgpt_core.tl.domains``, the function behind ``spgpt domains`` (its equivalent command);
the UMAP is a display of the embedding only. torch and the analyses are imported inside the workers
so napari starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, RadioButtons, SpinBox
from spgpt_core.params import DEFAULT_N_TOP_GENES, DomainsConfig

from . import _commands
from ._base import Legend, SlideWidget, add_native, load_model_in_worker
from ._layers import base_layer, categorical, categorical_colors, drawn, upsert_result
from ._umap import UmapCanvas, umap_2d

if TYPE_CHECKING:
    import napari.viewer

ZERO_SHOT = "zero-shot"
FINETUNE = "fine-tune, then embed"
BY_NUMBER = "number of domains"
BY_RESOLUTION = "resolution"
EMBED_KEY = "X_spgpt"
DOMAIN_KEY = "spgpt_domain"


class EmbedWidget(SlideWidget):
    run_text = "Embed && find domains"
    job_name = "embed & domains"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.mode = RadioButtons(label="Embedding", choices=[ZERO_SHOT, FINETUNE], value=ZERO_SHOT,
                                 orientation="horizontal",
                                 tooltip="Fine-tuning adapts the model to this slide first (slower).")
        self.epochs = SpinBox(label="Fine-tune epochs", value=1, min=1, max=200, visible=False)
        self.by = RadioButtons(label="Domains by", choices=[BY_NUMBER, BY_RESOLUTION], value=BY_NUMBER,
                               orientation="horizontal")
        self.n_domains = SpinBox(label="Number of domains", value=7, min=2, max=60)
        self.resolution = FloatSpinBox(label="Resolution", value=1.0, min=0.01, max=10.0, step=0.1, visible=False)
        self.method = ComboBox(label="Method", choices=["leiden", "louvain", "kmeans"], value="leiden",
                               tooltip="Leiden searches the resolution giving that number; k-means gives it exactly")
        self.smooth_k = SpinBox(label="Spatial smoothing (k)", value=6, min=0, max=50,
                                tooltip="Majority vote over each spot's k nearest spots (0 = off)")
        self.n_top_genes = SpinBox(label="Most variable genes", value=DEFAULT_N_TOP_GENES, min=0, max=100_000, step=500,
                                   tooltip="The model sees this many highly variable genes (0 = every matched "
                                           "gene); smaller panels are used whole")
        self.batch_size = SpinBox(label="Batch size", value=64, min=1, max=4096)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.drop_empty = CheckBox(value=True, text="Leave out spots that express no model gene")
        self.umap = CheckBox(value=True, text="Show a UMAP of the embedding")
        self.legend = Legend()
        self.umap_canvas = None
        extras = Container(widgets=[], labels=False)
        extras.margins = (0, 0, 0, 0)
        super().__init__(viewer, [self.mode, self.epochs, self.by, self.n_domains, self.resolution, self.method,
                                  self.smooth_k, self.n_top_genes, self.batch_size, self.seed, self.drop_empty,
                                  self.umap],
                         after=[extras])
        add_native(extras, self.legend)
        self._extras = extras
        self.mode.changed.connect(self._on_mode)
        self.by.changed.connect(self._on_by)
        self.update_command()

    def _on_mode(self, *_) -> None:
        self.epochs.visible = self.mode.value == FINETUNE

    def _on_by(self, *_) -> None:
        self.n_domains.visible = self.by.value == BY_NUMBER
        self.resolution.visible = self.by.value == BY_RESOLUTION

    def cluster_args(self) -> dict:
        if self.by.value == BY_NUMBER or self.method.value == "kmeans":
            return {"n_clusters": int(self.n_domains.value), "resolution": None}
        return {"n_clusters": None, "resolution": float(self.resolution.value)}

    def config(self) -> DomainsConfig:
        """The controls' settings, as the core declares them (tl.domains and spgpt domains take the same)."""
        return DomainsConfig(**self.cluster_args(), method=self.method.value, smooth_k=int(self.smooth_k.value),
                             n_top_genes=int(self.n_top_genes.value),
                             finetune_epochs=int(self.epochs.value) if self.mode.value == FINETUNE else 0,
                             batch_size=int(self.batch_size.value), drop_empty=bool(self.drop_empty.value),
                             seed=int(self.seed.value))

    def params(self) -> dict:
        return {"mode": self.mode.value, **self.config().as_dict(), "model": self.state.spec,
                "device": self.state.device}

    def command_text(self) -> str:
        spec, device = self.model_spec()
        return _commands.domains(self.slide, spec, device, self.config())

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        slide = self.require_slide()
        if slide is None:
            return
        config = self.config()
        p = self.params()
        state = self.state
        want_umap = bool(self.umap.value)
        adata = slide.adata
        gene_col, counts_layer = slide.gene_col, slide.counts_layer

        def work(progress):
            # torch, scanpy: only inside the worker, napari starts fast
            from spgpt_core import tl
            from spgpt_core.tl._cluster import check_domains_request

            # checked before the model is loaded; tl.domains checks again, at no cost
            check_domains_request(adata, n_clusters=config.n_clusters, resolution=config.resolution,
                                  method=config.method)
            model, loaded = load_model_in_worker(state, progress)
            progress.check()
            tl.domains(adata, model, config=config, gene_col=gene_col, counts_layer=counts_layer, device=state.device,
                       key_added=DOMAIN_KEY, embedding_key=EMBED_KEY, progress=progress)
            xy = None
            if want_umap:
                progress.check()
                progress.start(0, "UMAP")
                xy = umap_2d(adata.obsm[EMBED_KEY], seed=config.seed)
            return {"model": model if loaded else None, "umap": xy}

        self.controls.start(work, on_done=lambda r: self._show(slide, r, p), slide=slide, what=self.job_name)

    def _show(self, slide, result: dict, params: dict) -> None:
        self.adopt_model(result)
        adata = slide.adata
        domains = adata.obs[DOMAIN_KEY]
        mapping = categorical_colors(domains.cat.categories, adata.uns.get(f"{DOMAIN_KEY}_colors"))
        values = categorical(drawn(slide, domains), categories=list(domains.cat.categories))
        features = pd.DataFrame({"spot": drawn(slide, adata.obs_names.to_numpy()), DOMAIN_KEY: values})
        upsert_result(self.viewer, slide, f"{slide.name} domains", features, kind="domains", column=DOMAIN_KEY,
                      categorical_map=mapping, extra_metadata={"legend": mapping})
        base = base_layer(self.viewer, slide)
        if base is not None:
            feats = base.features.copy()
            feats[DOMAIN_KEY] = values
            base.features = feats
        counts = pd.Series(np.asarray(categorical(domains))).value_counts().to_dict()
        self.legend.set_items(mapping, title=f"Domains ({len(domains.cat.categories)})", counts=counts)
        if result.get("umap") is not None:
            self._show_umap(result["umap"], categorical(domains), mapping)
        self.record(slide, params, [EMBED_KEY, DOMAIN_KEY])
        self.update_command()

    def _show_umap(self, xy: np.ndarray, labels: pd.Categorical, mapping: dict[str, str]) -> None:
        if self.umap_canvas is None:
            self.umap_canvas = UmapCanvas()
            add_native(self._extras, self.umap_canvas)
        self.umap_canvas.plot(xy, labels, mapping)
