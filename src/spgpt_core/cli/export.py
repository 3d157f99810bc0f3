"""``spgpt export``: a slide with its results as a per-spot ``.csv``, an ``.h5ad`` or a SpatialData ``.zarr``
(the plugin's Export widget runs the same core writers).

Heavy modules are imported inside each command so ``spgpt --help`` stays fast.
"""


from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ._common import add_store_args, read_input

FORMATS = (".csv", ".h5ad", ".zarr")


def cmd_export(args) -> None:
    from ..io import _check_free, write_h5ad
    from ..output import write_results_csv, write_results_zarr

    out = Path(args.out)
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise InputError(f"--out {out}: the format follows the suffix; use one of {', '.join(FORMATS)}")
    if out.exists() and out.resolve() == Path(args.input).expanduser().resolve():
        raise InputError(f"refusing to write over the input {out}; choose another --out path")
    _check_free(out, args.overwrite)  # before the slide is read
    if args.include_embedding and fmt != ".csv":
        raise InputError("--include-embedding only applies to .csv output (.h5ad and .zarr keep every obsm)")
    adata = read_input(args, backed=False)
    if fmt == ".csv":
        written = write_results_csv(adata, out, overwrite=args.overwrite, include_embedding=args.include_embedding)
    elif fmt == ".h5ad":
        written = write_h5ad(adata, out, overwrite=args.overwrite, input_path=args.input)
    else:  # a store's images, shapes and other tables come along
        source = adata.uns.get("spgpt_source", {})
        store = args.input if Path(args.input).suffix.lower() == ".zarr" else None
        written = write_results_zarr(adata, out, source_store=store, table=source.get("table"),
                                     overwrite=args.overwrite)
    print(f"{adata.n_obs:,} spots -> {written}")


def register(sub) -> None:
    p = sub.add_parser("export", help="write a slide and its results as .csv (one row per spot), .h5ad or .zarr",
                       description="The slide's coordinates, obs columns (domains, dominant cell types, ...) and "
                       "result blocks (proportions, imputed genes) as one row per spot in a .csv; or the whole "
                       "slide as .h5ad or a SpatialData .zarr. The format follows the --out suffix.")
    p.add_argument("input", help="slide with results (.h5ad or SpatialData .zarr), e.g. the output of spgpt domains")
    add_store_args(p)
    p.add_argument("--out", required=True, help="output .csv, .h5ad or .zarr (a new file; the input is never modified)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--include-embedding", action="store_true", help="also write the embedding's columns (.csv)")
    p.set_defaults(func=cmd_export)
