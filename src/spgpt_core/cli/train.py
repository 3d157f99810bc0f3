"""``spgpt corpus build``, ``spgpt pretrain``, ``spgpt finetune``, ``spgpt domains``."""

from __future__ import annotations

import time
from pathlib import Path

from ._common import (add_counts_arg, add_hvg_arg, add_model_args, add_output_args, add_store_args, n_top_genes,
                      positive_float, positive_int, read_input)


def cmd_corpus_build(args) -> None:
    from ..corpus import Corpus, build_corpus, read_slide_list
    from ..progress import TqdmProgress

    specs = read_slide_list(args.slides)
    out = build_corpus(specs, args.out, val_fraction=args.val_fraction, patch_size=args.patch_size, seed=args.seed,
                       overwrite=args.overwrite, progress=TqdmProgress(disable=args.quiet, unit="slide"))
    c = Corpus(out)
    print(c.summary().to_string(index=False))
    print(f"corpus: {len(c.slides)} slides, {c.n_cells:,} cells, {c.meta['n_genes_with_stats']:,} genes with "
          f"corpus means -> {out}")


def cmd_pretrain(args) -> None:
    from ..progress import TqdmProgress
    from ..train import load_config, pretrain
    from ..train.loop import dist_info

    cfg = load_config(args.config, args.overrides)
    rank = dist_info()[0]
    t = time.time()
    model = pretrain(cfg, resume=args.resume, progress=TqdmProgress(disable=args.quiet or rank != 0, unit="step"))
    if rank == 0:
        tr = model.metadata.get("training", {})
        print(f"trained {tr.get('steps')} steps, {tr.get('tokens', 0):,} tokens in {time.time() - t:.0f}s -> "
              f"{Path(cfg.run_dir) / 'model'} (metrics: {Path(cfg.run_dir) / 'metrics.jsonl'})")


def _finetune(args, slides, model=None, counts_layer=None):
    from ..progress import TqdmProgress
    from ..train import finetune

    return finetune(slides, args.model if model is None else model, epochs=args.epochs, lr=args.lr, max_context=args.max_context,
                    gene_col=args.gene_col, modality=args.modality, counts_layer=counts_layer, seed=args.seed,
                    device=args.device,
                    progress=TqdmProgress(disable=args.quiet, unit="step"))


def cmd_finetune(args) -> None:
    from ..errors import InputError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite or choose another --out")
    model = _finetune(args, args.slides, counts_layer=args.counts_layer)
    model.save_pretrained(out, overwrite=args.overwrite)
    print(f"fine-tuned model -> {out}")


def cmd_domains(args) -> None:
    from .. import tl
    from ..output import _check_free, write_results
    from ..progress import TqdmProgress

    _check_free(Path(args.out), args.overwrite)
    adata = read_input(args, backed=False)
    t0 = time.time()
    # the input file is copied, not rewritten
    tl.domains(adata, args.model, n_clusters=args.n_clusters, resolution=args.resolution, method=args.method,
               smooth_k=args.smooth_k, n_top_genes=n_top_genes(args), finetune_epochs=args.epochs,
               finetune_lr=args.lr, max_context=args.max_context, gene_col=args.gene_col, modality=args.modality,
               counts_layer=args.counts_layer, batch_size=args.batch_size, drop_empty=args.drop_empty,
               seed=args.seed, device=args.device, progress=TqdmProgress(disable=args.quiet, unit="cell"))
    obs = {k: adata.obs[k] for k in ("spgpt_domain", "X_spgpt_empty") if k in adata.obs}
    write_results(adata, args.out, input_path=args.input, obsm={"X_spgpt": adata.obsm["X_spgpt"]}, obs=obs,
                  uns={k: adata.uns[k] for k in ("X_spgpt", "spgpt_domain", "spgpt_domain_colors")},
                  overwrite=args.overwrite)
    found = adata.obs["spgpt_domain"].nunique()
    print(f"{found} domains in {time.time() - t0:.0f}s -> {args.out} obs['spgpt_domain']")
    if args.plot:
        from ..plotting import save_spatial_panels

        png = Path(args.out).with_suffix(".png")
        save_spatial_panels(adata, ["spgpt_domain"], png)
        print(f"figure: {png}")


def _add_finetune_args(p, epochs_flag: str, default_epochs: int, epochs_help: str | None = None) -> None:
    p.add_argument(epochs_flag, dest="epochs", type=int, default=default_epochs,
                   help=epochs_help or f"fine-tuning epochs (default: {default_epochs})")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: %(default)s)")
    p.add_argument("--max-context", type=int, default=128, help="expressed genes per cell while fine-tuning (default: 128)")
    p.add_argument("--gene-col")
    p.add_argument("--modality")
    add_counts_arg(p)
    p.add_argument("--seed", type=int, default=0)


def register(sub) -> None:
    p = sub.add_parser("corpus", help="build a preprocessed training corpus")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    b = csub.add_parser("build", help="preprocess slides into an on-disk corpus",
                        description="QC, two-level normalisation statistics and a train/validation split, one slide "
                        "at a time (never the whole corpus in memory).")
    b.add_argument("slides", nargs="+", help=".h5ad / .zarr slides and/or YAML lists of slides "
                   "(entries: path, modality, gene_col, slide_id, table)")
    b.add_argument("--out", required=True, help="corpus folder")
    b.add_argument("--val-fraction", type=float, default=0.003, help="held-out share of cells (default: 0.003)")
    b.add_argument("--patch-size", type=int, default=16, help="validation patches have this many cells")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=cmd_corpus_build)

    p = sub.add_parser("pretrain", help="(continual) pretraining from a YAML config",
                       description="Pretrain with GEP + GEPS-intra + GEPS-inter on spatial patches. Runs single-process "
                       "or under torchrun (DDP). Example: spgpt pretrain --config configs/tiny.yaml epochs=2 lr=1e-4")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a model on slides (GEP, GEPS, ECS)")
    p.add_argument("slides", nargs="+", help=".h5ad / .zarr slides or instrument output folders")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true")
    _add_finetune_args(p, "--epochs", 1)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("domains", help="embed (optionally after fine-tuning) and cluster a slide into spatial domains")
    p.add_argument("input", help="slide (.h5ad, SpatialData .zarr or an instrument output folder)")
    add_store_args(p)
    k = p.add_mutually_exclusive_group(required=True)
    k.add_argument("--n-clusters", type=positive_int, help="number of domains K")
    k.add_argument("--resolution", type=positive_float, help="Leiden / Louvain resolution instead of a K")
    add_model_args(p)
    add_output_args(p)
    # zero-shot by default, as the plugin: with the shipped model it scored higher on average than one
    # epoch of the paper's fine-tuning over 7 labelled slides x 2 seeds, in 40% of the time (BENCHMARKS.md)
    _add_finetune_args(p, "--finetune-epochs", 0,
                       "fine-tune the model on the slide for this many epochs first, as the paper does "
                       "(default: 0 = zero-shot)")
    p.add_argument("--method", default="leiden", choices=["leiden", "louvain", "kmeans"],
                   help="clustering (default: leiden, resolution searched for K; louvain; kmeans)")
    p.add_argument("--smooth-k", type=int, default=6, help="spatial majority smoothing (0 = off; default 6)")
    add_hvg_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="cells per embedding batch (default: 64)")
    p.add_argument("--drop-empty", action="store_true",
                   help="leave out spots that express no model gene (no domain) instead of refusing the slide")
    p.add_argument("--plot", action="store_true")
    p.set_defaults(func=cmd_domains)
