"""Embed & domains widget: spot embeddings (zero-shot, or fine-tune then embed), spatial domains by
number or resolution, drawn as categorical colours over the tissue with a legend and a UMAP view.

Runs ``spgpt_core.tl.domains``, the function behind ``spgpt domains`` (its equivalent command), in a
child process; the UMAP shows what the domains were found in (the features, or the embedding alone).
torch and the analyses are imported inside the child so napari starts fast.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, RadioButtons, SpinBox
from napari.utils import notifications
from spgpt_core.params import CLUSTER_METHODS, DEFAULT_N_TOP_GENES, DOMAIN_FEATURES, DomainsConfig

from . import _commands
from ._base import Legend, SlideWidget, add_native
from ._layers import base_layer, categorical, categorical_colors, as_values, upsert_result
from ._umap import UmapCanvas

if TYPE_CHECKING:
    import napari.viewer

ZERO_SHOT = "zero-shot"
FINETUNE = "fine-tune, then embed"
BY_NUMBER = "number of domains"
BY_RESOLUTION = "resolution"
EMBED_KEY = "X_spgpt"
DOMAIN_KEY = "spgpt_domain"
FEATURES_KEY = f"{DOMAIN_KEY}_features"  # what tl.domains clustered, when not the embedding alone
KEPT_PREFIX = f"{DOMAIN_KEY}__"  # obs columns of clusterings kept as their own layers
#: the run parameters that change the embedding; a run changing none of them only clusters again
EMBED_SETTINGS = ("mode", "finetune_epochs", "n_top_genes", "batch_size", "seed", "drop_empty", "model", "device",
                  "gene_col", "counts_layer")


DEFAULTS = DomainsConfig(n_clusters=2)  # the core's defaults, shown as the controls' start values
K_METHODS = ("kmeans", "gmm", "gmm-tied")  # give exactly K (spgpt_core.tl._cluster.K_METHODS; not imported: sklearn)


def only_clusters(config: DomainsConfig) -> bool:
    """Whether domains come from the embedding alone, so re-finding them is `spgpt cluster` of it."""
    return config.features == "embedding" and config.spatial_weight <= 0


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
        self.features = ComboBox(label="Domains from", choices=list(DOMAIN_FEATURES), value=DEFAULTS.features,
                                 tooltip="The model's embedding, the slide's own expression (PCA) or both fused; "
                                         "each beside its spatial neighbours' mean")
        self.spatial_weight = FloatSpinBox(label="Neighbourhood weight", value=DEFAULTS.spatial_weight, min=0.0,
                                           max=1.0, step=0.1,
                                           tooltip="Share of the features given to the mean of each spot's "
                                                   "spatial neighbours (BANKSY-style; 0 = off)")
        self.method = ComboBox(label="Method", choices=list(CLUSTER_METHODS), value=DEFAULTS.method,
                               tooltip="Leiden / Louvain search the resolution giving that number; k-means and the "
                                       "Gaussian mixtures give it exactly")
        self.smooth_k = SpinBox(label="Spatial smoothing (k)", value=DEFAULTS.smooth_k, min=0, max=50,
                                tooltip="Refine the domains over each spot's k nearest spots (0 = off)")
        self.spatial_prior = FloatSpinBox(label="Spatial prior (beta)", value=DEFAULTS.spatial_prior, min=0.0,
                                          max=10.0, step=0.1,
                                          tooltip="Strength of the Potts prior that makes neighbouring spots "
                                                  "share a domain (a hidden Markov random field, as BayesSpace); "
                                                  "0 = a majority vote of the neighbours instead")
        self.n_top_genes = SpinBox(label="Most variable genes", value=DEFAULT_N_TOP_GENES, min=0, max=100_000, step=500,
                                   tooltip="The model sees this many highly variable genes (0 = every matched "
                                           "gene); smaller panels are used whole")
        self.batch_size = SpinBox(label="Batch size", value=64, min=1, max=4096)
        self.seed = SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        self.drop_empty = CheckBox(value=True, text="Leave out spots that express no model gene")
        self.umap = CheckBox(value=True, text="Show a UMAP of what the domains were found in")
        self.keep_button = PushButton(text="Keep these domains as their own layer", enabled=False,
                                      tooltip="The next run then adds a new domains layer instead of replacing them")
        self.legend = Legend()
        self.umap_canvas = None
        extras = Container(widgets=[], labels=False)
        extras.margins = (0, 0, 0, 0)
        super().__init__(viewer, [self.mode, self.epochs, self.by, self.n_domains, self.resolution, self.features,
                                  self.spatial_weight, self.method,
                                  self.smooth_k, self.spatial_prior, self.n_top_genes, self.batch_size, self.seed,
                                  self.drop_empty, self.umap],
                         after=[self.keep_button, extras])
        self.keep_button.clicked.connect(self.keep_clustering)
        add_native(extras, self.legend)
        self._extras = extras
        self.mode.changed.connect(self._on_mode)
        self.features.changed.connect(self._on_features)
        self.by.changed.connect(self._on_by)
        self.smooth_k.changed.connect(self._on_smooth_k)
        self._on_features()
        self.update_command()

    def _on_mode(self, *_) -> None:
        self.epochs.visible = self.mode.value == FINETUNE
        if self.mode.value == FINETUNE and self.features.value == "expression":
            self.features.value = "fused"  # fine-tuning changes the embedding: domains must use it

    def _on_features(self, *_) -> None:
        if self.features.value == "expression" and self.mode.value == FINETUNE:
            self.mode.value = ZERO_SHOT  # the expression alone uses no model, fine-tuned or not
        self.controls.run_button.text = self.run_label()

    def run_label(self) -> str:
        """What Run does: find domains, embedding the slide first when the features use the model."""
        return "Find domains" if self.features.value == "expression" else self.run_text

    def _on_smooth_k(self, *_) -> None:
        self.spatial_prior.enabled = self.smooth_k.value > 0  # the prior acts over the smoothing's neighbours

    def _on_by(self, *_) -> None:
        self.n_domains.visible = self.by.value == BY_NUMBER
        self.resolution.visible = self.by.value == BY_RESOLUTION

    def cluster_args(self) -> dict:
        if self.by.value == BY_NUMBER or self.method.value in K_METHODS:
            return {"n_clusters": int(self.n_domains.value), "resolution": None}
        return {"n_clusters": None, "resolution": float(self.resolution.value)}

    def config(self) -> DomainsConfig:
        """The controls' settings, as the core declares them (tl.domains and spgpt domains take the same)."""
        return DomainsConfig(**self.cluster_args(), features=self.features.value,
                             spatial_weight=round(float(self.spatial_weight.value), 3), method=self.method.value,
                             smooth_k=int(self.smooth_k.value),
                             spatial_prior=round(float(self.spatial_prior.value), 3),
                             n_top_genes=int(self.n_top_genes.value),
                             finetune_epochs=int(self.epochs.value) if self.mode.value == FINETUNE else 0,
                             batch_size=int(self.batch_size.value), drop_empty=bool(self.drop_empty.value),
                             seed=int(self.seed.value))

    def params(self) -> dict:
        slide = self.slide
        return {"mode": self.mode.value, **self.config().as_dict(), "model": self.state.spec,
                "device": self.state.device, "gene_col": slide.gene_col if slide is not None else None,
                "counts_layer": slide.counts_layer if slide is not None else None}

    def last_run(self, slide, key: str) -> dict | None:
        """This widget's last recorded run on the slide that wrote ``key``."""
        runs = slide.adata.uns.get("spgpt_napari", {}) if slide is not None else {}
        made = [r for _, r in sorted(runs.items()) if key in list(r.get("result_keys", []))]
        return made[-1] if made else None

    def reusable_embedding(self, slide) -> bool:
        """Whether the slide's embedding was made with this form's embedding settings (model, genes,
        fine-tuning, seed, batch size, empty spots): then only the clustering runs again."""
        last = self.last_run(slide, EMBED_KEY)
        # domains from the expression alone use no embedding: nothing to reuse
        if self.features.value == "expression" or last is None or EMBED_KEY not in slide.adata.obsm:
            return False
        before, now = last.get("params", {}), self.params()
        return all(str(before.get(k)) == str(now.get(k)) for k in EMBED_SETTINGS)

    def command_text(self) -> str:
        """The command giving what Run gives now: the last run's own command while nothing changed,
        ``spgpt cluster`` when only clustering settings did, else ``spgpt domains``."""
        spec, device = self.model_spec()
        slide = self.slide
        if self.reusable_embedding(slide):
            last = self.last_run(slide, DOMAIN_KEY)
            now = self.params()
            if last is not None and all(str(v) == str(last.get("params", {}).get(k)) for k, v in now.items()):
                return str(last.get("command", ""))
            if only_clusters(self.config()):
                return _commands.cluster(slide, self.config(), key_added=DOMAIN_KEY)
        return _commands.domains(slide, spec, device, self.config())

    # -- run --------------------------------------------------------------------------------------

    def run(self) -> None:
        slide = self.require_slide()
        if slide is None:
            return
        config = self.config()
        params = self.params()
        reuse = self.reusable_embedding(slide)
        job = self.job_inputs(slide, {**params, "reused_embedding": reuse})
        if reuse and only_clusters(config):  # recorded as what runs: the clustering of the existing embedding
            job = dataclasses.replace(job, command=_commands.cluster(slide, config, key_added=DOMAIN_KEY))
        want_umap = bool(self.umap.value)
        adata = slide.adata
        gene_col, counts_layer, device = slide.gene_col, slide.counts_layer, job.model.device

        def work(progress):
            # scanpy: only inside the worker, napari starts fast. The analysis runs in a child process
            # (kNN, Leiden, k-means and UMAP hold the GIL for long at 1M cells): this thread only waits.
            from spgpt_core.child import run_in_child
            from spgpt_core.pl import stable_domains

            from ._jobs import domains_job, lean_copy
            from ._staging import Staged, scratch

            # the request is checked by tl.domains / tl.cluster in the child, before any model loads: importing
            # the clustering code here would hold this process's GIL (and freeze napari) for a second or more
            progress.start(0, "starting the analysis process")
            model = job.model.model if job.model.model is not None else job.model.spec
            lean = lean_copy(adata, counts_layer=counts_layer, obsm=("spatial", EMBED_KEY) if reuse else ("spatial",),
                             with_matrix=not (reuse and only_clusters(config)))
            out = run_in_child(domains_job, lean, model, config, gene_col=gene_col, counts_layer=counts_layer,
                               device=device, key_added=DOMAIN_KEY, embedding_key=EMBED_KEY, reuse=reuse,
                               want_umap=want_umap, progress=progress)
            del lean
            work_ad = scratch(adata)  # the slide itself changes only in commit, after success
            for slot in ("obs", "obsm", "uns"):
                target = getattr(work_ad, slot)
                for key, value in out[slot].items():
                    if value is not None:
                        target[key] = value
                    elif key in target:  # e.g. a stale empty-spot mark from an earlier run
                        del target[key]
            # the previous run's labels (and so colours) where the partitions overlap
            previous = adata.obs[DOMAIN_KEY].values if DOMAIN_KEY in adata.obs else None
            work_ad.obs[DOMAIN_KEY], work_ad.uns[f"{DOMAIN_KEY}_colors"] = stable_domains(
                work_ad.obs[DOMAIN_KEY].values, previous)
            progress.check()  # a Cancel up to here leaves the slide as it was
            # an embedding this run did not make (reused, or domains from expression alone) stays as it was
            embedded = [EMBED_KEY] if EMBED_KEY in out["obsm"] else []
            staged = Staged.collect(work_ad, obs=[DOMAIN_KEY, *[f"{EMBED_KEY}_empty" for _ in embedded]],
                                    obsm=[*embedded, FEATURES_KEY],
                                    uns=[*embedded, DOMAIN_KEY, f"{DOMAIN_KEY}_colors"])
            return {"model": None, "umap": out["umap"], "staged": staged}

        self.controls.start(work, on_done=lambda r: self._done(slide, r, job), slide=slide, what=self.job_name)

    def _done(self, slide, result: dict, job) -> None:
        if not self.commit(slide, result, job):
            return
        params = (slide.adata.uns.get(DOMAIN_KEY) or {}).get("params", {})
        warning = smoothing_warning(params)
        if warning:
            notifications.show_warning(warning)
        if result.get("umap") is not None and DOMAIN_KEY in slide.adata.obs:
            domains = slide.adata.obs[DOMAIN_KEY]
            rep = found_in(params)
            title = "UMAP of spgpt embedding" if rep == "embedding" else f"UMAP of the features ({rep})"
            self._show_umap(result["umap"], categorical(domains), self.legend.items, title)
        elif self.umap_canvas is not None:
            self.umap_canvas.setVisible(False)  # an earlier run's UMAP must not sit beside this run's legend

    def render(self, slide) -> None:
        """The domains layer, the spots' hover column and the legend, from ``obs['spgpt_domain']``."""
        adata = slide.adata
        if DOMAIN_KEY not in adata.obs:
            self.legend.set_items({})
            return
        domains = adata.obs[DOMAIN_KEY]
        mapping = categorical_colors(domains.cat.categories, adata.uns.get(f"{DOMAIN_KEY}_colors"))
        values = categorical(as_values(domains), categories=list(domains.cat.categories))
        features = pd.DataFrame({"spot": as_values(adata.obs_names.to_numpy()), DOMAIN_KEY: values})
        upsert_result(self.viewer, slide, f"{slide.name} domains", features, kind="domains", column=DOMAIN_KEY,
                      categorical_map=mapping, extra_metadata={"legend": mapping, "source": ["obs", DOMAIN_KEY]})
        base = base_layer(self.viewer, slide)
        if base is not None and slide.raster is None:  # a raster's overlay layer hovers it (its features)
            feats = base.features.copy()
            feats[DOMAIN_KEY] = values
            base.features = feats
        counts = {str(k): int(v) for k, v in pd.Series(categorical(domains)).value_counts().items()}  # codes: fast at 1M
        self.legend.set_items(mapping, title=f"Domains ({len(domains.cat.categories)}; {how_found(adata)})",
                              counts=counts)
        for key in [c for c in adata.obs.columns if str(c).startswith(KEPT_PREFIX)]:
            kept = adata.obs[key]
            name = f"{slide.name} domains {clustering_label(adata.uns.get(key, {}))}"
            existing = [la for la in self.viewer.layers if la.name == name]
            upsert_result(self.viewer, slide, name, pd.DataFrame({"spot": features["spot"], key: categorical(
                          as_values(kept), categories=list(kept.cat.categories))}), kind="domains_kept", column=key,
                          categorical_map=categorical_colors(kept.cat.categories, adata.uns.get(f"{key}_colors")),
                          visible=existing[0].visible if existing else False, extra_metadata={"source": ["obs", key]})
        self.keep_button.enabled = True

    def keep_clustering(self) -> None:
        """Copy the current domains to their own obs column and layer ("domains k=7, leiden"), so the next
        run does not replace them and two clusterings can be compared (and are exported)."""
        slide = self.require_slide()
        if slide is None or DOMAIN_KEY not in slide.adata.obs:
            return
        if slide.busy:
            notifications.show_warning(f"'{slide.busy}' is running on {slide.name}; wait for it or cancel it first.")
            return
        adata = slide.adata
        label = clustering_label(adata.uns.get(DOMAIN_KEY, {}))
        key = KEPT_PREFIX + "".join(ch if ch.isalnum() else "_" for ch in label).strip("_")
        adata.obs[key] = adata.obs[DOMAIN_KEY].copy()
        adata.uns[key] = copy.deepcopy(adata.uns.get(DOMAIN_KEY, {}))
        adata.uns[f"{key}_colors"] = list(adata.uns.get(f"{DOMAIN_KEY}_colors", []))
        slide.unsaved = list(dict.fromkeys([*slide.unsaved, "kept domains"]))
        self.render(slide)
        self.controls.status.value = f"Kept as layer '{slide.name} domains {label}' (obs['{key}'])."

    def _show_umap(self, xy: np.ndarray, labels: pd.Categorical, mapping: dict[str, str], title: str) -> None:
        if self.umap_canvas is None:
            self.umap_canvas = UmapCanvas()
            add_native(self._extras, self.umap_canvas)
        self.umap_canvas.setVisible(True)
        self.umap_canvas.plot(xy, labels, mapping, title)


def clustering_label(record: dict) -> str:
    """'k=7, leiden, smooth 6' (or 'resolution 0.8, ...') from a clustering's ``uns`` record."""
    p = record.get("params", {}) if isinstance(record, dict) else {}
    k = p.get("n_clusters")
    what = f"k={k}" if k is not None and str(k) != "None" else f"resolution {p.get('resolution')}"
    features = p.get("features", "embedding")  # named when not the paper's embedding alone
    return f"{what}, " + ("" if features == "embedding" else f"{features}, ") + _method(p) + _smoothing(p)


def _smoothing(params: dict) -> str:
    """', Potts 0.5 over 6' or ', smooth 6' (a majority vote), '' when the labels were not smoothed."""
    smooth = int(params.get("smooth_k", 0) or 0)
    if not smooth:
        return ""
    if params.get("smoothing") == "potts":
        return f", Potts {params.get('spatial_prior')} over {smooth}"
    return f", smooth {smooth}"


def smoothing_warning(params: dict) -> str | None:
    """What to tell the user when the Potts prior would have merged domains and the vote was used."""
    why = params.get("potts_fallback")
    if not why:
        return None
    return f"{why[0].upper()}{why[1:]}. Set 'Spatial prior (beta)' to 0 to use the vote from the start."


def _method(params: dict) -> str:
    """'gmm-tied', or 'gmm-tied consensus x10' when 10 clusterings were combined into one."""
    members = int(params.get("consensus_members", 1) or 1)
    return f"{params.get('method', '?')}" + (f" consensus x{members}" if members > 1 else "")


def how_found(adata) -> str:
    """What the domains were found from and how, from their run record (e.g. "embedding, leiden")."""
    params = (adata.uns.get(DOMAIN_KEY) or {}).get("params", {})
    return f"{found_in(params)}, {_method(params)}{_smoothing(params)}"


def found_in(params: dict) -> str:
    """The features the domains were clustered in, e.g. "expression + neighbours 0.8"."""
    features = params.get("features", "embedding")
    if float(params.get("spatial_weight", 0) or 0) > 0:
        features += f" + neighbours {params['spatial_weight']}"
    return features
