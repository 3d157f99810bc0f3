"""``spgpt corpus build``, ``spgpt pretrain``, ``spgpt finetune``, ``spgpt domains``.

Heavy modules are imported inside each command so ``spgpt --help`` stays fast.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import InputError
from ..params import DomainsConfig, FinetuneBudget, add_options, from_args
from ..progress import TqdmProgress
from ._common import add_counts_arg, add_model_args, add_output_args, add_store_args, read_input


def cmd_corpus_build(args) -> None:
    from ..train.corpus import Corpus, build_corpus, read_slide_list

    specs = read_slide_list(args.slides)
    out = build_corpus(specs, args.out, val_fraction=args.val_fraction, patch_size=args.patch_size, seed=args.seed,
                       overwrite=args.overwrite, progress=TqdmProgress(disable=args.quiet, unit="slide"))
    c = Corpus(out)
    print(c.summary().to_string(index=False))
    print(f"corpus: {len(c.slides)} slides, {c.n_cells:,} cells, {c.meta['n_genes_with_stats']:,} genes with "
          f"corpus means -> {out}")


def cmd_pretrain(args) -> None:
    from ..train import load_config, pretrain
    from ..distributed import dist_info

    cfg = load_config(args.config, args.overrides)
    rank = dist_info()[0]
    t = time.time()
    model = pretrain(cfg, resume=args.resume, progress=TqdmProgress(disable=args.quiet or rank != 0, unit="step"))
    if rank == 0:
        tr = model.metadata.get("training", {})
        print(f"trained {tr.get('steps')} steps, {tr.get('tokens', 0):,} tokens in {time.time() - t:.0f}s -> "
              f"{Path(cfg.run_dir) / 'model'} (metrics: {Path(cfg.run_dir) / 'metrics.jsonl'})")


def _finetune(args, slides, model=None, counts_layer=None):
    from ..train import finetune

    budget = from_args(FinetuneBudget, args)
    return finetune(slides, args.model if model is None else model, epochs=args.epochs,
                    max_steps=budget.finetune_steps, lr=args.lr, max_context=args.max_context,
                    gene_col=args.gene_col, modality=args.modality, counts_layer=counts_layer, seed=args.seed,
                    device=args.device,
                    progress=TqdmProgress(disable=args.quiet, unit="step"))


def cmd_finetune(args) -> None:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite or choose another --out")
    model = _finetune(args, args.slides, counts_layer=args.counts_layer)
    model.save_pretrained(out, overwrite=args.overwrite)
    print(f"fine-tuned model -> {out}")


def cmd_domains(args) -> None:
    from .. import tl
    from ..output import _check_free, write_results

    config = from_args(DomainsConfig, args)
    if not config.uses_embedding and args.model != "default":
        logging.getLogger(__name__).warning(
            "--model %s is not used: domains come from the slide's expression (the default); add --features fused "
            "(or embedding) to find them with the model", args.model)

    _check_free(Path(args.out), args.overwrite)
    adata = read_input(args, backed=False)
    t0 = time.time()
    # the input file is copied, not rewritten
    tl.domains(adata, args.model, config=config, gene_col=args.gene_col, modality=args.modality,
               counts_layer=args.counts_layer, device=args.device,
               progress=TqdmProgress(disable=args.quiet, unit="cell"))
    obs = {k: adata.obs[k] for k in ("spgpt_domain", "X_spgpt_empty") if k in adata.obs}
    obsm = {k: adata.obsm[k] for k in ("X_spgpt", "spgpt_domain_features") if k in adata.obsm}
    uns = {k: adata.uns[k] for k in ("X_spgpt", "spgpt_domain", "spgpt_domain_colors") if k in adata.uns}
    write_results(adata, args.out, input_path=args.input, obsm=obsm, obs=obs, uns=uns, overwrite=args.overwrite)
    found = adata.obs["spgpt_domain"].nunique()
    print(f"{found} domains in {time.time() - t0:.0f}s -> {args.out} obs['spgpt_domain']")
    if args.plot:
        from ..pl import save_spatial_panels

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
    add_options(p, FinetuneBudget)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("domains", help="embed (optionally after fine-tuning) and cluster a slide into spatial domains")
    p.add_argument("input", help="slide (.h5ad, SpatialData .zarr or an instrument output folder)")
    add_store_args(p)
    add_model_args(p)
    add_output_args(p)
    p.add_argument("--gene-col", help="var column holding gene symbols (default: chosen automatically)")
    p.add_argument("--modality", help="technology (default: inferred)")
    add_counts_arg(p)
    add_options(p, DomainsConfig)
    p.add_argument("--plot", action="store_true", help="also write OUT.png with the domains in space")
    p.set_defaults(func=cmd_domains)
