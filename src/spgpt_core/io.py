"""Reading, checking and writing slides.

A *slide* is an AnnData: cells/spots x genes in ``X``, coordinates in ``obsm['spatial']`` (x, y).
It comes from an ``.h5ad`` file or from one table of a SpatialData ``.zarr`` store. Every problem a
user can fix (missing or corrupt file, bad values, duplicate names, existing output) raises
:class:`InputError` naming the file or value and the fix, never a deep traceback.

Large slides are processed in row chunks (:func:`iter_row_chunks`), so a backed slide is never
loaded whole and sparse matrices stay sparse.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from .atomic import atomic_path
from .errors import InputError

if TYPE_CHECKING:
    import spatialdata

#: obs column pairs (x, y) used for coordinates when ``obsm['spatial']`` is absent, in order of preference.
OBS_COORDINATE_PAIRS = (
    ("x", "y"),
    ("X", "Y"),
    ("x_um", "y_um"),
    ("pixel_x", "pixel_y"),
    ("imagecol", "imagerow"),
    ("sdimx", "sdimy"),
    ("array_col", "array_row"),
    ("array_x", "array_y"),
)

_SPATIALDATA_HINT = 'Reading SpatialData .zarr stores needs the optional dependency: pip install "spgpt[spatialdata]".'


def read_slide(
    path: str | Path,
    *,
    table: str | None = None,
    coordinate_system: str | None = None,
    backed: bool = False,
) -> anndata.AnnData:
    """Read a slide from ``.h5ad``, a SpatialData ``.zarr`` directory or an instrument's output folder.

    ``backed=True`` keeps an ``.h5ad`` matrix on disk (read-only); SpatialData tables are always
    loaded into memory. For SpatialData, ``table`` picks the table when the store has several.
    Coordinates are the table's ``obsm['spatial']`` if present and no ``coordinate_system`` is
    asked for; otherwise the centroids of the shapes / points / labels the table annotates, in
    ``coordinate_system`` (default: the element's first one). ``uns['spgpt_source']`` records
    the path, table and coordinate system used. Any other directory is read as a Xenium, Visium HD
    (``table`` picks the bin size: 8, 16 or "cells"), MERSCOPE or CosMx output folder, in memory
    (:mod:`spgpt_core.vendors`).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path (an .h5ad file, a SpatialData .zarr directory "
                         "or an instrument's output folder).")
    suffix = path.suffix.lower()
    if suffix == ".h5ad" and path.is_file():
        if table is not None or coordinate_system is not None:
            raise InputError(
                f"{path} is an .h5ad file; table and coordinate_system only apply to SpatialData .zarr input. "
                "Drop them."
            )
        adata = _read_h5ad(path, backed)
    elif suffix == ".zarr" and path.is_dir():
        adata, table, coordinate_system = _read_spatialdata_table(path, table, coordinate_system)
    elif path.is_dir():
        # An instrument's output folder (Xenium, Visium HD, MERSCOPE, CosMx). Imported here, not at the
        # top: the vendor readers pull in pyarrow and h5py, which every CLI start would otherwise pay for.
        from .vendors import read_vendor

        return read_vendor(path, table=table, coordinate_system=coordinate_system)  # records its own source
    else:
        raise InputError(
            f"Cannot read {path}: expected an AnnData .h5ad file or a SpatialData .zarr directory, or an instrument's "
            "output folder (Xenium, Visium HD, MERSCOPE, CosMx). Convert other data to .h5ad (e.g. with scanpy)."
        )
    adata.uns["spgpt_source"] = {"path": str(path.resolve()), "table": table, "coordinate_system": coordinate_system}
    return adata


def _read_h5ad(path: Path, backed: bool) -> anndata.AnnData:
    try:
        return anndata.read_h5ad(path, backed="r" if backed else None)
    except Exception as e:
        raise InputError(
            f"Could not read {path} as an AnnData .h5ad file ({type(e).__name__}: {e}). The file may be corrupt, "
            "truncated or not an .h5ad; re-export or re-download it."
        ) from e


def _read_spatialdata_table(
    path: Path, table: str | None, coordinate_system: str | None
) -> tuple[anndata.AnnData, str, str | None]:
    """Return (table AnnData with obsm['spatial'], table name, coordinate system used)."""
    try:
        import spatialdata as sd  # optional extra: spatialdata
    except ImportError:
        raise InputError(f"Cannot read {path}: {_SPATIALDATA_HINT}") from None
    try:
        sdata = sd.read_zarr(path)
    except Exception as e:
        raise InputError(
            f"Could not read {path} as a SpatialData store ({type(e).__name__}: {e}). The store may be corrupt or "
            "written by an incompatible version; re-write it with spatialdata 0.7."
        ) from e

    names = list(sdata.tables.keys())
    if not names:
        raise InputError(
            f"{path} has no table; spgpt needs a table of gene expression per cell/spot. "
            "Add one with spatialdata.models.TableModel.parse (annotating the cell or spot shapes)."
        )
    if table is None:
        if len(names) > 1:
            raise InputError(f"{path} has several tables ({', '.join(names)}); choose one with --table (table=).")
        table = names[0]
    elif table not in names:
        raise InputError(f"{path} has no table '{table}'; available tables: {', '.join(names)}. Pass one of these.")

    adata = sdata.tables[table]
    if coordinate_system is not None or "spatial" not in adata.obsm:
        adata.obsm["spatial"], coordinate_system = _annotated_centroids(sdata, adata, table, coordinate_system)
    return adata, table, coordinate_system


def _annotated_centroids(
    sdata: spatialdata.SpatialData, adata: anndata.AnnData, table: str, coordinate_system: str | None
) -> tuple[np.ndarray, str]:
    """Centroids (x, y, float64) of the shapes/points/labels each table row annotates, in one coordinate system."""
    # optional extra: spatialdata (only reached once _read_spatialdata_table has imported it)
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    attrs = adata.uns.get("spatialdata_attrs") or {}
    regions, region_key, instance_key = attrs.get("region"), attrs.get("region_key"), attrs.get("instance_key")
    if regions is None or instance_key is None or instance_key not in adata.obs:
        raise InputError(
            f"Table '{table}' has no obsm['spatial'] and does not annotate any element "
            "(uns['spatialdata_attrs'] lacks region / instance_key), so there are no coordinates. "
            "Add obsm['spatial'] or re-create the table with "
            "TableModel.parse(region=..., region_key=..., instance_key=...)."
        )
    regions = [regions] if isinstance(regions, str) else list(regions)

    xy = np.full((adata.n_obs, 2), np.nan)
    for region in regions:
        if region not in sdata:
            raise InputError(
                f"Table '{table}' annotates '{region}', which is not in the store. Re-write the store with it."
            )
        element = sdata[region]
        systems = list(get_transformation(element, get_all=True))
        if coordinate_system is None:
            coordinate_system = systems[0]
        elif coordinate_system not in systems:
            raise InputError(
                f"Element '{region}' has no coordinate system '{coordinate_system}'; it has: {', '.join(systems)}. "
                "Pass one of these with --coordinate-system (coordinate_system=)."
            )
        try:
            centroids = sd.get_centroids(element, coordinate_system=coordinate_system).compute()
        except ValueError as e:
            raise InputError(
                f"Cannot compute centroids of '{region}' ({e}); tables must annotate shapes, points or labels."
            ) from e
        rows = np.ones(adata.n_obs, bool) if region_key is None else (adata.obs[region_key] == region).to_numpy()
        index = pd.Index(centroids.index.astype(str))
        if not index.is_unique:
            raise InputError(f"Element '{region}' has duplicate instance ids; make its index unique.")
        pos = index.get_indexer(adata.obs.loc[rows, instance_key].astype(str))
        if (pos < 0).any():
            raise InputError(
                f"{int((pos < 0).sum())} rows of table '{table}' point to instances missing from '{region}' "
                f"(obs['{instance_key}']). Make the table's instance ids match the element's index."
            )
        xy[rows] = centroids[["x", "y"]].to_numpy(np.float64)[pos]
    if np.isnan(xy).any():
        raise InputError(
            f"{int(np.isnan(xy).any(axis=1).sum())} rows of table '{table}' annotate none of {', '.join(regions)}; "
            f"fix obs['{region_key}'] so every row names an annotated element."
        )
    return xy, coordinate_system


def get_coordinates(adata: anndata.AnnData, required: bool = False) -> np.ndarray | None:
    """(n_obs, 2) float64 x, y from ``obsm['spatial']`` or the first known obs column pair; None if absent."""
    if "spatial" in adata.obsm:
        xy = np.array(adata.obsm["spatial"], dtype=np.float64)  # a copy: callers may modify it
        if xy.ndim != 2 or xy.shape[1] < 2:
            raise InputError(f"obsm['spatial'] has shape {xy.shape}; it must hold x and y columns (n_obs x 2).")
        return _finite_coordinates(xy[:, :2], "obsm['spatial']")
    for x, y in OBS_COORDINATE_PAIRS:
        if x in adata.obs and y in adata.obs:
            try:
                xy = adata.obs[[x, y]].to_numpy(np.float64)
            except (TypeError, ValueError):
                continue  # non-numeric columns of that name: try the next pair
            return _finite_coordinates(xy, f"obs['{x}'], obs['{y}']")
    if required:
        pairs = ", ".join(f"({x}, {y})" for x, y in OBS_COORDINATE_PAIRS)
        raise InputError(
            "The slide has no spatial coordinates: looked for obsm['spatial'] and the obs column pairs "
            f"{pairs}. Add them, e.g. adata.obsm['spatial'] = adata.obs[['x', 'y']].to_numpy()."
        )
    return None


def _finite_coordinates(xy: np.ndarray, where: str) -> np.ndarray:
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} cells have missing or infinite coordinates in {where}; "
            "drop those cells or fix their coordinates."
        )
    return xy


def iter_row_chunks(adata: anndata.AnnData, chunk_size: int = 4096, first: int = 0,
                    last: int | None = None) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, X[start:stop])`` as float32 CSR, reading one chunk at a time (also when backed).

    ``first`` / ``last``: only rows ``first..last-1`` (a share of the slide, e.g. one rank's)."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be at least 1, got {chunk_size}.")
    X = adata.X
    if X is None:
        raise InputError("The slide has no expression matrix (adata.X is None); put the counts in X.")
    if sp.issparse(X) and X.format == "csc":
        X = X.tocsr()  # row slices of CSC are slow; converting keeps it sparse
    last = adata.n_obs if last is None else min(last, adata.n_obs)
    for start in range(first, last, chunk_size):
        stop = min(start + chunk_size, last)
        yield start, stop, sp.csr_matrix(X[start:stop], dtype=np.float32)


def check_matrix(adata: anndata.AnnData, *, chunk_size: int = 4096) -> None:
    """Raise InputError for an empty matrix, duplicate names or NaN / infinite / negative values."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(
            f"The expression matrix is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "check the file and any filtering applied before."
        )
    for axis, names, fix in (
        ("gene", adata.var_names, "call adata.var_names_make_unique(), or pass --gene-col naming unique symbols"),
        ("cell", adata.obs_names, "call adata.obs_names_make_unique()"),
    ):
        dups = names[names.duplicated()].unique()
        if len(dups):
            shown = ", ".join(map(str, dups[:5])) + (", ..." if len(dups) > 5 else "")
            raise InputError(f"{len(dups)} {axis} name(s) occur more than once (e.g. {shown}); {fix}.")

    counts = {"NaN": 0, "infinite": 0, "negative": 0}
    first: dict[str, tuple[int, int]] = {}
    for start, _, chunk in iter_row_chunks(adata, chunk_size):
        data = chunk.data
        for kind, bad in (("NaN", np.isnan(data)), ("infinite", np.isinf(data)), ("negative", data < 0)):
            n = int(bad.sum())
            if n == 0:
                continue
            counts[kind] += n
            if kind not in first:
                k = int(np.argmax(bad))
                row = int(np.searchsorted(chunk.indptr, k, side="right")) - 1
                first[kind] = (start + row, int(chunk.indices[k]))
    parts = []
    for kind, n in counts.items():  # fixed order: NaN, infinite, negative
        if n:
            r, c = first[kind]
            parts.append(f"{n:,} {kind} value(s) (first at cell '{adata.obs_names[r]}', gene '{adata.var_names[c]}')")
    if parts:
        raise InputError(
            f"The expression matrix X has {'; '.join(parts)}. spgpt needs raw counts or non-negative normalised "
            "values: pass the raw counts (e.g. from adata.layers['counts'] or adata.raw), or replace NaN / infinite "
            "values and undo scaling / centring that made values negative."
        )


def write_h5ad(
    adata: anndata.AnnData, out: str | Path, *, overwrite: bool = False, input_path: str | Path | None = None
) -> Path:
    """Write ``.h5ad`` atomically (temp file + rename), never over the input and not over ``out`` unless asked."""
    out = Path(out).expanduser()
    if out.suffix != ".h5ad":
        raise InputError(f"Output {out} must end in .h5ad (use write_spatialdata for a .zarr store).")
    sources = [Path(input_path)] if input_path is not None else []
    if adata.isbacked:
        sources.append(Path(adata.filename))
    if any(out.resolve() == s.expanduser().resolve() for s in sources):
        raise InputError(f"Refusing to write over the input file {out}; choose another output path.")
    _check_free(out, overwrite)
    return write_atomically(out, adata.write_h5ad)


def write_atomically(out: Path, write) -> Path:
    """``write(tmp)`` into a temporary file renamed to ``out``: a failure leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            write(tmp)
    except Exception as e:
        raise InputError(f"Could not write {out} ({type(e).__name__}: {e}); nothing was written.") from e
    return out


def _check_free(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise InputError(f"Output {out} already exists; pass --overwrite (overwrite=True) or choose another path.")


def to_spatialdata(adata: anndata.AnnData, *, image_key: str | None = None) -> spatialdata.SpatialData:
    """Convert a slide into SpatialData: spot circles, a table annotating them and the Visium image if any.

    The circles ("spots") sit at ``get_coordinates`` in the "global" coordinate system (the slide's
    full-resolution pixel frame). If ``uns['spatial'][library]['images']`` holds a ``hires`` (or
    ``lowres``) image it becomes the "image" element, scaled into that frame by the library's
    ``tissue_hires_scalef`` (``tissue_lowres_scalef``). ``image_key`` selects the library when
    ``uns['spatial']`` has several. The circle radius is ``spot_diameter_fullres / 2`` when known,
    else half the median nearest-neighbour distance.
    """
    try:  # optional extra: spatialdata
        import spatialdata as sd
        from spatialdata.models import Image2DModel, ShapesModel, TableModel
        from spatialdata.transformations import Identity, Scale
    except ImportError:
        raise InputError(f"Cannot build a SpatialData object: {_SPATIALDATA_HINT}") from None

    xy = get_coordinates(adata, required=True)
    library_key, library = _visium_library(adata, image_key)
    scalefactors = library.get("scalefactors", {}) if library else {}

    images = {}
    if library:
        for res in ("hires", "lowres"):
            img = library.get("images", {}).get(res)
            scale = scalefactors.get(f"tissue_{res}_scalef")
            if img is not None and scale:
                img = np.asarray(img)
                cyx = img[np.newaxis] if img.ndim == 2 else np.moveaxis(img, -1, 0)
                to_fullres = Scale([1.0 / scale, 1.0 / scale], axes=("y", "x"))
                images["image"] = Image2DModel.parse(cyx, dims=("c", "y", "x"), transformations={"global": to_fullres})
                break

    diameter = scalefactors.get("spot_diameter_fullres")
    radius = float(diameter) / 2 if diameter else _default_radius(xy)
    circles = ShapesModel.parse(
        xy,
        geometry=0,  # circles
        radius=np.full(len(xy), radius),
        index=np.arange(len(xy)),
        transformations={"global": Identity()},
    )

    table = adata.to_memory() if adata.isbacked else adata.copy()
    if images:  # the image now lives in the "image" element; do not store it twice
        del table.uns["spatial"][library_key]
        if not table.uns["spatial"]:
            del table.uns["spatial"]
    region_key, instance_key = _unused("region", table.obs), _unused("instance_id", table.obs)
    table.obs[region_key] = pd.Categorical(["spots"] * table.n_obs)
    table.obs[instance_key] = np.arange(table.n_obs)
    table = TableModel.parse(table, region="spots", region_key=region_key, instance_key=instance_key)
    return sd.SpatialData(images=images, shapes={"spots": circles}, tables={"table": table})


def _visium_library(adata: anndata.AnnData, image_key: str | None) -> tuple[str | None, dict | None]:
    """(library key, ``uns['spatial'][library]``) in the Visium / scanpy layout, or (None, None)."""
    libraries = adata.uns.get("spatial")
    if not isinstance(libraries, dict) or not libraries:
        if image_key is not None:
            raise InputError(f"image_key '{image_key}' was given but the slide has no uns['spatial'] images.")
        return None, None
    if image_key is None:
        if len(libraries) > 1:
            raise InputError(
                f"uns['spatial'] holds several libraries ({', '.join(libraries)}); choose one with image_key=."
            )
        image_key = next(iter(libraries))
    if image_key not in libraries:
        raise InputError(f"uns['spatial'] has no library '{image_key}'; available: {', '.join(libraries)}.")
    return image_key, libraries[image_key]


def _default_radius(xy: np.ndarray) -> float:
    """Half the median distance to the nearest other spot: neighbouring circles just touch."""
    if len(xy) < 2:
        return 1.0
    dist, _ = cKDTree(xy).query(xy, k=2)
    nearest = dist[:, 1][dist[:, 1] > 0]
    return float(np.median(nearest)) / 2 if len(nearest) else 1.0


def _unused(name: str, obs: pd.DataFrame) -> str:
    """``name``, or ``name_1``, ``name_2``... so that user obs columns are never overwritten."""
    candidate, i = name, 0
    while candidate in obs.columns:
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def write_spatialdata(sdata: spatialdata.SpatialData, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a ``.zarr`` store atomically: into a temp directory beside ``out``, then swapped in."""
    out = Path(out).expanduser()
    if out.suffix != ".zarr":
        raise InputError(f"Output {out} must end in .zarr (use write_h5ad for an .h5ad file).")
    _check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            sdata.write(tmp, update_sdata_path=False)
    except Exception as e:
        raise InputError(f"Could not write {out} ({type(e).__name__}: {e}); nothing was changed.") from e
    return out
