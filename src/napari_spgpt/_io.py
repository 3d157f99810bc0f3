"""Loading slides for display: which table / coordinate system / image, and where the spots go.

No Qt and no napari here: this module turns a path into a :class:`LoadedSlide` (the AnnData read
by :func:`spgpt_core.io.read_slide`, the tissue image(s), spot positions in the image's pixel frame
and the spot diameter in those pixels). The reader, the sample data and the Load widget all build
their layers from it, so they show a slide the same way.

Frames. A Points layer of spots sits in the pixel frame of the chosen image, so the image needs no
transform and point sizes (diameters) are in image pixels. For a SpatialData store the table's
coordinates are the centroids of the annotated element in the chosen coordinate system; the image's
transformation into that coordinate system is inverted to bring them into image pixels. For an
``.h5ad`` in the Visium layout (``uns['spatial'][library]``) the coordinates are full-resolution
pixels and ``tissue_hires_scalef`` / ``tissue_lowres_scalef`` scale them onto the image.

anndata, h5py, scipy and spatialdata are imported when a slide is read so napari starts fast.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from spgpt_core.errors import InputError

log = logging.getLogger(__name__)

#: Above this many points, spots are drawn without borders and with flat shading (faster).
FAST_POINTS = 5_000
#: How cells are drawn: 'auto' (points up to _raster.RASTER_ABOVE cells, a raster above), 'points', 'raster'
DRAW_CHOICES = ("auto", "points", "raster")
#: Above this many cells, an instrument folder's cell outlines are not drawn (napari Shapes get slow).
MAX_OUTLINES = 20_000

AUTO = "auto"  # pick the image automatically
NO_IMAGE = ""  # load no image
VENDOR_IMAGE = "tissue image"  # an instrument folder's image, chosen by _load_vendor


def kind_of(path: str | Path) -> str | None:
    """'zarr' for a SpatialData store, 'h5ad' for an AnnData file, 'vendor' for an instrument's output
    folder (Xenium, Visium HD, MERSCOPE, CosMx), None for anything else."""
    p = Path(str(path).rstrip("/\\"))
    if p.suffix.lower() == ".h5ad" and p.is_file():
        return "h5ad"
    if p.suffix.lower() == ".zarr" and p.is_dir():
        # SpatialData stores hold element groups; a plain OME-Zarr image is left to other readers.
        if any((p / g).is_dir() for g in ("tables", "table")):
            return "zarr"
        return None
    if p.is_dir():
        from spgpt_core.vendors import detect_layout  # the core's detection: one list of layouts

        return "vendor" if detect_layout(p) is not None else None
    return None


def _path_and_kind(path: str | Path) -> tuple[Path, str]:
    """The path (no trailing slash, ~ expanded) and its kind; InputError when the plugin cannot read it."""
    from spgpt_core.errors import InputError

    path = Path(str(path).rstrip("/\\")).expanduser()
    kind = kind_of(path)
    if kind is None:
        raise InputError(
            f"Cannot open {path}: expected an AnnData .h5ad file, a SpatialData .zarr directory with a table or an "
            "instrument's output folder (Xenium, Visium HD, MERSCOPE, CosMx)."
        )
    return path, kind


# --------------------------------------------------------------------------------------------
# What a file holds (for the Load widget's choices)
# --------------------------------------------------------------------------------------------


@dataclass
class StoreInfo:
    """Tables, coordinate systems and images a slide file offers."""

    path: Path
    kind: str
    tables: list[str] = field(default_factory=list)
    #: table -> coordinate systems its annotated elements live in ([] = the table has only obsm['spatial'])
    table_systems: dict[str, list[str]] = field(default_factory=dict)
    #: coordinate system -> images with a transformation into it (h5ad: '' -> 'library/res')
    images: dict[str, list[str]] = field(default_factory=dict)

    def systems(self, table: str | None) -> list[str]:
        if table is None:
            table = self.tables[0] if self.tables else None
        systems = self.table_systems.get(table, []) if table else []
        return systems or sorted(self.images)  # a table with only obsm['spatial']: any system with an image

    def images_in(self, coordinate_system: str | None) -> list[str]:
        if self.kind == "h5ad":
            return self.images.get("", [])
        return self.images.get(coordinate_system or "", [])


def inspect_store(path: str | Path) -> StoreInfo:
    """List what a slide file offers without loading any expression matrix."""
    path, kind = _path_and_kind(path)
    if kind == "vendor":
        from spgpt_core.vendors import detect_layout, visium_hd  # h5py / pyarrow: only for instrument folders

        tables = visium_hd.tables(path) if detect_layout(path) == "visium_hd" else []
        return StoreInfo(path, kind, tables=tables, table_systems={}, images={"": [VENDOR_IMAGE]})
    if kind == "h5ad":
        import h5py  # only when a slide is read: napari starts fast

        try:
            with h5py.File(path, "r") as f:
                images = []
                spatial = f.get("uns/spatial")
                if spatial is not None:
                    for lib in spatial:
                        imgs = spatial[lib].get("images")
                        for res in ("hires", "lowres"):
                            if imgs is not None and res in imgs:
                                images.append(f"{lib}/{res}")
        except OSError as e:
            raise InputError(f"Could not read {path} as an .h5ad file ({e}); the file may be corrupt.") from e
        return StoreInfo(path, kind, tables=[], table_systems={}, images={"": images})

    # optional extra: spatialdata (and its zarr)
    import spatialdata as sd
    import zarr
    from spatialdata.transformations import get_transformation

    try:
        root = zarr.open_group(str(path), mode="r")
        tables = sorted(root["tables"].keys()) if "tables" in root else []
        sdata = sd.read_zarr(path, selection=("images", "labels", "shapes", "points"))
    except Exception as e:  # noqa: BLE001 - any reading problem is the user's file
        raise InputError(f"Could not read {path} as a SpatialData store ({type(e).__name__}: {e}).") from e
    element_systems = {}
    for kind_name in ("labels", "shapes", "points"):
        for name, element in getattr(sdata, kind_name).items():
            element_systems[name] = list(get_transformation(element, get_all=True))
    images: dict[str, list[str]] = {}
    for name, element in sdata.images.items():
        for cs in get_transformation(element, get_all=True):
            images.setdefault(cs, []).append(name)
    table_systems = {}
    for t in tables:
        regions = _table_regions(root, t)
        systems: list[str] | None = None
        for r in regions:
            own = element_systems.get(r, [])
            systems = own if systems is None else [s for s in systems if s in own]
        table_systems[t] = systems or []
    return StoreInfo(path, kind, tables=tables, table_systems=table_systems, images=images)


def _table_regions(root, table: str) -> list[str]:
    """Elements a table annotates, read from its uns without loading the table."""
    try:
        import anndata as ad  # ~2 s on import: only when a slide is read

        attrs = ad.io.read_elem(root["tables"][table]["uns"]["spatialdata_attrs"])
    except Exception:  # noqa: BLE001 - a table without annotation metadata
        return []
    region = attrs.get("region")
    if region is None:
        return []
    return [str(region)] if isinstance(region, str) else [str(r) for r in np.atleast_1d(region)]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class ImageData:
    """One image for napari: arrays (one per scale level), RGB or not, channel names."""

    name: str
    data: list  # numpy / dask arrays, (y, x, c) for RGB, (c, y, x) or (y, x) otherwise
    rgb: bool
    channel_names: list[str] | None = None

    @property
    def shape_yx(self) -> tuple[int, int]:
        a = self.data[0]
        return (a.shape[0], a.shape[1]) if self.rgb else (a.shape[-2], a.shape[-1])


@dataclass(eq=False)  # identity comparison (widgets compare slides; fields hold arrays)
class LoadedSlide:
    """A slide read for display (see the module docstring for the frames)."""

    adata: Any
    name: str
    source: str | None
    kind: str  # 'h5ad' | 'zarr' | 'vendor' | 'memory'
    table: str | None
    coordinate_system: str | None
    image: ImageData | None
    #: 3x3 affine taking the slide's coordinates (x, y, 1) to image pixels (x, y, 1)
    to_pixels: np.ndarray
    spot_diameter: float  # in image pixels
    points_yx: np.ndarray  # (n_obs, 2) napari (row, col) positions of every cell / spot
    notes: list[str] = field(default_factory=list)
    reference: str | None = None  # a matching reference .h5ad (the sample data ships one)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    busy: str | None = None  # name of the job running on this slide, if any
    gene_col: str | None = None  # var column with gene symbols (None: chosen automatically by spgpt_core)
    counts_layer: str | None = None  # layer with the raw counts when X is normalised (None: X; 'raw': .raw)
    outlines: list | None = None  # cell polygons as napari (y, x) arrays in image pixels (instrument folders)
    cancel_job: Any = None  # cancels the running job (set by the widget's job controls)
    closed: bool = False  # its spots layer was removed for good: a finishing job must not commit to it
    unsaved: list[str] = field(default_factory=list)  # results committed since it was opened or last exported
    raster: Any = None  # _raster.CellRaster when the cells are drawn as images (large slides), else None

    def __repr__(self) -> str:
        return (f"LoadedSlide({self.name!r}, {self.adata.n_obs:,} x {self.adata.n_vars:,}, kind={self.kind!r}, "
                f"table={self.table!r}, coordinate_system={self.coordinate_system!r}, "
                f"image={self.image.name if self.image else None!r}, drawn as {self.drawn_as})")

    @property
    def drawn_as(self) -> str:
        return "points" if self.raster is None else "raster"


def load_slide(
    path: str | Path,
    *,
    table: str | None = None,
    coordinate_system: str | None = None,
    image: str | None = AUTO,
    draw: str = "auto",
    name: str | None = None,
) -> LoadedSlide:
    """Read a slide file for display. ``image``: a name, ``AUTO`` (best guess) or ``NO_IMAGE``; ``draw``:
    one of :data:`DRAW_CHOICES` (every cell is drawn either way)."""
    if draw not in DRAW_CHOICES:
        raise InputError(f"draw={draw!r}: use one of {', '.join(DRAW_CHOICES)}")
    path, kind = _path_and_kind(path)
    name = name or path.stem
    if kind == "h5ad":
        slide = choose_counts(_load_h5ad(path, image=image, name=name))
    elif kind == "vendor":
        slide = _load_vendor(path, table=table, image=image, name=name)
    else:
        slide = choose_counts(_load_zarr(path, table=table, coordinate_system=coordinate_system, image=image,
                                         name=name))
    return with_raster(slide, draw)


def with_raster(slide: LoadedSlide, draw: str = "auto") -> LoadedSlide:
    """Give ``slide`` a cell raster when it is drawn as images (``draw='raster'``, or 'auto' above
    ``_raster.RASTER_ABOVE`` cells)."""
    from ._raster import RASTER_ABOVE, cell_raster

    n = slide.adata.n_obs
    if draw == "raster" or (draw == "auto" and n > RASTER_ABOVE):
        slide.raster = cell_raster(slide.points_yx, _spacing(slide.points_yx), slide.spot_diameter)
        if slide.raster.hidden:
            slide.notes.append(f"{slide.raster.hidden:,} of {n:,} cells share their pixel with a neighbour and "
                               "are hidden in the drawing (every analysis uses them).")
    elif n > RASTER_ABOVE:
        slide.notes.append(f"{n:,} cells drawn as points: the view may redraw slowly (the Load slide widget's "
                           f"'Draw cells as: auto' draws a raster above {RASTER_ABOVE:,} cells).")
    return slide


def choose_counts(slide: LoadedSlide) -> LoadedSlide:
    """Analyses read raw counts: when X looks log-normalised, use a count-like layer if there is one
    (the choice is shown in the notes and can be changed in the Model widget), else say so."""
    from spgpt_core.pp.counts import count_layers, log_normalised_reason  # anndata: only when a slide is read

    if log_normalised_reason(slide.adata) is None:
        return slide
    layers = count_layers(slide.adata)
    if layers:
        slide.counts_layer = layers[0]
        where = ".raw" if layers[0] == "raw" else f"layers['{layers[0]}']"
        slide.notes.append(f"X looks log-normalised; analyses use the raw counts in {where} "
                           "(change it under Model > Counts).")
    else:
        slide.notes.append("X looks log-normalised and no layer holds raw counts; spgpt expects raw counts, so "
                           "results will be worse. Load a file with the counts if you have one.")
    return slide


def from_adata(adata, *, name: str = "slide", image: str | None = AUTO, draw: str = "auto",
               source: str | None = None) -> LoadedSlide:
    """Display an in-memory AnnData (Visium layout for the image, if any)."""
    return with_raster(choose_counts(_from_visium_layout(adata, name=name, image=image, source=source,
                                                         kind="memory", notes=[])), draw)


def _load_h5ad(path: Path, *, image, name) -> LoadedSlide:
    from spgpt_core.io import read_slide  # anndata (~2 s on import): only when a slide is read

    adata = read_slide(path)
    return _from_visium_layout(adata, name=name, image=image, source=str(path), kind="h5ad", notes=[])


def _from_visium_layout(adata, *, name, image, source, kind, notes) -> LoadedSlide:
    from spgpt_core.io import get_coordinates  # anndata (~2 s on import): only when a slide is read

    xy = get_coordinates(adata, required=True)
    libraries = adata.uns.get("spatial") if isinstance(adata.uns.get("spatial"), dict) else {}
    choices = [f"{lib}/{res}" for lib, d in libraries.items() if isinstance(d, dict)
               for res in ("hires", "lowres") if res in (d.get("images") or {})]
    chosen = None
    if image == AUTO:
        chosen = choices[0] if choices else None
    elif image:
        if image not in choices:
            raise InputError(f"The slide has no image '{image}'; available: {', '.join(choices) or 'none'}.")
        chosen = image
    to_px = np.eye(3)
    img = None
    diameter_full = None
    if chosen is not None:
        lib, res = chosen.split("/")
        scalefactors = libraries[lib].get("scalefactors", {}) or {}
        scale = scalefactors.get(f"tissue_{res}_scalef")
        if not scale:
            notes.append(f"image {chosen} has no tissue_{res}_scalef; spots are drawn in raw coordinates without it")
        else:
            arr = np.asarray(libraries[lib]["images"][res])
            if arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0:
                arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
            img = ImageData(f"{name} image", [arr], rgb=arr.ndim == 3 and arr.shape[-1] in (3, 4))
            to_px = np.diag([float(scale), float(scale), 1.0])
        diameter_full = scalefactors.get("spot_diameter_fullres")
    elif libraries:
        lib = next(iter(libraries))
        diameter_full = (libraries[lib].get("scalefactors") or {}).get("spot_diameter_fullres") \
            if isinstance(libraries[lib], dict) else None
    xy_px = _apply(to_px, xy)
    if diameter_full:
        diameter = float(diameter_full) * _linear_scale(to_px)
    else:
        diameter = _spacing(xy_px)
    yx = xy_px[:, ::-1].copy()
    return LoadedSlide(adata, name, source, kind, None, None, img, to_px, diameter, yx, notes)


def _load_vendor(path: Path, *, table, image, name) -> LoadedSlide:
    """An instrument's folder: the table as the core reads it (µm), the tissue image via spatialdata_io.

    The image stays lazy (dask, multiscale where the instrument wrote a pyramid); cells are placed
    on it with the folder's own micrometre-to-pixel transform composed with the image's. Cell
    outlines are drawn for up to MAX_OUTLINES cells (a napari Shapes layer slows down beyond).
    """
    from spgpt_core.io import read_slide

    adata = read_slide(path, table=table)
    layout, notes = adata.uns["spgpt_source"]["layout"], []
    to_px, img, outlines = np.eye(3), None, None
    if image != NO_IMAGE and layout == "cosmx":
        notes.append("CosMx images are one per field of view; the cells are shown without them.")
    elif image != NO_IMAGE:
        try:
            img, to_px, outlines = _vendor_image(adata, name)
        except Exception as e:  # noqa: BLE001 - a missing or unreadable image must not stop the cells showing
            notes.append(f"The tissue image of {path.name} could not be read ({type(e).__name__}: {e}); "
                         "showing the cells without it.")
    if outlines is not None and len(outlines) > MAX_OUTLINES:
        notes.append(f"{len(outlines):,} cell outlines: not drawn above {MAX_OUTLINES:,} (the points show the cells).")
        outlines = None
    xy_px = _apply(to_px, adata.obsm["spatial"])
    bin_um = adata.uns["spgpt_source"].get("bin_size_um")
    diameter = bin_um * _linear_scale(to_px) if isinstance(bin_um, (int, float)) else _spacing(xy_px)
    yx = xy_px[:, ::-1].copy()
    return LoadedSlide(adata, name, str(path), "vendor", adata.uns["spgpt_source"]["table"], None, img, to_px,
                       diameter, yx, notes, outlines=outlines)


def _vendor_image(adata, name):
    """(image, micrometres -> image pixels, cell outlines as napari (y, x) pixel polygons or None)."""
    from spatialdata.transformations import get_transformation

    from spgpt_core import vendors

    system, um_to_system = vendors.um_to_global(adata)
    sdata = vendors.spatialdata(adata)
    names = [n for n, el in sdata.images.items() if system in get_transformation(el, get_all=True)]
    chosen = _best_image(names)
    if chosen is None:
        return None, np.eye(3), None
    element = sdata.images[chosen]
    px_from_system = np.linalg.inv(_affine(get_transformation(element, to_coordinate_system=system)))
    to_px = px_from_system @ um_to_system
    source = adata.uns["spgpt_source"]
    if source["layout"] == "xenium":  # its reader gives boundaries only with the whole matrix: read them in core
        polygons = vendors.xenium.cell_outlines(Path(source["path"]))
        outlines = None if polygons is None else [_apply(to_px, p)[:, ::-1] for p in polygons]
    elif source["layout"] == "visium_hd" and source["table"] != "cell_segmentations":
        outlines = None  # bins: the points are the squares
    else:
        outlines = _polygon_outlines(sdata, system, px_from_system)
    return _image_data(f"{name} {chosen}", element), to_px, outlines


def _polygon_outlines(sdata, system, px_from_system) -> list[np.ndarray] | None:
    """Exterior rings of the first polygon shapes element with a transformation into ``system``, in pixels."""
    from spatialdata.transformations import get_transformation

    for element in sdata.shapes.values():
        if system not in get_transformation(element, get_all=True) or \
                not element.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).all():
            continue
        to_px = px_from_system @ _affine(get_transformation(element, to_coordinate_system=system))
        rings = [np.asarray((g.geoms[0] if g.geom_type == "MultiPolygon" else g).exterior.coords)[:, :2]
                 for g in element.geometry]
        return [_apply(to_px, r)[:, ::-1] for r in rings]
    return None


def _affine(transformation) -> np.ndarray:
    return np.asarray(transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")),
                      dtype=np.float64)


def _load_zarr(path: Path, *, table, coordinate_system, image, name) -> LoadedSlide:
    # optional extra: spatialdata; spgpt_core.io imports anndata (~2 s): only when a slide is read
    import spatialdata as sd
    from spatialdata.transformations import get_transformation
    from spgpt_core.io import read_slide

    info = inspect_store(path)
    notes: list[str] = []
    if not info.tables:
        raise InputError(f"{path} has no table; spgpt needs a table of gene expression per cell/spot.")
    if table is None:
        table = info.tables[0]
        if len(info.tables) > 1:
            notes.append(f"{path.name} has {len(info.tables)} tables ({', '.join(info.tables)}); showing "
                         f"'{table}'. Pick another in the spgpt Load slide widget.")
    elif table not in info.tables:
        raise InputError(f"{path} has no table '{table}'; available tables: {', '.join(info.tables)}.")
    annotated = bool(info.table_systems.get(table))
    systems = info.systems(table)
    if coordinate_system is None:
        with_image = [s for s in systems if info.images_in(s)]
        coordinate_system = (with_image or systems or [None])[0]
        if len(systems) > 1:
            notes.append(f"table '{table}' has coordinates in {', '.join(systems)}; using '{coordinate_system}'.")
    elif systems and coordinate_system not in systems:
        raise InputError(f"Table '{table}' has no coordinates in '{coordinate_system}'; "
                         f"available coordinate systems: {', '.join(systems)}.")

    adata = read_slide(path, table=table, coordinate_system=coordinate_system if annotated else None)
    if not annotated:
        notes.append(f"table '{table}' annotates no element; its obsm['spatial'] is taken to be in "
                     f"'{coordinate_system}'.")
    sdata = sd.read_zarr(path, selection=("images", "shapes"))

    images = info.images_in(coordinate_system)
    chosen = None
    if image == AUTO:
        chosen = _best_image(images)
    elif image:
        if image not in images:
            raise InputError(f"Coordinate system '{coordinate_system}' has no image '{image}'; "
                             f"available: {', '.join(images) or 'none'}.")
        chosen = image
    to_px = np.eye(3)
    img = None
    if chosen is not None:
        element = sdata.images[chosen]
        to_cs = get_transformation(element, to_coordinate_system=coordinate_system)
        a = np.asarray(to_cs.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)
        to_px = np.linalg.inv(a)
        img = _image_data(f"{name} {chosen}", element)

    xy_px = _apply(to_px, np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2])
    diameter = _element_diameter(sdata, adata, coordinate_system) if annotated else None
    diameter = diameter * _linear_scale(to_px) if diameter else _spacing(xy_px)
    yx = xy_px[:, ::-1].copy()
    return LoadedSlide(adata, name, str(path), "zarr", table, coordinate_system, img, to_px, diameter, yx, notes)


def _best_image(names: list[str]) -> str | None:
    """Prefer a 'hires' image (Visium), then anything but 'lowres', then the first."""
    if not names:
        return None
    for test in (lambda n: "hires" in n.lower(), lambda n: "lowres" not in n.lower()):
        hits = [n for n in names if test(n)]
        if hits:
            return hits[0]
    return names[0]


def _image_data(name: str, element) -> ImageData:
    """napari arrays for a SpatialData image (DataArray or multiscale DataTree), lazily (dask)."""
    import xarray as xr  # optional extra: spatialdata (xarray comes with it)

    if isinstance(element, xr.DataTree):  # multiscale: scale0, scale1, ...
        levels = []
        for key in sorted(element.children, key=lambda k: int(str(k).replace("scale", "") or 0)):
            ds = element[key].ds
            levels.append(next(iter(ds.data_vars.values())))
    else:
        levels = [element]
    first = levels[0]
    channels = [str(c) for c in first.coords["c"].values] if "c" in first.coords else None
    n_c = first.sizes.get("c", 1)
    rgb = n_c in (3, 4) and (first.dtype == np.uint8 or (channels or [])[:3] == ["r", "g", "b"])
    data = []
    for lev in levels:
        arr = lev.data
        if "c" not in lev.dims:
            data.append(arr)
        elif rgb:
            data.append(arr.transpose(1, 2, 0))
        elif n_c == 1:
            data.append(arr[0])
        else:
            data.append(arr)
    return ImageData(name, data, rgb=rgb, channel_names=channels if (n_c > 1 and not rgb) else None)


def _element_diameter(sdata, adata, coordinate_system) -> float | None:
    """Median spot/cell diameter of the annotated shapes, in the coordinate system's units."""
    from spatialdata.transformations import get_transformation  # optional extra: spatialdata

    attrs = adata.uns.get("spatialdata_attrs") or {}
    regions = attrs.get("region")
    regions = [regions] if isinstance(regions, str) else list(regions or [])
    for region in regions:
        if region not in sdata.shapes:
            continue
        gdf = sdata.shapes[region]
        t = get_transformation(gdf, to_coordinate_system=coordinate_system)
        scale = _linear_scale(np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))))
        if "radius" in gdf.columns:
            return 2.0 * float(np.median(np.asarray(gdf["radius"], dtype=float))) * scale
        areas = gdf.geometry.area.to_numpy()
        if len(areas):
            return 2.0 * float(np.sqrt(np.median(areas) / np.pi)) * scale
    return None


def _apply(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ affine[:2, :2].T + affine[:2, 2]


def _linear_scale(affine: np.ndarray) -> float:
    """Isotropic scale of an affine (sqrt |det| of its linear part)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine, dtype=float)[:2, :2]))))


def _spacing(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance: the spot size when none is recorded."""
    from scipy.spatial import cKDTree  # scipy: only when a slide is read, napari starts fast


    if len(xy) < 2:
        return 10.0
    sample = xy if len(xy) <= 20_000 else xy[np.random.default_rng(0).choice(len(xy), 20_000, replace=False)]
    dist, _ = cKDTree(xy).query(sample, k=2)
    d = dist[:, 1][dist[:, 1] > 0]
    return float(np.median(d)) if len(d) else 10.0
