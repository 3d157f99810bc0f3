"""napari layers for slides and results (main thread only).

A *slide layer* is the Points layer of a slide's spots (for slides above ``_raster.RASTER_ABOVE`` cells,
a Labels layer of its cell raster: see ``_raster.py``); its ``metadata['spgpt_slide']`` holds the
:class:`~napari_spgpt._io.LoadedSlide` (the AnnData every widget works on). *Result layers*
(domains, proportions, imputed genes, QC panels) are further Points layers at the same positions
(Labels / Image layers of the cell raster for large slides)
whose ``metadata['spgpt_result_of']`` names the slide's uid; running a widget again updates its
layers in place instead of piling up new ones.

Colours come from ``layer.features``: categorical columns (domains, dominant type) use a
``{category: colour}`` map taken from ``uns['<key>_colors']``; continuous columns (proportions,
expression) use a colormap with explicit contrast limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from spgpt_core.pl import category_colors

from ._io import FAST_POINTS, LoadedSlide

if TYPE_CHECKING:
    import napari

SLIDE_KEY = "spgpt_slide"
RESULT_KEY = "spgpt_result_of"
KIND_KEY = "spgpt_kind"
MISSING = "n/a"
MISSING_COLOR = "#7f7f7f"
BASE_COLOR = "#f0f0f0"


# --------------------------------------------------------------------------------------------
# Building layer data tuples (reader, sample data, Load widget)
# --------------------------------------------------------------------------------------------


def slide_layer_tuples(slide: LoadedSlide) -> list[tuple]:
    """Image layer(s) first, then cell outlines if any, then the spots: what the reader returns."""
    return [*image_layer_tuples(slide), *outline_layer_tuples(slide), spots_layer_tuple(slide)]


def outline_layer_tuples(slide: LoadedSlide) -> list[tuple]:
    if not slide.outlines:
        return []
    kwargs = {"name": f"{slide.name} cell outlines", "shape_type": "polygon", "edge_color": "#ffffff",
              "face_color": "transparent", "edge_width": max(slide.spot_diameter / 25, 0.5), "opacity": 0.7,
              "metadata": {RESULT_KEY: slide.uid, KIND_KEY: "outlines"}}
    return [(slide.outlines, kwargs, "shapes")]


def image_layer_tuples(slide: LoadedSlide) -> list[tuple]:
    img = slide.image
    if img is None:
        return []
    data = img.data if len(img.data) > 1 else img.data[0]
    kwargs: dict[str, Any] = {"name": img.name, "rgb": img.rgb, "multiscale": len(img.data) > 1,
                              "metadata": {RESULT_KEY: slide.uid, KIND_KEY: "image"}}
    if img.channel_names and not img.rgb:
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{img.name} {c}" for c in img.channel_names]
        kwargs["blending"] = "additive"
        kwargs["metadata"] = [{RESULT_KEY: slide.uid, KIND_KEY: "image"} for _ in img.channel_names]
    return [(data, kwargs, "image")]


def spots_layer_tuple(slide: LoadedSlide) -> tuple:
    """Every cell / spot: a Points layer, or for large slides a Labels layer of the cell raster (one
    label per cell, hovering its name and obs columns)."""
    meta = {SLIDE_KEY: slide, KIND_KEY: "spots"}
    features = obs_features(slide)
    if slide.raster is not None:
        from napari.utils.colormaps import DirectLabelColormap  # napari: only when a slide is shown

        features.insert(0, "index", np.arange(1, slide.adata.n_obs + 1))  # label i + 1 is cell i
        # result overlays are uint8 category rasters (_raster.category_raster); napari compiles its uint8 label
        # colouring (numba, 2-3 s, once per process) on first use: pay it while the slide opens, not in the
        # final update of the first result
        DirectLabelColormap(color_dict={None: BASE_COLOR, 0: "transparent"}).map(np.zeros(1, dtype=np.uint8))
        kwargs = {"name": f"{slide.name} spots", "features": features, "opacity": 0.6, "metadata": meta,
                  "colormap": DirectLabelColormap(color_dict={None: BASE_COLOR, 0: "transparent"}),
                  **slide.raster.layer_kwargs}
        return (slide.raster.ids, kwargs, "labels")
    kwargs = point_style_kwargs(slide)
    kwargs.update(name=f"{slide.name} spots", features=features, face_color=BASE_COLOR, opacity=0.6, metadata=meta)
    return (slide.points_yx, kwargs, "points")


def point_style_kwargs(slide: LoadedSlide) -> dict:
    """Size (the spot diameter in image pixels), border and shading suited to the number of points."""
    kwargs: dict[str, Any] = {"size": max(float(slide.spot_diameter), 1e-3), "border_width": 0,
                              "canvas_size_limits": (1, 10000)}
    if slide.adata.n_obs > FAST_POINTS:
        kwargs["shading"] = "none"
    return kwargs


def obs_features(slide: LoadedSlide, columns: list[str] | None = None) -> pd.DataFrame:
    """The table's ``obs``, one row per cell, with the cell/spot name first (hover shows it)."""
    obs = slide.adata.obs if columns is None else slide.adata.obs[columns]
    df = pd.DataFrame({"spot": obs.index.astype(str)})
    for col in obs.columns:
        values = obs[col]
        if values.dtype == object:
            values = values.astype(str)
        df[str(col)] = values.to_numpy() if not isinstance(values.dtype, pd.CategoricalDtype) else values.values
    return df


def as_values(values) -> np.ndarray | pd.Categorical:
    """A per-cell array (or Categorical) from an array, Series or Categorical."""
    if isinstance(values, pd.Series):
        return values.values
    return values


# --------------------------------------------------------------------------------------------
# Finding slides and their layers
# --------------------------------------------------------------------------------------------


def get_slide(layer) -> LoadedSlide | None:
    meta = getattr(layer, "metadata", None) or {}
    slide = meta.get(SLIDE_KEY)
    return slide if isinstance(slide, LoadedSlide) else None


def slide_layers(viewer: napari.Viewer) -> list:
    return [layer for layer in viewer.layers if get_slide(layer) is not None]


def slide_choices(viewer: napari.Viewer) -> list[tuple[str, LoadedSlide]]:
    """(layer name, slide) pairs for the widgets' slide combo boxes."""
    return [(layer.name, get_slide(layer)) for layer in slide_layers(viewer)]


def base_layer(viewer: napari.Viewer, slide: LoadedSlide):
    for layer in viewer.layers:
        if get_slide(layer) is slide:
            return layer
    return None


def source_exists(adata, source) -> bool:
    """Whether the AnnData still holds what a result layer shows (``metadata['source']``)."""
    slot, key, *column = source
    if slot == "obs":
        return key in adata.obs
    if slot == "obsm" and key in adata.obsm:
        return not column or column[0] in {str(c) for c in getattr(adata.obsm[key], "columns", [])}
    return False


def source_values(adata, source) -> np.ndarray:
    """The per-cell values a result layer shows, read from the AnnData (as strings for categories)."""
    slot, key, *column = source
    if slot == "obs":
        values = adata.obs[key]
        return values.astype(str).to_numpy() if not pd.api.types.is_numeric_dtype(values) else values.to_numpy()
    table = adata.obsm[key]
    return np.asarray(table.set_axis([str(c) for c in table.columns], axis=1)[column[0]], dtype=float)


def prune_results(viewer: napari.Viewer, slide: LoadedSlide) -> list[str]:
    """Remove the slide's result layers whose data the AnnData no longer holds; their names."""
    stale = [layer for layer in result_layers(viewer, slide)
             if "source" in layer.metadata and not source_exists(slide.adata, layer.metadata["source"])]
    for layer in stale:
        viewer.layers.remove(layer)
    return [layer.name for layer in stale]


def result_layers(viewer: napari.Viewer, slide: LoadedSlide, kind: str | None = None) -> list:
    return [layer for layer in viewer.layers
            if (layer.metadata or {}).get(RESULT_KEY) == slide.uid
            and (kind is None or (layer.metadata or {}).get(KIND_KEY) == kind)]


# --------------------------------------------------------------------------------------------
# Colour styles
# --------------------------------------------------------------------------------------------


def categorical(values, categories=None) -> pd.Categorical:
    """A Categorical with missing values as the explicit category ``n/a``."""
    cat = pd.Categorical(values, categories=categories)
    if cat.isna().any():
        cat = cat.add_categories([MISSING]).fillna(MISSING) if MISSING not in cat.categories else cat.fillna(MISSING)
    return cat


def categorical_colors(categories, colors: list[str] | None) -> dict[str, str]:
    """{category: hex colour}, from the result's ``uns['<key>_colors']`` where present."""
    cats = [str(c) for c in categories if str(c) != MISSING]
    colors = list(colors) if colors is not None and len(colors) >= len(cats) else category_colors(len(cats))
    mapping = {c: str(col) for c, col in zip(cats, colors[: len(cats)], strict=True)}
    mapping[MISSING] = MISSING_COLOR
    return mapping


def apply_categorical(layer, column: str, mapping: dict[str, str]) -> None:
    layer.face_color_cycle = dict(mapping)
    layer.face_color = column
    layer.face_color_mode = "cycle"
    layer.refresh_colors(update_color_mapping=False)


def robust_limits(values, lower: float | None = 0.0, q: float = 99.0) -> tuple[float, float]:
    """Contrast limits: ``lower`` (or the 1st percentile) to the ``q``-th percentile of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo = float(np.percentile(v, 1)) if lower is None else float(lower)
    hi = float(np.percentile(v, q))
    if hi <= lo:
        hi = float(v.max()) if v.max() > lo else lo + 1.0
    return (lo, hi)


def apply_continuous(layer, column: str, colormap: str, limits: tuple[float, float]) -> None:
    layer.face_colormap = colormap
    layer.face_color = column
    layer.face_color_mode = "colormap"
    layer.face_contrast_limits = tuple(float(x) for x in limits)
    layer.refresh_colors(update_color_mapping=False)


# --------------------------------------------------------------------------------------------
# Result layers
# --------------------------------------------------------------------------------------------


def shown_per_cell(layer, slide: LoadedSlide) -> np.ndarray:
    """What a result layer shows for each cell, read back from the layer itself: its features for Points,
    the category / value at each cell's own pixel for rasters (tests and checks compare it to the AnnData)."""
    column = layer.metadata["column"]
    if slide.raster is None or "raster" not in layer.metadata:
        return np.asarray(layer.features[column])
    pixel = slide.raster.cell_pixel
    at = np.asarray(layer.data).ravel()[pixel]
    if layer.metadata["raster"] == "categories":
        cats = np.asarray(layer.features[column].astype(str), dtype=object)
        return np.where(at > 0, cats[np.maximum(at.astype(np.int64) - 1, 0)], MISSING)
    lo = layer.metadata["limits"][0]
    return np.where(at < lo - 0.5 * abs(layer.metadata["limits"][1] - lo) - 1e-12, np.nan, at)


#: share of a raster colour scale kept transparent for the background (see transparent_bottom)
_CLEAR = 1.0 / 512


def transparent_bottom(colormap: str):
    """``colormap`` with a transparent sliver below its first colour: raster backgrounds, set below the
    contrast limits, vanish while every cell keeps its colour."""
    from napari.utils.colormaps import Colormap, ensure_colormap  # napari: only when drawing

    base = ensure_colormap(colormap)
    colors = np.asarray(base.map(np.linspace(0, 1, 128)), dtype=np.float32)
    clear = np.zeros((2, 4), dtype=np.float32)
    controls = np.concatenate([[0.0, _CLEAR * 0.99], _CLEAR + (1 - _CLEAR) * np.linspace(0, 1, 128)])
    return Colormap(np.concatenate([clear, colors]), controls=controls, name=f"{base.name} (raster)",
                    display_name=base.name)


def raster_limits(limits: tuple[float, float]) -> tuple[float, float]:
    """Contrast limits putting ``limits[0]`` at the first opaque colour of :func:`transparent_bottom`."""
    lo, hi = (float(x) for x in limits)
    return ((lo - _CLEAR * hi) / (1 - _CLEAR), hi)


def set_limits(layer, limits: tuple[float, float]) -> None:
    """Contrast limits of a continuous result layer (Points or raster Image)."""
    limits = tuple(float(x) for x in limits)
    if layer.metadata.get("raster") == "values":
        layer.contrast_limits = raster_limits(limits)
        layer.metadata["limits"] = limits
    else:
        layer.face_contrast_limits = limits


def contrast_of(layer) -> tuple[float, float]:
    """The colour scale a continuous result layer shows (its values' range, before any raster shift)."""
    if layer.metadata.get("raster") == "values":
        return tuple(layer.metadata["limits"])
    return tuple(layer.face_contrast_limits)


def _upsert_raster(viewer, slide: LoadedSlide, name: str, features: pd.DataFrame, *, kind, column, categorical_map,
                   colormap, limits, visible, extra_metadata, colorbar):
    """Add (or update in place) a raster result layer: Labels of category codes, or an Image of values."""
    from napari.layers import Image, Labels
    from napari.utils.colormaps import DirectLabelColormap

    from ._raster import category_raster, colorbar_while_visible, same_colors, value_raster

    r = slide.raster
    layer = next((la for la in viewer.layers if la.name == name
                  and (la.metadata or {}).get(RESULT_KEY) == slide.uid), None)
    meta = {RESULT_KEY: slide.uid, KIND_KEY: kind, "column": column, **(extra_metadata or {})}
    values = features[column]
    if categorical_map is not None:
        cat = values.values if isinstance(values, pd.Series) else values
        cat = cat if isinstance(cat, pd.Categorical) else pd.Categorical(np.asarray(cat).astype(str))
        cats = [str(c) for c in cat.categories]
        data = category_raster(r, np.asarray(cat.codes))
        cmap = DirectLabelColormap(color_dict={None: MISSING_COLOR, 0: "transparent",
                                               **{i + 1: categorical_map.get(c, MISSING_COLOR)
                                                  for i, c in enumerate(cats)}})
        feats = pd.DataFrame({"index": np.arange(1, len(cats) + 1), column: cats})
        meta.update(raster="categories", legend=dict(categorical_map))
        if layer is not None and not isinstance(layer, Labels):
            viewer.layers.remove(layer)
            layer = None
        if layer is None:
            return viewer.add_labels(data, name=name, colormap=cmap, features=feats, metadata=meta, visible=visible,
                                     **r.layer_kwargs)
        if not same_colors(layer.colormap.color_dict, cmap.color_dict):  # a change maps every pixel again
            layer.colormap = cmap
        layer.data = data
        if not layer.features.equals(feats):
            layer.features = feats
    else:
        v = np.asarray(values, dtype=np.float64)
        lo, hi = limits or robust_limits(v)
        background = lo - 2.0 * (hi - lo) - 1.0
        data = value_raster(r, np.maximum(v, lo), background)  # below the scale: shown at its bottom colour
        meta.update(raster="values", limits=(float(lo), float(hi)))
        if layer is not None and not isinstance(layer, Image):
            viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = viewer.add_image(data, name=name, colormap=transparent_bottom(colormap), metadata=meta,
                                     contrast_limits=raster_limits((lo, hi)), visible=visible, **r.layer_kwargs)
        else:
            layer.data = data
            layer.colormap = transparent_bottom(colormap)
            layer.contrast_limits = raster_limits((lo, hi))
    layer.metadata.update(meta)
    layer.visible = visible
    if categorical_map is None:
        colorbar_while_visible(layer, colorbar)
    return layer


def upsert_result(
    viewer: napari.Viewer,
    slide: LoadedSlide,
    name: str,
    features: pd.DataFrame,
    *,
    kind: str,
    column: str,
    categorical_map: dict[str, str] | None = None,
    colormap: str = "viridis",
    limits: tuple[float, float] | None = None,
    visible: bool = True,
    translate: tuple[float, float] = (0.0, 0.0),
    extra_metadata: dict | None = None,
    colorbar: bool = False,
    data: np.ndarray | None = None,
):
    """Add (or update in place) a Points result layer coloured by ``features[column]`` (continuous
    columns can show napari's colorbar for the layer's colormap and contrast limits). ``data``: point
    positions other than the slide's spots (the QC panels)."""
    if slide.raster is not None and data is None:
        return _upsert_raster(viewer, slide, name, features, kind=kind, column=column,
                              categorical_map=categorical_map, colormap=colormap, limits=limits, visible=visible,
                              extra_metadata=extra_metadata, colorbar=colorbar)
    layer = next((la for la in viewer.layers if la.name == name
                  and (la.metadata or {}).get(RESULT_KEY) == slide.uid), None)
    meta = {RESULT_KEY: slide.uid, KIND_KEY: kind, "column": column, **(extra_metadata or {})}
    positions = slide.points_yx if data is None else data
    if layer is None or len(layer.data) != len(positions):
        if layer is not None:
            viewer.layers.remove(layer)
        kwargs = point_style_kwargs(slide)
        layer = viewer.add_points(positions, name=name, features=features, face_color="white",
                                  metadata=meta, visible=visible, translate=translate, **kwargs)
    else:
        layer.features = features
        layer.metadata.update(meta)
        layer.translate = translate
        layer.visible = visible
    if categorical_map is not None:
        apply_categorical(layer, column, categorical_map)
    else:
        apply_continuous(layer, column, colormap, limits or robust_limits(features[column]))
        layer.face_colorbar.visible = colorbar
    return layer
