"""Arguments shared by several subcommands.

Heavy modules are imported inside the functions that run a command so ``spgpt --help`` stays fast.
"""


from __future__ import annotations

import argparse

from ..params import DEFAULT_N_TOP_GENES


def positive_int(text: str) -> int:
    """argparse type for counts such as --n-clusters: refused before any work starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="model: 'default' (shipped), a model directory (spgpt or scGPT format) or "
                        "'random:SIZE[:SEED]' (untrained; sizes tiny, small, scgpt-human). Default: %(default)s")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")


def add_store_args(p: argparse.ArgumentParser) -> None:
    """Which table and coordinate system of a SpatialData store to read."""
    p.add_argument("--table", help="SpatialData table to use when the store has several; for a Visium HD folder the "
                                   "bin size: 8 (default), 16 or cells (Space Ranger 4 segmentation)")
    p.add_argument("--coordinate-system", help="SpatialData coordinate system for the cell / spot centroids "
                                               "(default: the table's obsm['spatial'], else the first one)")


def add_counts_arg(p: argparse.ArgumentParser, reference: bool = False, several: bool = False) -> None:
    """--counts-layer (or --reference-counts-layer): where the raw counts are when X is normalised."""
    if reference:
        p.add_argument("--reference-counts-layer", metavar="LAYER",
                       help="reference layer holding raw counts when its X is normalised ('raw': .raw; default: X)")
        return
    p.add_argument("--counts-layer", metavar="LAYER",
                   help="layer holding the raw counts when X is normalised, e.g. counts ('raw': .raw; default: X)"
                   + ("; one for all slides or comma-separated per slide" if several else "")
                   + ". The output keeps the input's X")


def add_input_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    what = ("a .h5ad file, SpatialData .zarr directory, or an instrument's output folder (10x Xenium, 10x Visium HD "
            "outs/, Vizgen MERSCOPE region, NanoString CosMx export)")
    if several:
        p.add_argument("input", nargs="+", help=f"slides: each {what}")
    else:
        p.add_argument("input", help=f"slide: {what}")
    add_store_args(p)
    add_counts_arg(p)
    p.add_argument("--gene-col", help="var column holding gene symbols (default: chosen automatically)")
    p.add_argument("--modality", help="technology (visium, visium_hd, xenium, merfish, cosmx, starmap, osmfish, "
                                      "seqfish, smfish, verafish, slideseq, st, stereoseq, scrna); default: inferred")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output .h5ad (a new file; the input is never modified)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def read_input(args, backed: bool):
    from ..io import read_slide

    return read_slide(args.input, table=getattr(args, "table", None),
                      coordinate_system=getattr(args, "coordinate_system", None), backed=backed)


def add_memory_args(p: argparse.ArgumentParser) -> None:
    """The two knobs of the model's memory: cells per batch and tokens per cell."""
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="cells per batch at full context; lower it on a GPU out-of-memory error (default: %(default)s)")
    p.add_argument("--max-seq-len", type=positive_int, default=None, metavar="TOKENS",
                   help="at most this many tokens (<cls> + expressed genes) per cell, below the model's context; "
                        "attention memory grows with its square (default: the model's context)")


def add_hvg_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-top-genes", type=int, default=DEFAULT_N_TOP_GENES, metavar="N",
                   help="give the model the N most variable matched genes (seurat flavour; default %(default)s, as "
                        "the PCA baseline); 0 = every matched gene. Panels with fewer genes are used whole")


def n_top_genes(args):
    return args.n_top_genes or None
