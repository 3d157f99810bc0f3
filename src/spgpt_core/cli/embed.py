"""``spgpt embed``, ``spgpt cluster``, ``spgpt info``.

Heavy modules are imported inside each command so ``spgpt --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..params import CLUSTER_METHODS, DomainsConfig
from ..progress import TqdmProgress
from ._common import add_hvg_arg, add_input_args, add_memory_args, add_model_args, add_output_args, n_top_genes, positive_int


def cmd_embed(args) -> None:
    from ..cohort import embed_cohort
    from ..distributed import dist_info

    # one slide, or many (one output each); under torchrun the cells are shared out over the ranks
    embed_cohort(args.input, args.out, model=args.model, device=args.device, key_added=args.key_added,
                 gene_col=args.gene_col, modality=args.modality, n_top_genes=n_top_genes(args),
                 batch_size=args.batch_size, max_seq_len=args.max_seq_len, seed=args.seed,
                 empty="drop" if args.drop_empty else "error", counts_layer=args.counts_layer, table=args.table,
                 coordinate_system=args.coordinate_system, overwrite=args.overwrite,
                 progress=TqdmProgress(disable=args.quiet or dist_info()[0] != 0, unit="cell"))


def cmd_cluster(args) -> None:
    from .. import tl
    from ..io import read_slide
    from ..output import _check_free, write_results

    _check_free(Path(args.out), args.overwrite)
    adata = read_slide(args.input)
    tl.cluster(adata, use_rep=args.use_rep, n_clusters=args.n_clusters, resolution=args.resolution,
               method=args.method, smooth_k=args.smooth_k, spatial_prior=args.spatial_prior,
               key_added=args.key_added, seed=args.seed,
               progress=TqdmProgress(disable=args.quiet, unit="cell"))
    write_results(adata, args.out, input_path=args.input, obs={args.key_added: adata.obs[args.key_added]},
                  uns={args.key_added: adata.uns[args.key_added],
                       f"{args.key_added}_colors": adata.uns[f"{args.key_added}_colors"]},
                  overwrite=args.overwrite)
    if args.plot:
        from ..pl import save_spatial_panels

        png = Path(args.out).with_suffix(".png")
        save_spatial_panels(adata, [args.key_added], png)
        print(f"figure: {png}")
    counts = adata.obs[args.key_added].value_counts().sort_index()
    print(f"{len(counts)} clusters -> {args.out} obs['{args.key_added}']: " + ", ".join(f"{k}:{v}" for k, v in counts.items()))


def cmd_info(args) -> None:
    from ..checkpoint.pretrained import load_model

    model = load_model(args.model, device="cpu")
    print(json.dumps({**model.describe(), "metadata": {k: v for k, v in model.metadata.items() if k != "import_report"}},
                     indent=2, default=str))
    if args.input:
        from ..io import read_slide
        from ..pp.vocab import resolve_genes

        adata = read_slide(args.input, backed=True)
        print(resolve_genes(adata, model.vocab, gene_col=args.gene_col).report())


def register(sub) -> None:

    p = sub.add_parser("embed", help="zero-shot spot/cell embeddings", description="Embed every cell/spot of a slide "
                       "with the model; writes a new .h5ad with obsm[KEY] (L2-normalised <cls> states). Several "
                       "slides: --out DIR gets one <slide>_embedded.h5ad each. Under torchrun (torchrun "
                       "--nproc_per_node=N -m spgpt_core.cli embed ...) the cells are shared out over the processes "
                       "and the result equals a one-process run.")
    add_input_args(p, several=True)
    add_model_args(p)
    p.add_argument("--out", required=True, help="output .h5ad for one slide, or a folder (one <slide>_embedded.h5ad "
                   "per slide; the inputs are never modified)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--key-added", default="X_spgpt", help="obsm key for the embedding (default: %(default)s)")
    add_hvg_arg(p)
    add_memory_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed for binning ties and gene subsampling (default: 0)")
    p.add_argument("--drop-empty", action="store_true", help="leave cells with no expressed vocabulary gene out "
                   "(NaN rows, flagged in obs) instead of stopping with an error")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("cluster", help="cluster an embedding into domains", description="Leiden / Louvain "
                       "(resolution searched to give K clusters, or fixed), k-means or a Gaussian mixture on "
                       "obsm[USE_REP]; optional spatial smoothing (a Potts prior or a majority vote).")
    p.add_argument("input", help=".h5ad with an embedding (e.g. from `spgpt embed`)")
    add_output_args(p)
    p.add_argument("--use-rep", default="X_spgpt", help="obsm key of the embedding (default: %(default)s)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--n-clusters", type=positive_int, help="number of clusters K")
    g.add_argument("--resolution", type=float, help="Leiden resolution")
    p.add_argument("--method", default="leiden", choices=CLUSTER_METHODS)
    p.add_argument("--smooth-k", type=int, default=0, help="smooth the labels over K spatial neighbours (0 = off)")
    # the vote by default: the Potts prior was chosen for `spgpt domains`' domain features; on a raw
    # embedding it lowered the dev slides' ARI (docs/experiments/2026-12-06-domain-potts.md)
    p.add_argument("--spatial-prior", type=float, default=0.0, metavar="BETA",
                   help="with --smooth-k: a Potts spatial prior of strength BETA on the embedding instead of the "
                        f"majority vote (`spgpt domains` uses {DomainsConfig.spatial_prior} on its domain features; "
                        "default: %(default)s, the vote)")
    p.add_argument("--key-added", default="spgpt_domain", help="obs column for the labels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="also write OUT.png with the clusters in space")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("info", help="describe a model (and its gene match on a slide)")
    add_model_args(p)
    p.add_argument("input", nargs="?", help="optional slide to report the gene match for")
    p.add_argument("--gene-col")
    p.set_defaults(func=cmd_info)
