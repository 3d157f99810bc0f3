"""Downstream-task benchmark on the real data in ../shared/data: spgpt next to same-run baselines.

Tasks and protocols (every baseline is computed in the same run, on the same inputs):

* **domains** - DLPFC 151673 and 151674 (K = 7, ``layer``, NA spots dropped when scoring) and
  STARmap mPFC BZ5 / BZ9 (K = 4, ``layer``). spgpt: embedding of the 3,000 most variable genes (the
  tools' default; the small STARmap panels are used whole) -> k-means and Leiden (resolution
  searched for K clusters), each also with 6-neighbour spatial label smoothing. Baseline: the same
  four clusterings on PCA (50 PCs of log-normalised top-3000 HVGs). Published mean ARIs (Hu et al.
  2024, ``published/benchmarkst_mean_ari.tsv``) are listed for reference.
* **integration** - DLPFC 151673 + 151674 (labels ``layer``) and STARmap mPFC BZ5 + BZ9 (labels
  ``cell_type``); spgpt: zero-shot joint embedding on shared genes (``spgpt integrate``: the 3,000
  most variable of them, chosen on both slides together); baseline:
  PCA of the concatenated log-normalised shared genes. Metrics of Methods 4.5.2 (scib-style
  clustering search, Leiden): ARI, NMI, ASW, AvgBIO, ASW_batch, graph connectivity, AvgBATCH.
* **deconvolution** - pseudo-spots (cells binned on a grid, ~8 cells per bin, >= 2 cells) with a
  reference from another slice (STARmap mPFC BZ5 spots / BZ9 reference and the reverse) or from
  the other half of the cells (STARmap VISp, stratified 50/50 split). Methods: ``tangram-sc`` as
  users run it (log-normalised data, ``pp_adatas`` on the same training genes, ``map_cells_to_space``
  cells mode with its defaults, ``project_cell_annotations``), the spgpt pipeline on expression only
  (ablation: paper objective, no embeddings), spgpt (embedding-enriched: the embeddings stacked as
  the model returns them, the paper's Eq. 13 and the default) and spgpt with the centred embedding
  block scaled to the expression block's norm (``embedding_weight=1``). Metrics: macro F1 of
  dominant types (spots with a tied true dominant type left out), accuracy, mean JSD, runtime, peak
  memory.
* **imputation** - 5-fold leave-genes-out cross-validation: RCTD MERFISH (750 cells) with its scRNA
  reference (1308 cells, 134 genes), and STARmap mPFC BZ5 imputed from BZ9 (slice to slice).
  Methods: ``tangram-sc`` (all reference cells, ``project_genes``), the spgpt pipeline on
  expression with k-means centroids (ablation), spgpt (enriched, centroids), spgpt (enriched,
  every cell) and spgpt (enriched, centroids) with ``embedding_weight=1``.
  Metric: per-gene Pearson r of held-out genes (median over all genes of all folds), runtime, peak
  memory.

The model: ``--model`` (default ``default``); when the default model is not shipped, the run falls
back, explicitly, to ``--fallback-model`` (``random:small``: an *untrained* network) and says so in
the table. ``--finetune-epochs N`` fine-tunes the model first with ``spgpt_core.train.finetune``
(per slide for domains, on the spots + reference for deconvolution, on the reference for
imputation so no held-out gene leaks in); integration stays zero-shot as in the paper.

    .venv/bin/python bench/tasks.py                      # all tasks, writes bench/results/tasks.json
    .venv/bin/python bench/tasks.py --write              # ... and the tables in bench/results/tasks.md
    .venv/bin/python bench/tasks.py --quick --tasks deconvolution   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # helpers/: the pseudo-spot ground truth the tests use too
DATA = ROOT.parent / "shared" / "data"

from _protocol import gene_folds, measure, split_cells  # noqa: E402
from _report import write_report  # noqa: E402
from helpers.pseudo_spots import make_pseudo_spots  # noqa: E402

from spgpt_core import metrics as M  # noqa: E402
from spgpt_core.errors import CheckpointError  # noqa: E402
from spgpt_core.pp.hvg import DEFAULT_N_TOP_GENES  # noqa: E402

log = logging.getLogger("bench.tasks")
_THREADS = 0  # --threads; re-applied before every timed block (scanpy's neighbours/Leiden reset torch's count)


def timed(rec: dict):
    """``measure(rec)`` with torch pinned to --threads first, so every method runs with the same threads."""
    if _THREADS:
        import torch

        torch.set_num_threads(_THREADS)
    return measure(rec)
TASKS = ("domains", "integration", "deconvolution", "imputation", "resources")


# ------------------------------------------------------------------------------ utilities


def read(rel: str) -> ad.AnnData:
    a = ad.read_h5ad(DATA / rel)
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    return a


def log_norm(a: ad.AnnData) -> ad.AnnData:
    import scanpy as sc

    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


def pca_embedding(a: ad.AnnData, n_hvg: int = 3000, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    import scanpy as sc

    b = log_norm(a)
    if b.n_vars > n_hvg:
        sc.pp.highly_variable_genes(b, n_top_genes=n_hvg, flavor="seurat")
        b = b[:, b.var["highly_variable"]].copy()
    sc.pp.scale(b, max_value=10)
    return sc.pp.pca(b, n_comps=min(n_comps, b.n_vars - 1, b.n_obs - 1), random_state=seed, copy=True).obsm["X_pca"]


class ModelSource:
    """Loads --model (falling back explicitly), optionally fine-tunes, caches by key."""

    def __init__(self, spec: str, fallback: str, finetune_epochs: int, device: str):
        from spgpt_core.checkpoint.pretrained import load_model

        self.note = ""
        try:
            self.base = load_model(spec, device=device)
            self.name = spec
        except CheckpointError as e:
            if spec != "default":
                raise
            self.base = load_model(fallback, device=device)
            self.name = fallback
            self.note = f"`--model default` is not shipped in this build ({e.args[0].split(';')[0]}); fell back to `{fallback}`"
        self.untrained = self.name.startswith("random:")
        self.finetune_epochs = finetune_epochs
        self.device = device
        self._cache: dict = {}
        if finetune_epochs and importlib.util.find_spec("spgpt_core.train") is None:
            raise SystemExit("--finetune-epochs needs spgpt_core.train, which this build does not have")

    @property
    def label(self) -> str:
        s = self.name + (" (untrained)" if self.untrained else "")
        return s + (f" + fine-tuned {self.finetune_epochs} ep." if self.finetune_epochs else "")

    def get(self, key: str | None = None, adatas=None):
        """The base model, or (with --finetune-epochs) the base fine-tuned on ``adatas`` (cached under ``key``)."""
        if not self.finetune_epochs or adatas is None:
            return self.base
        if key not in self._cache:
            from spgpt_core.train import finetune

            t = time.time()
            self._cache[key] = finetune(list(adatas), self.base, epochs=self.finetune_epochs, seed=0, device=self.device)
            log.info("fine-tuned on %s in %.0fs", key, time.time() - t)
        return self._cache[key]


def published_aris() -> pd.DataFrame:
    df = pd.read_csv(DATA / "published" / "benchmarkst_mean_ari.tsv", sep="\t", index_col=0)
    cols = ["SpaGCN", "STAGATE", "GraphST", "SEDR", "CCST", "DeepST"]
    return df[cols].map(lambda v: float(str(v).split("±")[0]) if isinstance(v, str) and "±" in v else np.nan)


# -------------------------------------------------------------------------------- domains


def task_domains(ms: ModelSource, args) -> list[dict]:
    from spgpt_core.tl._cluster import cluster_embedding
    from spgpt_core.tl._embed import compute_embedding

    rows = []
    sets = [("DLPFC 151673", "dlpfc/DLPFC_151673.h5ad", 7, "DLPFC151673"),
            ("DLPFC 151674", "dlpfc/DLPFC_151674.h5ad", 7, "DLPFC151674"),
            ("STARmap mPFC BZ5", "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad", 4, "mPFC20180417_BZ5_control"),
            ("STARmap mPFC BZ9", "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad", 4, "mPFC20180419_BZ9_control")]
    if args.quick:
        sets = sets[2:3]
    sets = [x for x in sets if _selected(x[0], args)]
    pub = published_aris()
    for name, rel, k, pub_key in sets:
        a = read(rel)
        labels = a.obs["layer"].astype(str).to_numpy()
        xy = np.asarray(a.obsm["spatial"], float)
        reps = {}
        with timed(rec := {}):
            reps["PCA"] = pca_embedding(a, seed=args.seed)
        pca_sec = rec["seconds"]
        model = ms.get(f"domains:{name}", [a])
        with timed(rec := {}):
            emb, _ = compute_embedding(a, model, empty="drop", seed=args.seed, n_top_genes=DEFAULT_N_TOP_GENES)
        reps["spgpt"] = emb
        emb_sec = rec["seconds"]
        for rep_name, X in reps.items():
            ok = np.isfinite(X).all(axis=1)
            for method in ("kmeans", "leiden"):
                for smooth in (0, 6):
                    lab, info = cluster_embedding(X[ok], n_clusters=k, method=method, coords=xy[ok], smooth_k=smooth,
                                                  seed=args.seed)
                    full = np.full(len(X), None, dtype=object)
                    full[ok] = lab.astype(str)
                    rows.append({"task": "domains", "dataset": name, "K": k,
                                 "method": f"{rep_name} + {method}" + (" + smoothing" if smooth else ""),
                                 "ari": M.ari(labels, full), "nmi": M.nmi(labels, full),
                                 "n_clusters": info["n_clusters_found"],
                                 "embed_seconds": emb_sec if rep_name == "spgpt" else pca_sec})
                    log.info("%s", rows[-1])
        if pub_key in pub.index:
            for method, v in pub.loc[pub_key].items():
                if np.isfinite(v):
                    rows.append({"task": "domains", "dataset": name, "K": k, "method": f"{method} (published mean ARI)",
                                 "ari": float(v), "nmi": None, "published": True})
    return rows


# ---------------------------------------------------------------------------- integration


def task_integration(ms: ModelSource, args) -> list[dict]:
    from spgpt_core.tl._integrate import integrate

    rows = []
    sets = [("DLPFC 151673 + 151674", ["dlpfc/DLPFC_151673.h5ad", "dlpfc/DLPFC_151674.h5ad"], "layer"),
            ("STARmap mPFC BZ5 + BZ9", ["starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad",
                                        "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad"], "cell_type")]
    if args.quick:
        sets = sets[1:]
    sets = [x for x in sets if _selected(x[0], args)]
    for name, rels, label_key in sets:
        slides = [read(r) for r in rels]
        with timed(rec := {}):
            joint = integrate(slides, ms.get(), batch_names=[Path(r).stem for r in rels], seed=args.seed)
        emb = joint.obsm["X_spgpt"]
        ok = np.isfinite(emb).all(axis=1)
        labels = joint.obs[label_key].astype(str).to_numpy()
        batch = joint.obs["batch"].astype(str).to_numpy()
        # baseline: PCA on the same cells and the same shared genes
        counts = joint.copy()
        pca = pca_embedding(counts, n_hvg=2000, seed=args.seed)
        valid = ok & M.valid_label_mask(labels)
        for method, X, sec in (("PCA (shared genes)", pca, None), ("spgpt zero-shot", emb, rec["seconds"])):
            s = M.integration_scores(X[valid], labels[valid], batch[valid], method="leiden")
            rows.append({"task": "integration", "dataset": name, "labels": label_key, "method": method,
                         "n_cells": int(valid.sum()), "n_shared_genes": int(joint.uns["X_spgpt"]["n_shared_genes"]),
                         "seconds": sec, **s})
            log.info("%s", rows[-1])
    return rows


# -------------------------------------------------------------------------- deconvolution


def tangram_public_deconvolution(spots, ref, label_key, genes_sp, genes_ref, epochs, seed):
    """tangram-sc as documented: log-normalised AnnDatas, pp_adatas on the training genes, cells mode."""
    import tangram as tg

    a_sp = log_norm(spots[:, genes_sp])
    a_sc = log_norm(ref[:, genes_ref])
    a_sc.var_names = a_sp.var_names  # same genes, the spatial slide's names
    a_sp.X, a_sc.X = sp.csr_matrix(a_sp.X), sp.csr_matrix(a_sc.X)
    tg.pp_adatas(a_sc, a_sp, genes=list(a_sp.var_names))
    amap = tg.map_cells_to_space(a_sc, a_sp, mode="cells", density_prior="rna_count_based", num_epochs=epochs,
                                 device="cpu", random_state=seed + 1, verbose=False)
    tg.project_cell_annotations(amap, a_sp, annotation=label_key)
    P = a_sp.obsm["tangram_ct_pred"]
    P = P.div(P.sum(axis=1), axis=0)
    P.index = spots.obs_names
    return P


def deconvolution_cases(seed: int = 0) -> list[tuple]:
    """(name, pseudo-spots with obsm['true_proportions'], reference, label key) for every protocol."""
    mpfc5, mpfc9 = "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad", "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad"
    cases = []
    for sp_rel, ref_rel, nm in ((mpfc5, mpfc9, "mPFC BZ5 spots / BZ9 ref"), (mpfc9, mpfc5, "mPFC BZ9 spots / BZ5 ref")):
        cells, ref = read(sp_rel), read(ref_rel)
        cases.append((f"STARmap {nm}", make_pseudo_spots(cells, "cell_type"), ref, "cell_type"))
    visp = read("starmap_visp/STARmap_VISp_1207.h5ad")
    a_idx, b_idx = split_cells(visp.obs["cluster_name"], 0.5, seed=seed)
    cases.append(("STARmap VISp half spots / half ref", make_pseudo_spots(visp[a_idx].copy(), "cluster_name"),
                  visp[b_idx].copy(), "cluster_name"))
    return cases


def imputation_cases() -> list[tuple]:
    """(name, measured slide, reference) for every imputation protocol."""
    return [("RCTD MERFISH (scRNA reference)", read("rctd_pairs/RCTD_merfish_spatial.h5ad"),
             read("rctd_pairs/RCTD_merfish_reference.h5ad")),
            ("STARmap mPFC BZ5 from BZ9 (slice to slice)",
             read("starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"),
             read("starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad"))]


def _selected(name: str, args) -> bool:
    return not args.datasets or any(t.strip().lower() in name.lower() for t in args.datasets.split(","))


def task_deconvolution(ms: ModelSource, args) -> list[dict]:
    from spgpt_core.tl._deconvolve import compute_proportions
    from spgpt_core.tl._expression import counts_block, log_normalise
    from spgpt_core.tl._genes import match_genes
    from spgpt_core.tl._mapping import select_hvg

    rows = []
    cases = deconvolution_cases(args.seed)
    if args.quick:
        cases = cases[:1]
    cases = [c for c in cases if _selected(c[0], args)]
    for name, spots, ref, key in cases:
        truth = spots.obsm["true_proportions"]
        # the training genes of the spgpt pipeline, reused for tangram-sc so both see the same genes
        sh = match_genes(spots, ref)
        hv = select_hvg(log_normalise(counts_block(ref, sh.b_idx)), 1000)
        g_sp, g_ref = spots.var_names[sh.a_idx[hv]], ref.var_names[sh.b_idx[hv]]
        meta = {"task": "deconvolution", "dataset": name, "n_spots": int(spots.n_obs),
                "cells_per_spot": round(float(spots.obs["n_cells"].mean()), 1), "n_reference_cells": int(ref.n_obs),
                "n_types": int(truth.shape[1]), "n_genes": int(len(hv))}
        results = []
        with timed(rec := {}):
            P = tangram_public_deconvolution(spots, ref, key, g_sp, g_ref, args.epochs, args.seed)
        results.append(("tangram-sc (expression)", P, rec, {}))
        with timed(rec := {}):
            r = compute_proportions(spots, ref, celltype_key=key, use_embeddings=False, num_epochs=args.epochs, seed=args.seed)
        results.append(("spgpt pipeline, expression only (ablation)", r.proportions, rec, r.info))
        model = ms.get(f"deconv:{name}", [spots, ref])
        with timed(rec := {}):
            r = compute_proportions(spots, ref, celltype_key=key, model=model, use_embeddings=True, num_epochs=args.epochs,
                           seed=args.seed)
        results.append(("spgpt (embedding-enriched)", r.proportions, rec, r.info))
        with timed(rec := {}):
            r = compute_proportions(spots, ref, celltype_key=key, model=model, use_embeddings=True, embedding_weight=1.0,
                           num_epochs=args.epochs, seed=args.seed)
        results.append(("spgpt, centred embedding block at weight 1 (--embedding-weight 1)", r.proportions, rec, r.info))
        for method, P, rec, info in results:
            s = M.deconvolution_scores(truth, P)
            rows.append({**meta, "method": method, **s, **rec,
                         "mapping_seconds": info.get("mapping_seconds"), "embedding_seconds": info.get("embedding_seconds")})
            log.info("%s", rows[-1])
    return rows


# ----------------------------------------------------------------------------- imputation


def tangram_public_imputation(target, ref, train_sp, train_ref, heldout_ref, epochs, seed):
    """tangram-sc as documented: map every reference cell (cells mode, defaults), ``project_genes``.

    Values: log1p(counts per 1e4 training-gene counts) in both datasets, the scale the metric uses."""
    import tangram as tg

    from spgpt_core.tl._expression import counts_block, log_normalise
    from spgpt_core.tl._genes import gene_positions

    ts = np.asarray(counts_block(target, gene_positions(target, train_sp)).sum(axis=1)).ravel()
    tr = np.asarray(counts_block(ref, gene_positions(ref, train_ref)).sum(axis=1)).ravel()
    Xs = log_normalise(counts_block(target, gene_positions(target, train_sp)), ts)
    Xr = log_normalise(counts_block(ref, gene_positions(ref, list(train_ref) + list(heldout_ref))), tr)
    names = [f"g{i}" for i in range(len(train_sp))]
    a_sp = ad.AnnData(sp.csr_matrix(Xs), var=pd.DataFrame(index=names))
    a_sc = ad.AnnData(sp.csr_matrix(Xr), var=pd.DataFrame(index=names + [f"h{i}" for i in range(len(heldout_ref))]))
    a_sc.obs_names = [f"c{i}" for i in range(a_sc.n_obs)]
    tg.pp_adatas(a_sc, a_sp, genes=names)
    amap = tg.map_cells_to_space(a_sc, a_sp, mode="cells", density_prior="rna_count_based", num_epochs=epochs,
                                 device="cpu", random_state=seed + 1, verbose=False)
    ge = tg.project_genes(amap, a_sc)
    cols = [f"h{i}" for i in range(len(heldout_ref))]
    present = [c for c in cols if c in ge.var_names]  # pp/project drop all-zero reference genes
    out = pd.DataFrame(0.0, index=target.obs_names, columns=cols)
    out[present] = np.asarray(ge[:, present].X)
    out.columns = list(heldout_ref)
    return out


def task_imputation(ms: ModelSource, args) -> list[dict]:
    from spgpt_core.tl._genes import match_genes
    from spgpt_core.tl._impute import compute_imputation, measured_expression

    rows = []
    cases = imputation_cases()
    n_folds = 2 if args.quick else args.folds
    if args.quick:
        cases = cases[:1]
    cases = [c for c in cases if _selected(c[0], args)]
    methods = [("tangram-sc (expression, every cell)", None),
               ("spgpt pipeline, expression, centroids (ablation)", dict(use_embeddings=False, method="tangram_clusters")),
               ("spgpt (enriched, centroids)", dict(use_embeddings=True, method="tangram_clusters")),
               ("spgpt (enriched, every cell)", dict(use_embeddings=True, method="tangram_cells")),
               ("spgpt (enriched, centroids), centred embedding block at weight 1 (--embedding-weight 1)",
                dict(use_embeddings=True, method="tangram_clusters", embedding_weight=1.0))]
    for name, target, ref in cases:
        sh = match_genes(target, ref)
        genes_t = list(target.var_names[sh.a_idx])
        to_ref = dict(zip(genes_t, ref.var_names[sh.b_idx]))
        folds = gene_folds(genes_t, n_folds, seed=args.seed)
        model = ms.get(f"impute:{name}", [ref])
        per_method = {m: {"pearson": [], "seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": 0.0, "peak_increase_mb": 0.0,
                          "mapping_seconds": 0.0} for m, _ in methods}
        for held in folds:
            sub = target[:, ~target.var_names.isin(held)].copy()
            train_t = [g for g in genes_t if g not in held]
            meas = measured_expression(target, held, train_t)
            for method, kw in methods:
                with timed(rec := {}):
                    if kw is None:
                        pred = tangram_public_imputation(target, ref, train_t, [to_ref[g] for g in train_t],
                                                         [to_ref[g] for g in held], args.epochs, args.seed)
                        info = {}
                    else:
                        r = compute_imputation(sub, ref, genes=[to_ref[g] for g in held], model=model, num_epochs=args.epochs,
                                   seed=args.seed, **kw)
                        pred, info = r.imputed, r.info
                pred.columns = held
                r_gene = M.pearson_per_gene(meas, pred)
                acc = per_method[method]
                acc["pearson"] += list(r_gene.to_numpy())
                for k in ("seconds", "cpu_seconds"):
                    acc[k] += rec[k]
                acc["peak_rss_mb"] = max(acc["peak_rss_mb"], rec["peak_rss_mb"])
                acc["peak_increase_mb"] = max(acc["peak_increase_mb"], rec["peak_increase_mb"])
                acc["mapping_seconds"] += info.get("mapping_seconds", 0.0) or 0.0
                log.info("%s | %s | fold median r %.3f in %.1fs", name, method, np.nanmedian(r_gene), rec["seconds"])
        for method, acc in per_method.items():
            r = np.array(acc["pearson"], dtype=float)
            ok = np.isfinite(r)
            rows.append({"task": "imputation", "dataset": name, "method": method, "n_cells": int(target.n_obs),
                         "n_reference_cells": int(ref.n_obs), "n_genes_scored": int(ok.sum()), "n_folds": n_folds,
                         "median_pearson": float(np.median(r[ok])), "mean_pearson": float(np.mean(r[ok])),
                         "seconds": round(acc["seconds"], 1), "cpu_seconds": round(acc["cpu_seconds"], 1),
                         "peak_rss_mb": acc["peak_rss_mb"], "peak_increase_mb": acc["peak_increase_mb"],
                         "mapping_seconds": round(acc["mapping_seconds"], 1) if acc["mapping_seconds"] else None})
            log.info("%s", rows[-1])
    return rows


# ------------------------------------------------------------------------------ resources


def _imputation_inputs(case: str, seed: int):
    """(target with held-out genes removed, reference, held-out genes in target and reference naming, full target)."""
    from spgpt_core.tl._genes import match_genes

    if case == "synthetic":
        from spgpt_core.datasets import make_sample_reference, make_sample_slide

        ref = make_sample_reference(n_cells_per_type=500, seed=0)
        target = make_sample_slide(seed=0, reference=make_sample_reference(seed=0))
    else:
        name, target, ref = next(c for c in imputation_cases() if c[0] == case)
    sh = match_genes(target, ref)
    genes_t = list(target.var_names[sh.a_idx])
    to_ref = dict(zip(genes_t, ref.var_names[sh.b_idx]))
    held = gene_folds(genes_t, 5, seed=seed)[0][:5 if case == "synthetic" else None]
    sub = target[:, ~target.var_names.isin(held)].copy()
    return sub, ref, held, [to_ref[g] for g in held], [g for g in genes_t if g not in held], to_ref, target


def _resource_child(conn, job: dict) -> None:
    """Runs one method in a fresh process (imports and inputs outside the measured block)."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import tangram  # noqa: F401  (import cost is not the method's)

    from spgpt_core.tl._deconvolve import compute_proportions

    from spgpt_core.tl._expression import counts_block, log_normalise
    from spgpt_core.tl._genes import match_genes
    from spgpt_core.tl._mapping import select_hvg
    from spgpt_core.tl._impute import compute_imputation
    from spgpt_core.checkpoint.pretrained import load_model

    global _THREADS
    _THREADS = job.get("threads") or 0
    rec = {}
    if job["task"] == "deconvolution":
        name, spots, ref, key = next(c for c in deconvolution_cases(job["seed"]) if c[0] == job["case"])
        if job["method"] == "tangram-sc":
            with timed(rec):
                sh = match_genes(spots, ref)
                hv = select_hvg(log_normalise(counts_block(ref, sh.b_idx)), 1000)
                tangram_public_deconvolution(spots, ref, key, spots.var_names[sh.a_idx[hv]],
                                             ref.var_names[sh.b_idx[hv]], job["epochs"], job["seed"])
        else:
            with timed(rec):
                compute_proportions(spots, ref, celltype_key=key, model=load_model(job["model"], device="cpu"),
                           num_epochs=job["epochs"], seed=job["seed"])
    else:
        sub, ref, held, held_ref, train_t, to_ref, target = _imputation_inputs(job["case"], job["seed"])
        if job["method"] == "tangram-sc":
            with timed(rec):
                tangram_public_imputation(target, ref, train_t, [to_ref[g] for g in train_t], held_ref, job["epochs"],
                                          job["seed"])
        else:
            kw = {"spgpt (enriched, centroids)": dict(method="tangram_clusters"),
                  "spgpt (enriched, every cell)": dict(method="tangram_cells")}[job["method"]]
            with timed(rec):
                compute_imputation(sub, ref, genes=held_ref, model=load_model(job["model"], device="cpu"), num_epochs=job["epochs"],
                       seed=job["seed"], **kw)
        rec["n_reference_cells"], rec["n_cells"] = int(ref.n_obs), int(target.n_obs)
    conn.send(rec)
    conn.close()


def task_resources(ms: ModelSource, args) -> list[dict]:
    """Runtime and peak memory of deconvolution and imputation next to tangram-sc, one fresh process per run."""
    import multiprocessing as mp
    import tempfile

    model_dir = None
    spec = ms.name
    if ms.finetune_epochs:  # pass the (fine-tuned) model to the children through a directory
        model_dir = tempfile.mkdtemp(prefix="spgpt_bench_model_")
        spec = str(ms.get("resources", [read("rctd_pairs/RCTD_merfish_reference.h5ad")]).save_pretrained(
            Path(model_dir) / "m"))
    jobs = [("deconvolution", "STARmap mPFC BZ5 spots / BZ9 ref", m) for m in ("tangram-sc", "spgpt (enriched)")]
    for case in ("RCTD MERFISH (scRNA reference)", "synthetic"):
        jobs += [("imputation", case, m) for m in ("tangram-sc", "spgpt (enriched, centroids)",
                                                   "spgpt (enriched, every cell)")]
    if args.quick:
        jobs = jobs[:2]
    ctx = mp.get_context("spawn")
    rows = []
    for task, case, method in jobs:
        parent, child = ctx.Pipe()
        job = {"task": task, "case": case, "method": method, "model": spec, "epochs": args.epochs, "seed": args.seed,
               "threads": args.threads}
        p = ctx.Process(target=_resource_child, args=(child, job))
        p.start()
        rec = parent.recv()
        p.join()
        label = case if case != "synthetic" else "generated slide (1,481 spots) + 3,000-cell reference"
        rows.append({"task": "resources", "kind": task, "dataset": label, "method": method,
                     "held_out": "first gene fold (5 genes)" if task == "imputation" else "", **rec})
        log.info("%s", rows[-1])
    return rows


# -------------------------------------------------------------------------------- report


def _f(v, nd=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _i(v):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(int(v))


def render(result: dict) -> str:
    rows = pd.DataFrame(result["rows"])
    meta = result["meta"]
    if "model" not in rows:
        rows["model"] = meta["model"]
    rows["model"] = rows["model"].fillna(meta["model"])
    multi = rows["model"].nunique() > 1
    order = {d: i for i, d in enumerate(dict.fromkeys(rows["dataset"]))}  # group appended rows by dataset
    rows = rows.assign(_o=rows["dataset"].map(order)).sort_values(["task", "_o"], kind="stable")
    out = ["## Downstream tasks", "",
           f"Measured by `{meta['command']}` on {meta['machine']} ({meta['date']}, {meta['seconds'] / 60:.0f} min). "
           f"Model: **{meta['model']}**. {meta['model_note']}", "",
           "Protocols are in the docstring of `bench/tasks.py`; raw numbers in `bench/results/tasks.json`. "
           "Baselines ran in the same process on the same inputs and gene sets. Times are wall-clock on a machine "
           "shared with other jobs (compare rows of one run only); wall s of spgpt rows include embedding the slide "
           "and the reference, mapping s is Tangram's optimisation alone. Peak memory is measured in fresh processes, "
           "in the last table.", ""]
    if "domains" in set(rows.task):
        d = rows[rows.task == "domains"]
        out += ["### Spatial domains (ARI / NMI against manual layers)", "",
                "| dataset | K | method | ARI | NMI |", "|---|---|---|---|---|"]
        for _, r in d.iterrows():
            out.append(f"| {r.dataset} | {_i(r.K)} | {_method(r, multi)} | {_f(r.ari)} | {_f(r.nmi)} |")
        out.append("")
    if "integration" in set(rows.task):
        d = rows[rows.task == "integration"]
        out += ["### Multi-slide integration (Methods 4.5.2; Leiden, scib-style resolution search)", "",
                "| dataset | labels | method | ARI | NMI | ASW | **AvgBIO** | ASW batch | graph conn. | **AvgBATCH** |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in d.iterrows():
            out.append(f"| {r.dataset} | {r.labels} | {_method(r, multi)} | {_f(r.ari)} | {_f(r.nmi)} | {_f(r.asw_label)} | "
                       f"**{_f(r.avg_bio)}** | {_f(r.asw_batch)} | {_f(r.graph_connectivity)} | **{_f(r.avg_batch)}** |")
        out.append("")
    if "deconvolution" in set(rows.task):
        d = rows[rows.task == "deconvolution"]
        out += ["### Cell-type deconvolution of pseudo-spots", "",
                "| dataset | spots (cells/spot) | types | method | **macro F1** | accuracy | JSD | wall s | "
                "mapping s |", "|---|---|---|---|---|---|---|---|---|"]
        for _, r in d.iterrows():
            out.append(f"| {r.dataset} | {_i(r.n_spots)} ({r.cells_per_spot}) | {_i(r.n_types)} | {_method(r, multi)} | "
                       f"**{_f(r.macro_f1)}** | {_f(r.accuracy)} | {_f(r.jsd_mean)} | {_f(r.seconds, 1)} | "
                       f"{_f(r.mapping_seconds, 1)} |")
        out.append("")
    if "imputation" in set(rows.task):
        d = rows[rows.task == "imputation"]
        out += ["### Gene imputation, leave-genes-out cross-validation", "",
                "| dataset | method | genes | **median Pearson** | mean Pearson | wall s (all folds) | mapping s |",
                "|---|---|---|---|---|---|---|"]
        for _, r in d.iterrows():
            out.append(f"| {r.dataset} | {_method(r, multi)} | {_i(r.n_genes_scored)} | **{_f(r.median_pearson)}** | "
                       f"{_f(r.mean_pearson)} | {_f(r.seconds, 1)} | {_f(r.mapping_seconds, 1)} |")
        out.append("")
    if "resources" in set(rows.task):
        d = rows[rows.task == "resources"]
        out += ["### Runtime and peak memory next to tangram-sc alone (one fresh process per run)", "",
                "Wall time and CPU time cover the whole method (for spgpt: loading the model, embedding slide and "
                "reference, k-means, mapping); imports and reading the inputs are outside. Peak = highest resident "
                "memory of the process during the run (sampled every 20 ms), increase = peak minus the resident memory "
                "before the run.", "",
                "| task | data | method | wall s | CPU s | peak RSS MB | increase MB |", "|---|---|---|---|---|---|---|"]
        for _, r in d.iterrows():
            out.append(f"| {r.kind} | {r.dataset} | {_method(r, multi)} | {_f(r.seconds, 1)} | {_f(r.cpu_seconds, 1)} | "
                       f"{_f(r.peak_rss_mb, 0)} | {_f(r.peak_increase_mb, 0)} |")
        out.append("")
    if meta.get("partial_reruns"):
        out += ["Rows added or replaced by later runs: " + "; ".join(f"`{c}`" for c in meta["partial_reruns"]), ""]
    if meta.get("notes"):
        out += ["### Reading these numbers", "", meta["notes"].strip(), ""]
    return "\n".join(out)


def _model_dependent(method: str) -> bool:
    return str(method).startswith("spgpt") and "ablation" not in str(method)


def _method(r, multi: bool) -> str:
    return f"{r.method} [{r.model}]" if multi and _model_dependent(r.method) else str(r.method)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    p.add_argument("--model", default="default", help="model spec (default: %(default)s)")
    p.add_argument("--fallback-model", default="random:small", help="used when --model default is not shipped")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the model first (spgpt_core.train)")
    p.add_argument("--epochs", type=int, default=1000, help="Tangram epochs for every mapping (default: 1000)")
    p.add_argument("--folds", type=int, default=5, help="gene folds for imputation (default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--quick", action="store_true", help="one dataset per task, few epochs: a smoke run")
    p.add_argument("--datasets", help="comma-separated name fragments: only datasets whose name contains one")
    p.add_argument("--append", action="store_true",
                   help="keep every row of the previous --out file (e.g. to add a fine-tuned run next to it)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "tasks.json"))
    p.add_argument("--notes", help="text file whose content goes under 'Reading these numbers'")
    p.add_argument("--write", action="store_true", help="write the tables to bench/results/tasks.md")
    p.add_argument("--render-only", action="store_true",
                   help="re-render bench/results/tasks.md from --out without running")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("anndata", "numba", "h5py", "root", "matplotlib", "PIL", "spgpt_core"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    if args.render_only:
        result = json.loads(out.read_text())
        if args.notes:
            result["meta"]["notes"] = Path(args.notes).read_text()
            out.write_text(json.dumps(result, indent=1, default=float))
        write_report("tasks", render(result))
        return
    if args.quick:
        args.epochs = min(args.epochs, 100)
    global _THREADS
    _THREADS = args.threads
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"unknown tasks {sorted(unknown)}; choose from {TASKS}")
    import torch

    ms = ModelSource(args.model, args.fallback_model, args.finetune_epochs, "cpu")
    t0 = time.time()
    rows: list[dict] = []
    prev = json.loads(out.read_text()) if out.exists() else None
    for t in tasks:
        log.info("=== %s", t)
        new = globals()[f"task_{t}"](ms, args)
        rows += [{**r, "model": ms.label} for r in new]
    if prev is not None and args.append:  # add only the rows that depend on the model
        rows = prev["rows"] + [r for r in rows if _model_dependent(r["method"])]
    elif prev is not None and set(tasks) != set(TASKS):  # replace this model's rows of the tasks re-run only
        rows = [r for r in prev["rows"] if r["task"] not in tasks or r.get("model", ms.label) != ms.label] + rows
    import psutil

    meta = {"command": "python bench/tasks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GB RAM, no GPU, torch {torch.__version__} "
                       f"({args.threads or torch.get_num_threads()} threads for every timed method)",
            "date": time.strftime("%Y-%m-%d"), "seconds": time.time() - t0, "model": ms.label,
            "model_note": ms.note, "epochs": args.epochs, "seed": args.seed,
            "notes": Path(args.notes).read_text() if args.notes else (prev or {}).get("meta", {}).get("notes", "")}
    if prev is not None and (args.append or set(tasks) != set(TASKS)):
        new_meta = meta
        meta = {**prev["meta"], "notes": new_meta["notes"]}
        meta["partial_reruns"] = prev["meta"].get("partial_reruns", []) + [
            f"{new_meta['command']} ({new_meta['date']}, {new_meta['seconds'] / 60:.0f} min, model {new_meta['model']})"]
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rows": rows}
    out.write_text(json.dumps(result, indent=1, default=float))
    print(render(result))
    if args.write:
        write_report("tasks", render(result))


if __name__ == "__main__":
    main()
