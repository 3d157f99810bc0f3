"""Cells as a raster: every cell owns at least one pixel of an integer image (no Qt, no napari).

napari draws a Points layer of N cells with one GL point sprite each; under Xvfb's software OpenGL
(llvmpipe) that costs ~10 ms per 1,000 points per frame at full view (bench/results/gui_scale.md),
so above :data:`RASTER_ABOVE` cells a slide is drawn as images instead, whose frame time does not
depend on the number of cells:

* the slide: a Labels layer of cell ids (pixel value ``i + 1`` is cell ``i``, 0 is background),
  which hovers the cell's name and ``obs`` columns;
* categorical overlays (domains, dominant type): a Labels layer of category codes + 1;
* continuous overlays (proportions, imputed genes): an Image layer of the values, background below
  the colour scale's transparent bottom.

Pixels are about a quarter of a cell (half the median nearest-neighbour distance on a side). Each
pixel near a cell goes to the nearest-ish cell (discs splatted far-to-near, then every centre
pixel); a cell that lost its centre pixel to a neighbour (centres closer than a pixel) is moved to
a free neighbouring pixel, so every cell stays visible. ``hidden`` counts cells that found none.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

#: Slides with more cells are drawn as rasters (see the module docstring and bench/gui_scale.py).
RASTER_ABOVE = 10_000
#: Longest raster side in pixels (a 4096 x 4096 int32 image is 64 MB; GL textures are split above).
MAX_SIDE = 4096


@dataclass(eq=False)
class CellRaster:
    """Cell ids per pixel, and where the pixels sit in the slide's napari (row, col) frame."""

    ids: np.ndarray  # (H, W) int32: 0 background, i + 1 = cell i
    scale: float  # pixel size in the slide's image-pixel units
    translate: tuple[float, float]  # (row, col) of pixel (0, 0)'s centre
    n_cells: int
    hidden: int  # cells with no pixel (0 unless more than ~MAX_SIDE**2 / 4 cells are crowded together)

    _cell_pixel: np.ndarray | None = None

    @property
    def cell_pixel(self) -> np.ndarray:
        """(n_cells,) flat index of one pixel each cell owns (-1 for hidden cells)."""
        if self._cell_pixel is None:
            flat = self.ids.ravel()
            labels, first = np.unique(flat, return_index=True)
            pixel = np.full(self.n_cells + 1, -1, dtype=np.int64)
            pixel[labels] = first
            self._cell_pixel = pixel[1:]
        return self._cell_pixel

    @property
    def layer_kwargs(self) -> dict:
        return {"scale": (self.scale, self.scale), "translate": tuple(self.translate)}


def cell_raster(yx: np.ndarray, spacing: float, diameter: float | None = None,
                max_side: int = MAX_SIDE) -> CellRaster:
    """Rasterise cells at napari (row, col) positions ``yx``; ``spacing``: median nearest-neighbour
    distance, ``diameter``: drawn cell size (default: the spacing), both in the same units."""
    yx = np.asarray(yx, dtype=np.float64)
    n = len(yx)
    diameter = float(diameter or spacing)
    lo = yx.min(axis=0) - diameter
    extent = yx.max(axis=0) + diameter - lo
    px = max(spacing / 2.0, float(extent.max()) / max_side, 1e-9)
    shape = tuple(int(s) for s in np.ceil(extent / px).astype(int) + 1)
    ids = np.zeros(shape, dtype=np.int32)
    centre = np.rint((yx - lo) / px).astype(np.int64)
    cy, cx = centre[:, 0], centre[:, 1]
    label = np.arange(1, n + 1, dtype=np.int32)
    radius = max(int(np.ceil(diameter / 2.0 / px)), 1)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if 0 < dy * dy + dx * dx <= radius * radius]
    offsets.sort(key=lambda o: -(o[0] ** 2 + o[1] ** 2))  # far first: nearer cells overwrite
    for dy, dx in offsets:
        y, x = cy + dy, cx + dx
        ok = (y >= 0) & (y < shape[0]) & (x >= 0) & (x < shape[1])
        ids[y[ok], x[ok]] = label[ok]
    ids[cy, cx] = label
    hidden = _place_lost(ids, cy, cx, label)
    return CellRaster(ids, float(px), (float(lo[0]), float(lo[1])), n, hidden)


def _place_lost(ids: np.ndarray, cy, cx, label) -> int:
    """Give each cell whose centre pixel a neighbour took a nearby pixel whose owner keeps another one;
    the number of cells left without a pixel."""
    lost = np.flatnonzero(ids[cy, cx] != label)
    if lost.size == 0:
        return 0
    counts = np.bincount(ids.ravel(), minlength=len(label) + 1)
    rings = [(dy, dx) for r in (1, 2, 3) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
             if max(abs(dy), abs(dx)) == r]
    for dy, dx in rings:
        if lost.size == 0:
            break
        y, x = cy[lost] + dy, cx[lost] + dx
        inside = (y >= 0) & (y < ids.shape[0]) & (x >= 0) & (x < ids.shape[1])
        cand, y, x = lost[inside], y[inside], x[inside]
        owner = ids[y, x]
        free = (owner == 0) | (counts[owner] > 1)
        cand, y, x, owner = cand[free], y[free], x[free], owner[free]
        flat = y * ids.shape[1] + x
        _, first = np.unique(flat, return_index=True)  # one lost cell per pixel
        cand, y, x, owner = cand[first], y[first], x[first], owner[first]
        # an owner giving up several pixels at once must keep one: allow one pixel per owner per ring
        _, once = np.unique(owner, return_index=True)
        keep = np.zeros(len(owner), dtype=bool)
        keep[once] = True
        keep |= owner == 0
        cand, y, x, owner = cand[keep], y[keep], x[keep], owner[keep]
        ids[y, x] = label[cand]
        np.subtract.at(counts, owner, 1)
        counts[label[cand]] += 1
        lost = np.setdiff1d(lost, cand, assume_unique=True)
    return int(lost.size)


def category_raster(raster: CellRaster, codes: np.ndarray) -> np.ndarray:
    """Per-pixel ``codes + 1`` (0 background) from per-cell integer codes (-1 = missing -> 0 as well)."""
    codes = np.asarray(codes)
    # uint8 up to 255 categories: napari maps uint8 labels to colours through a small lookup table, 4-10x
    # faster than the per-pixel (numba) mapping it needs for int32, which every re-run's update pays on the
    # GUI thread (16M pixels: add 0.5 vs 2.1 s, update 0.1-0.2 vs 1.0 s; the first uint8 layer of a session
    # costs ~2 s once)
    n = int(codes.max(initial=-1)) + 2
    dtype = np.uint8 if n <= 2 ** 8 else np.uint16 if n <= 2 ** 16 else np.int32
    lut = np.zeros(raster.n_cells + 1, dtype=dtype)
    lut[1:] = np.where(codes >= 0, codes + 1, 0)
    return per_pixel(lut, raster)


def value_raster(raster: CellRaster, values: np.ndarray, background: float) -> np.ndarray:
    """Per-pixel float32 values from per-cell values; background (and NaN cells) get ``background``."""
    v = np.asarray(values, dtype=np.float32)
    lut = np.empty(raster.n_cells + 1, dtype=np.float32)
    lut[0] = background
    lut[1:] = np.where(np.isfinite(v), v, background)
    return per_pixel(lut, raster)


def per_pixel(lut: np.ndarray, raster: CellRaster) -> np.ndarray:
    """``lut[raster.ids]``, ids being 0..n_cells by construction: ``take`` without the bounds checks is
    ~1.8x faster than fancy indexing (16M pixels: 95 vs 173 ms), time spent on the GUI thread per overlay."""
    return np.take(lut, raster.ids, mode="clip")


def colorbar_while_visible(layer, wanted: bool) -> None:
    """Show the layer's colorbar only while the layer is visible: building its vispy overlay takes ~0.1 s,
    and the per-type / per-gene layers are added hidden, five or more at a time, on the GUI thread."""
    layer.metadata["colorbar"] = bool(wanted)
    layer.colorbar.visible = bool(wanted) and layer.visible
    if layer not in _COLORBAR_FOLLOWS:
        layer.events.visible.connect(
            lambda _e, la=layer: setattr(la.colorbar, "visible", la.visible and la.metadata.get("colorbar", False)))
        _COLORBAR_FOLLOWS.add(layer)


_COLORBAR_FOLLOWS: weakref.WeakSet = weakref.WeakSet()  # layers whose colorbar already follows their visibility


def same_colors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.allclose(np.asarray(a[k]), np.asarray(b[k])) for k in a)
