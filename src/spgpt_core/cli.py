"""The ``spgpt`` command line: one subcommand per analysis, each a thin wrapper over the Python API.

Errors a user can fix print one ``error:`` line (exit code 2) instead of a traceback; Ctrl-C
cancels cleanly (exit code 130). ``SPGPT_DEBUG=1`` shows full tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import SpgptError

log = logging.getLogger("spgpt")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="model: 'default' (shipped), a model directory (spgpt or scGPT format) or "
                        "'random:SIZE[:SEED]' (untrained; sizes tiny, small, scgpt-human). Default: %(default)s")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="slide: .h5ad file or SpatialData .zarr directory")
    p.add_argument("--table", help="SpatialData table to use when the store has several")
    p.add_argument("--gene-col", help="var column holding gene symbols (default: chosen automatically)")
    p.add_argument("--modality", help="technology (visium, visium_hd, xenium, merfish, cosmx, starmap, osmfish, "
                                      "seqfish, smfish, verafish, slideseq, st, stereoseq, scrna); default: inferred")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output .h5ad (a new file; the input is never modified)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _read(args, backed: bool):
    from .io import read_slide

    return read_slide(args.input, table=getattr(args, "table", None), backed=backed)


def cmd_embed(args) -> None:
    from . import tl
    from .output import write_results
    from .pretrained import load_model
    from .progress import TqdmProgress

    from .output import _check_free

    _check_free(Path(args.out), args.overwrite)  # fail before the long work, not after
    adata = _read(args, backed=True)
    model = load_model(args.model, device=args.device)
    t0 = time.time()
    tl.embed(adata, model, key_added=args.key_added, gene_col=args.gene_col, modality=args.modality,
             batch_size=args.batch_size, seed=args.seed, empty="drop" if args.drop_empty else "error",
             progress=TqdmProgress(disable=args.quiet, unit="cell"))
    info = adata.uns[args.key_added]
    obs = {f"{args.key_added}_empty": adata.obs[f"{args.key_added}_empty"]} if f"{args.key_added}_empty" in adata.obs else {}
    write_results(adata, args.out, input_path=args.input, obsm={args.key_added: adata.obsm[args.key_added]},
                  obs=obs, uns={args.key_added: info}, overwrite=args.overwrite)
    gm = info["gene_match"]
    print(f"embedded {adata.n_obs:,} cells with {gm['n_matched']:,}/{gm['n_total']:,} matched genes "
          f"({info['params']['modality']}) in {time.time() - t0:.1f}s -> {args.out} obsm['{args.key_added}']")


def cmd_cluster(args) -> None:
    from . import tl
    from .io import read_slide
    from .output import _check_free, write_results

    _check_free(Path(args.out), args.overwrite)
    adata = read_slide(args.input)
    tl.cluster(adata, use_rep=args.use_rep, n_clusters=args.n_clusters, resolution=args.resolution,
               method=args.method, smooth_k=args.smooth_k, key_added=args.key_added, seed=args.seed)
    write_results(adata, args.out, input_path=args.input, obs={args.key_added: adata.obs[args.key_added]},
                  uns={args.key_added: adata.uns[args.key_added],
                       f"{args.key_added}_colors": adata.uns[f"{args.key_added}_colors"]},
                  overwrite=args.overwrite)
    if args.plot:
        from .plotting import save_spatial_panels

        png = Path(args.out).with_suffix(".png")
        save_spatial_panels(adata, [args.key_added], png)
        print(f"figure: {png}")
    counts = adata.obs[args.key_added].value_counts().sort_index()
    print(f"{len(counts)} clusters -> {args.out} obs['{args.key_added}']: " + ", ".join(f"{k}:{v}" for k, v in counts.items()))


def cmd_info(args) -> None:
    import json

    from .pretrained import load_model

    model = load_model(args.model, device="cpu")
    print(json.dumps({**model.describe(), "metadata": {k: v for k, v in model.metadata.items() if k != "import_report"}},
                     indent=2, default=str))
    if args.input:
        from .io import read_slide
        from .vocab import resolve_genes

        adata = read_slide(args.input, backed=True)
        print(resolve_genes(adata, model.vocab, gene_col=args.gene_col).report())


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="spgpt", description="spgpt: scGPT-spatial foundation model for spatial "
                                     "transcriptomics. Run `spgpt COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"spgpt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("embed", help="zero-shot spot/cell embeddings", description="Embed every cell/spot of a slide "
                       "with the model; writes a new .h5ad with obsm[KEY] (L2-normalised <cls> states).")
    _add_input_args(p)
    _add_model_args(p)
    _add_output_args(p)
    p.add_argument("--key-added", default="X_spgpt", help="obsm key for the embedding (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="cells per batch at full context (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for binning ties and gene subsampling (default: 0)")
    p.add_argument("--drop-empty", action="store_true", help="leave cells with no expressed vocabulary gene out "
                   "(NaN rows, flagged in obs) instead of stopping with an error")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("cluster", help="cluster an embedding into domains", description="Leiden (resolution "
                       "searched to give K clusters, or fixed) or k-means on obsm[USE_REP]; optional spatial smoothing.")
    p.add_argument("input", help=".h5ad with an embedding (e.g. from `spgpt embed`)")
    _add_output_args(p)
    p.add_argument("--use-rep", default="X_spgpt", help="obsm key of the embedding (default: %(default)s)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--n-clusters", type=int, help="number of clusters K")
    g.add_argument("--resolution", type=float, help="Leiden resolution")
    p.add_argument("--method", default="leiden", choices=["leiden", "kmeans"])
    p.add_argument("--smooth-k", type=int, default=0, help="majority vote over K spatial neighbours (0 = off)")
    p.add_argument("--key-added", default="spgpt_domain", help="obs column for the labels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="also write OUT.png with the clusters in space")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("info", help="describe a model (and its gene match on a slide)")
    _add_model_args(p)
    p.add_argument("input", nargs="?", help="optional slide to report the gene match for")
    p.add_argument("--gene-col")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    for noisy in ("anndata", "numba", "h5py", "fsspec", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except SpgptError as e:
        if os.environ.get("SPGPT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
