"""``spgpt integrate``, ``spgpt deconvolve``, ``spgpt impute``, ``spgpt evaluate``.

Like every command: a new output file, the inputs are never modified, ``--overwrite`` to replace
an existing output, ``--plot`` for PNG figures next to it, one-line errors for bad input.

Heavy modules are imported inside each command so ``spgpt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError
from ..params import DeconvolveConfig, ImputeConfig, IntegrateConfig, add_options, from_args
from ..progress import TqdmProgress
from ._common import add_counts_arg, add_input_args, add_model_args, add_output_args, read_input


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _one_or_per_slide(text: str | None):
    """A comma-separated option of ``spgpt integrate``: one value for all slides, or a list, one per slide."""
    values = _csv(text)
    return values[0] if values and len(values) == 1 else values


def _progress(args, unit="step"):
    return TqdmProgress(disable=args.quiet, unit=unit)


def _read_reference(path: str):
    from ..io import read_slide

    return read_slide(path)


def _write_obsm_frames(out: Path, frames: dict) -> None:
    """Store DataFrames in obsm with their column names (write_results stores plain arrays)."""
    import anndata as ad
    import h5py

    with h5py.File(out, "r+") as f:
        for key, df in frames.items():
            grp = f.require_group("obsm")
            if key in grp:
                del grp[key]
            ad.io.write_elem(grp, key, df)


# ----------------------------------------------------------------------------- integrate


def cmd_integrate(args) -> None:
    from .. import tl
    from ..io import _check_free, read_slide, write_h5ad

    config = from_args(IntegrateConfig, args)  # a bad option fails here, before any slide is read
    out = Path(args.out)
    _check_free(out, args.overwrite)
    if any(out.resolve() == Path(s).expanduser().resolve() for s in args.slides):
        raise InputError(f"refusing to write over the input file {out}; choose another --out path")
    if len(args.slides) < 2:
        raise InputError("spgpt integrate needs at least 2 slides; pass two or more .h5ad / .zarr paths")
    names = _csv(args.batch_names) or [Path(s).name.removesuffix(".h5ad").removesuffix(".zarr") for s in args.slides]
    if len(set(names)) != len(names):
        names = [f"{i + 1}_{n}" for i, n in enumerate(names)]
    gene_cols, mods, counts_layers = (_one_or_per_slide(v) for v in (args.gene_col, args.modality, args.counts_layer))
    t0 = time.time()
    # a generator: tl.integrate then holds the only reference to each slide and frees it once its shared
    # genes are copied (at 1M cells the input slides are ~2 GB)
    adata = tl.integrate((read_slide(s) for s in args.slides), args.model, config=config, batch_names=names,
                         batch_key=args.batch_key, modality_key=args.modality_key, modalities=mods, gene_cols=gene_cols,
                         key_added=args.key_added, device=args.device, counts_layers=counts_layers,
                         progress=_progress(args, "cell"))
    write_h5ad(adata, out, overwrite=args.overwrite)
    rec = adata.uns[args.key_added]
    rep = rec["integrated_key"]
    print(f"integrated {adata.n_obs:,} cells from {len(args.slides)} slides on {rec['n_shared_genes']:,} shared genes in "
          f"{time.time() - t0:.1f}s -> {out} obsm['{rep}'] (features: {config.features}, per slide: "
          f"{config.per_slide}, neighbours: {config.spatial_weight}), obs['{args.batch_key}'], "
          f"obs['{args.modality_key}']")
    if args.plot:
        from ..pl import save_umap_panels

        colors = [args.batch_key, args.modality_key]
        if "spgpt_cluster" in adata.obs:
            colors.append("spgpt_cluster")
        if args.label_key:
            if args.label_key not in adata.obs:
                raise InputError(f"--label-key {args.label_key!r} is not an obs column of the slides "
                                 f"(have: {', '.join(map(str, adata.obs.columns))})")
            colors.append(args.label_key)
        png = save_umap_panels(adata, colors, out.with_suffix(".png"), use_rep=rep)
        print(f"figure: {png}")


# ----------------------------------------------------------------------------- deconvolve


def cmd_deconvolve(args) -> None:
    from .. import tl
    from ..output import _check_free, write_results

    out = Path(args.out)
    _check_free(out, args.overwrite)
    config = from_args(DeconvolveConfig, args)
    adata = read_input(args, backed=True)
    reference = _read_reference(args.reference)
    t0 = time.time()
    tl.deconvolve(adata, reference, args.celltype_key, args.model, config=config, key_added=args.key_added,
                  dominant_key=args.dominant_key, gene_col=args.gene_col, counts_layer=args.counts_layer,
                  reference_counts_layer=args.reference_counts_layer, device=args.device, progress=_progress(args))
    props = adata.obsm[args.key_added]
    colors_key = f"{args.dominant_key}_colors"
    write_results(adata, out, input_path=args.input, obsm={args.key_added: props.to_numpy()},
                  obs={args.dominant_key: adata.obs[args.dominant_key]},
                  uns={args.key_added: adata.uns[args.key_added], colors_key: adata.uns[colors_key]},
                  overwrite=args.overwrite)
    _write_obsm_frames(out, {args.key_added: props})
    counts = adata.obs[args.dominant_key].value_counts()
    print(f"deconvolved {adata.n_obs:,} spots into {props.shape[1]} cell types in {time.time() - t0:.1f}s -> {out} "
          f"obsm['{args.key_added}'], obs['{args.dominant_key}'] (most often dominant: "
          + ", ".join(f"{k}:{v}" for k, v in counts.head(5).items()) + ")")
    if args.plot:
        from ..pl import save_proportion_panels

        mem = adata if not adata.isbacked else adata.to_memory()
        png = save_proportion_panels(mem, args.key_added, out.with_suffix(".png"), dominant_key=args.dominant_key)
        print(f"figure: {png}")


# --------------------------------------------------------------------------------- impute


def cmd_impute(args) -> None:
    from .. import tl
    from ..output import _check_free, write_results

    out = Path(args.out)
    _check_free(out, args.overwrite)
    if (args.genes is None) == (not args.all_missing):
        raise InputError("pass exactly one of --genes G1,G2,... or --all-missing")
    config = from_args(ImputeConfig, args)
    adata = read_input(args, backed=True)
    reference = _read_reference(args.reference)
    t0 = time.time()
    tl.impute(adata, reference, _csv(args.genes), args.model, all_missing=args.all_missing, config=config,
              key_added=args.key_added, gene_col=args.gene_col, counts_layer=args.counts_layer,
              reference_counts_layer=args.reference_counts_layer, device=args.device, progress=_progress(args))
    df = adata.obsm[args.key_added]
    write_results(adata, out, input_path=args.input, obsm={args.key_added: df.to_numpy()},
                  uns={args.key_added: adata.uns[args.key_added]}, overwrite=args.overwrite)
    _write_obsm_frames(out, {args.key_added: df})
    print(f"imputed {df.shape[1]:,} genes for {adata.n_obs:,} cells in {time.time() - t0:.1f}s -> {out} "
          f"obsm['{args.key_added}'] (columns = genes; log1p counts per 1e4 training-gene counts)")
    if args.plot:
        from ..pl import save_imputation_panels
        from ..pp.counts import with_counts
        from ..tl._impute import measured_expression
        from ..tl._genes import gene_positions

        mem = adata if not adata.isbacked else adata.to_memory()
        measured_from = with_counts(mem, args.counts_layer)
        measured = None
        try:
            gene_positions(measured_from, list(df.columns[:8]), args.gene_col)
            measured = measured_expression(measured_from, list(df.columns[:8]), list(adata.uns[args.key_added]["training_genes"]),
                                           args.gene_col)
        except InputError:
            measured = None  # genes not measured on the slide: imputed maps only
        png = save_imputation_panels(mem, df, out.with_suffix(".png"), measured=measured)
        print(f"figure: {png}")


# ------------------------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> None:
    import numpy as np
    import pandas as pd

    from .. import metrics as M
    from ..io import get_coordinates, read_slide


    adata = read_slide(args.input)

    def obs_col(name, what):
        if name is None:
            raise InputError(f"--task {args.task} needs {what}")
        if name not in adata.obs:
            raise InputError(f"obs column '{name}' not found (have: {', '.join(map(str, adata.obs.columns))})")
        return adata.obs[name].to_numpy()

    def obsm_table(name, what):
        if name is None:
            raise InputError(f"--task {args.task} needs {what}")
        if name not in adata.obsm:
            raise InputError(f"obsm['{name}'] not found (have: {', '.join(map(str, adata.obsm)) or 'none'})")
        v = adata.obsm[name]
        return v if isinstance(v, pd.DataFrame) else pd.DataFrame(np.asarray(v), index=adata.obs_names)

    res: dict = {"task": args.task, "input": str(args.input)}
    if args.task == "domains":
        t, p = obs_col(args.labels, "--labels COL (truth)"), obs_col(args.pred, "--pred COL (clusters)")
        res.update(ari=M.ari(t, p), nmi=M.nmi(t, p))
    elif args.task == "integration":
        # default: the joint representation spgpt integrate recorded (the raw embedding when it is that)
        rep = args.use_rep or adata.uns.get("X_spgpt", {}).get("integrated_key", "X_spgpt")
        if rep not in adata.obsm:
            raise InputError(f"obsm['{rep}'] not found; pass --use-rep naming the embedding")
        res["use_rep"] = str(rep)
        emb = np.asarray(adata.obsm[rep])
        ok = np.isfinite(emb).all(axis=1)
        labels = obs_col(args.labels, "--labels COL (cell types / domains)")[ok]
        batch = obs_col(args.batch, "--batch COL (slide / modality)")[ok] if args.batch else None
        res.update(M.integration_scores(emb[ok], labels, batch, method=args.cluster_method))
    elif args.task == "deconvolution":
        pred = obsm_table(args.pred, "--pred KEY (obsm proportions)")
        if args.truth in adata.obsm:
            res.update(M.deconvolution_scores(obsm_table(args.truth, ""), pred))
        else:
            truth = obs_col(args.truth, "--truth KEY (obsm proportions or obs column of dominant types)")
            res.update(macro_f1=M.macro_f1(truth, M.dominant_labels(pred)))
        xy = get_coordinates(adata)
        if xy is not None and len(xy) > 7:
            res["morans_i_mean"] = float(np.nanmean(M.morans_i(pred, xy).to_numpy()))
    elif args.task == "imputation":
        from ..tl._impute import imputation_qc

        if args.pred is None:
            raise InputError("--task imputation needs --pred KEY (obsm imputed genes)")
        qc = imputation_qc(adata, args.pred, truth=read_slide(args.truth) if args.truth else None,
                           gene_col=args.gene_col, counts_layer=args.counts_layer)
        res.update(qc["scores"], per_gene={str(k): float(v) for k, v in qc["pearson"].items()})
    text = json.dumps(res, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def register(sub) -> None:
    p = sub.add_parser("integrate", help="joint zero-shot embedding of several slides / modalities",
                       description="Embed several slides on their shared genes with the model (no fine-tuning) into "
                       "one new .h5ad: obsm[KEY], obs[batch], obs[modality]; the joint representation (embedding, "
                       "expression PCs or both, each slide corrected on its own, optionally with its spatial "
                       "neighbourhood) in obsm[KEY_integrated].")
    p.add_argument("slides", nargs="+", help="two or more slides (.h5ad, SpatialData .zarr or instrument output folders)")
    add_model_args(p)
    add_output_args(p)
    p.add_argument("--batch-names", help="comma-separated slide names (default: file names)")
    p.add_argument("--gene-col", help="var column with gene symbols: one for all slides or comma-separated per slide")
    p.add_argument("--modality", help="technology: one for all slides or comma-separated per slide (default: inferred)")
    add_counts_arg(p, several=True)
    p.add_argument("--batch-key", default="batch", help="obs column for the slide name (default: %(default)s)")
    p.add_argument("--modality-key", default="modality", help="obs column for the technology (default: %(default)s)")
    p.add_argument("--key-added", default="X_spgpt", help="obsm key of the embedding; the joint representation goes "
                   "to KEY_integrated unless it is the embedding itself (default: %(default)s)")
    add_options(p, IntegrateConfig)
    p.add_argument("--label-key", help="obs column to colour the UMAP by as well (with --plot)")
    p.add_argument("--plot", action="store_true", help="also write OUT.png: UMAP coloured by batch, modality, clusters")
    p.set_defaults(func=cmd_integrate)

    p = sub.add_parser("deconvolve", help="cell-type proportions per spot from a labelled reference",
                       description="Maps a labelled single-cell reference onto the spots (paper Methods 4.4.1). By "
                       "default (--method auto) the consensus of Tangram on the reference's class centroids, on "
                       "expression enriched with the model's embeddings, and NNLS on class means, each weighted by "
                       "how well its proportions explain the slide; NNLS alone from 20,000 spots. Writes obsm[KEY] "
                       "(DataFrame spots x cell types) and obs[DOMINANT_KEY].")
    add_input_args(p)
    add_model_args(p)
    add_output_args(p)
    p.add_argument("--reference", required=True, help="labelled single-cell reference (.h5ad)")
    add_counts_arg(p, reference=True)
    p.add_argument("--celltype-key", required=True, help="obs column of the reference holding cell types")
    p.add_argument("--key-added", default="spgpt_proportions", help="obsm key of the proportions (default: %(default)s)")
    p.add_argument("--dominant-key", default="spgpt_dominant_type", help="obs column of the dominant type")
    add_options(p, DeconvolveConfig)
    p.add_argument("--plot", action="store_true", help="also write OUT.png with the proportions in space")
    p.set_defaults(func=cmd_deconvolve)

    p = sub.add_parser("impute", help="impute unmeasured genes from a reference",
                       description="Impute genes from a single-cell or spatial reference: embedding-enriched features, "
                       "k-means centroids of the reference, Tangram mapping (paper Methods 4.5). Writes obsm[KEY] "
                       "(DataFrame cells x genes).")
    add_input_args(p)
    add_model_args(p)
    add_output_args(p)
    p.add_argument("--reference", required=True, help="reference measuring the genes (.h5ad): scRNA-seq or a slide")
    add_counts_arg(p, reference=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--genes", help="comma-separated genes to impute")
    g.add_argument("--all-missing", action="store_true", help="impute every reference gene the slide does not measure")
    p.add_argument("--key-added", default="spgpt_imputed", help="obsm key of the imputed genes (default: %(default)s)")
    add_options(p, ImputeConfig)
    # expression alone is the default since 2026-12-06; the flag that asked for it still works
    p.add_argument("--no-embeddings", dest="use_embeddings", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--plot", action="store_true", help="also write OUT.png with the imputed genes in space")
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("evaluate", help="score results against known labels / measured genes",
                       description="Metrics of the paper (Methods 4.5.2-4.5.3): domains (ARI, NMI), integration "
                       "(AvgBIO, AvgBATCH and parts), deconvolution (macro F1 of dominant types, JSD, Moran's I), "
                       "imputation (per-gene Pearson of held-out genes). Prints JSON.")
    p.add_argument("input", help=".h5ad with the results (output of another spgpt command)")
    p.add_argument("--task", required=True, choices=["domains", "integration", "deconvolution", "imputation"])
    p.add_argument("--labels", help="obs column with true labels (domains, integration)")
    p.add_argument("--pred", help="obs column (domains) or obsm key (deconvolution, imputation) with the predictions")
    p.add_argument("--batch", help="obs column with the batch (integration)")
    p.add_argument("--use-rep", help="obsm embedding (integration; default: the joint representation spgpt "
                   "integrate recorded, else X_spgpt)")
    p.add_argument("--cluster-method", default="leiden", choices=["leiden", "louvain"])
    p.add_argument("--truth", help="deconvolution: obsm key of true proportions or obs column of true dominant types; "
                                   "imputation: .h5ad measuring the imputed genes (default: INPUT)")
    p.add_argument("--gene-col", help="var column with gene names of the measured slide (imputation)")
    p.add_argument("--counts-layer", metavar="LAYER",
                   help="layer of the measured slide holding raw counts when its X is normalised (imputation)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.set_defaults(func=cmd_evaluate)
