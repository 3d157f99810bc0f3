"""PNG figures from the CLI (matplotlib, Agg backend; never opens a window).

``tl`` and the napari plugin import this module for ``category_colors`` alone, so it stays cheap to
import: matplotlib, scipy, scanpy and ``.io`` / ``.neighbors`` are imported inside the functions that
draw or compute with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def category_colors(n: int) -> list[str]:
    """Distinct hex colours for n categories (tab10, tab20, then evenly spaced hues)."""
    import matplotlib  # heavy on import (~0.4 s): pl stays cheap, see the module docstring

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [matplotlib.colors.to_hex(cmap(i / n)) for i in range(n)]


def celltype_colors(n: int) -> list[str]:
    """Distinct hex colours for n cell types, from other palettes than the domains' (Set2 and Dark2, then
    hues offset from :func:`category_colors`), so a domain map and a cell-type map never look alike."""
    import matplotlib  # heavy on import: pl stays cheap, see the module docstring

    if n <= 16:
        cols = [matplotlib.colormaps[name](i) for name in ("Set2", "Dark2") for i in range(8)]
        return [matplotlib.colors.to_hex(c) for c in cols[:n]]
    cmap = matplotlib.colormaps["hsv"]
    return [matplotlib.colors.to_hex(cmap((i + 0.5) / n)) for i in range(n)]


def align_labels(new, previous) -> dict[str, str]:
    """New cluster label -> the label to give it, so a re-clustering keeps an earlier partition's labels
    where the two overlap: one-to-one by the largest overlaps (Hungarian on the contingency table).
    Clusters without a partner take integer labels neither partition uses. Missing values are ignored."""
    from scipy.optimize import linear_sum_assignment  # scipy: only when labels are aligned

    new_s, prev_s = pd.Series(np.asarray(new, dtype=object)), pd.Series(np.asarray(previous, dtype=object))
    ok = new_s.notna().to_numpy() & prev_s.notna().to_numpy()
    new_cats = sorted({str(v) for v in new_s.dropna()}, key=lambda s: (len(s), s))
    mapping: dict[str, str] = {}
    if ok.any():
        table = pd.crosstab(new_s[ok].astype(str), prev_s[ok].astype(str))
        rows, cols = linear_sum_assignment(-table.to_numpy())
        mapping = {str(table.index[r]): str(table.columns[c]) for r, c in zip(rows, cols, strict=True)
                   if table.iat[r, c] > 0}
    used = {str(v) for v in prev_s.dropna()} | set(mapping.values())
    nxt = 1 + max((int(u) for u in used if u.lstrip("-").isdigit()), default=-1)
    for c in new_cats:
        if c not in mapping:
            while str(nxt) in used:
                nxt += 1
            mapping[c] = str(nxt)
            used.add(str(nxt))
    return mapping


def stable_domains(labels, previous=None) -> tuple[pd.Categorical, list[str]]:
    """Domain labels renamed after an earlier run's (:func:`align_labels`) and their colours, one per
    label value (label 3 is always the 4th domain colour), so re-running keeps colours where it can."""
    values = np.asarray(labels, dtype=object)
    mapping = align_labels(values, previous) if previous is not None else {}
    renamed = np.array([None if v is None or v != v else mapping.get(str(v), str(v)) for v in values], dtype=object)
    cats = sorted({v for v in renamed if v is not None}, key=lambda s: (len(s), s))
    ints = [int(c) for c in cats if c.lstrip("-").isdigit() and int(c) >= 0]
    if len(ints) == len(cats):
        palette = category_colors(max(10, max(ints, default=0) + 1))  # tab10 while labels stay below 10
        colors = [palette[int(c)] for c in cats]
    else:
        colors = category_colors(len(cats))
    return pd.Categorical(renamed, categories=cats), colors


def _tissue_image(adata):
    """(hires image, scale factor from coordinates to image pixels) of a Visium-style AnnData, or (None, 1)."""
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict):
        return None, 1.0
    for lib in spatial.values():
        if isinstance(lib, dict) and "images" in lib:
            for key in ("hires", "lowres"):
                if key in lib["images"]:
                    sf = lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0)
                    return np.asarray(lib["images"][key]), float(sf)
    return None, 1.0


def spot_size(n: int, panel_points: float = 300.0) -> float:
    """Marker area (pt^2) so that n spots roughly tile a panel ``panel_points`` wide without hiding each other."""
    return float(np.clip((0.8 * panel_points / np.sqrt(max(n, 1))) ** 2, 1.0, 80.0))


def spatial_scatter(adata, color: str, ax, title: str | None = None, size: float | None = None, image: bool = True,
                    palette: dict | None = None):
    """Spots coloured by a categorical or numeric obs column, over a dimmed tissue image if any.

    ``palette`` maps category -> colour (so panels of one figure can share colours)."""
    from .io import get_coordinates  # anndata (~2 s on import): pl stays cheap, see the module docstring

    xy = get_coordinates(adata, required=True).astype(float)
    img, sf = _tissue_image(adata) if image else (None, 1.0)
    if img is not None:
        ax.imshow(img, alpha=0.35)  # context, not competition: the spots carry the result
        xy = xy * sf
    values = adata.obs[color]
    s = size or spot_size(len(xy))
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        cats = pd.Categorical(values)
        if palette is None:
            palette = _own_palette(adata, color, list(cats.categories))
        # legend order: categories the palette names first, in its order (a prediction lists its cell types
        # as the truth panel does), then the rest in their own order
        named = [c for c in palette if c in set(cats.categories)]
        order = named + [c for c in cats.categories if c not in set(named)]
        for c in order:
            m = np.asarray(cats == c)
            ax.scatter(xy[m, 0], xy[m, 1], s=s, c=palette.get(c, "#999999"), label=str(c), linewidths=0)
        ax.legend(markerscale=max(1.0, 30 / s) ** 0.5, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5),
                  frameon=False)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=s, c=np.asarray(values, dtype=float), cmap="viridis", linewidths=0)
        ax.figure.colorbar(sc, ax=ax, shrink=0.7)
    if img is None:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title or color, fontsize=10)


def _own_palette(adata, color: str, categories: list) -> dict:
    colors = adata.uns.get(f"{color}_colors")
    if colors is None or len(colors) != len(categories):
        colors = category_colors(len(categories))
    return dict(zip(categories, colors))


def _aligned_palette(reference, ref_palette: dict, values) -> dict:
    """Colours for the categories of ``values``: a category named like one of the reference's takes its
    colour; the others (e.g. cluster ids) take the colour of the reference category they overlap most
    (one-to-one, Hungarian on the contingency table), so matching regions look alike across panels."""
    from scipy.optimize import linear_sum_assignment  # ~0.8 s on import, only to align colours across panels

    ref, cats = pd.Categorical(reference), pd.Categorical(values)
    out = {c: ref_palette[c] for c in ref_palette if c in set(cats.categories)}  # the reference's order
    todo = [c for c in cats.categories if c not in out]
    free = [c for c in ref.categories if ref_palette.get(c) not in out.values()]
    if todo and free:
        table = pd.crosstab(pd.Series(np.asarray(values)), pd.Series(np.asarray(reference)))
        table = table.reindex(index=todo, columns=free, fill_value=0)
        rows, cols = linear_sum_assignment(-table.to_numpy())
        out.update({todo[r]: ref_palette[free[c]] for r, c in zip(rows, cols)})
    spare = [c for c in category_colors(len(ref_palette) + len(cats.categories)) if c not in out.values()]
    for c in cats.categories:
        if c not in out:
            out[c] = spare.pop(0)
    return out


def save_spatial_panels(adata, colors: list[str], path: Path, titles: list[str] | None = None,
                        align_colors: bool = True) -> Path:
    """One spatial panel per obs column, side by side, saved as PNG.

    With ``align_colors``, categorical panels take their colours from the first categorical panel
    (same name -> same colour; otherwise best-overlapping category), so a prediction can be read
    against the truth at a glance."""
    fig, axes = _subplots(1, len(colors), (5.5 * len(colors), 5))
    first = None
    for ax, c, t in zip(axes[0], colors, titles or colors):
        values = adata.obs[c]
        palette = None
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            cats = list(pd.Categorical(values).categories)
            if first is None or not align_colors:
                palette = _own_palette(adata, c, cats)
                first = first or (values, palette)
            else:
                palette = _aligned_palette(first[0], first[1], values)
        spatial_scatter(adata, c, ax, title=t, palette=palette)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------- downstream tasks: proportions, imputation, UMAP
# (added for deconvolution / imputation / integration; the functions above are unchanged)


def _subplots(nrows: int, ncols: int, figsize):
    """A figure without pyplot: no global backend switch, safe in worker threads and beside napari's Qt."""
    from matplotlib.figure import Figure  # only when a figure is drawn: pl stays cheap, see the module docstring

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def spatial_values(adata, values, ax, title: str = "", cmap: str = "viridis", vmin=None, vmax=None,
                   size: float | None = None, xy=None) -> None:
    """Spots coloured by a numeric vector (one value per row of ``adata``), with a colour bar."""
    from .io import get_coordinates  # anndata (~2 s on import): pl stays cheap, see the module docstring

    xy = get_coordinates(adata, required=True).astype(float) if xy is None else np.asarray(xy, float)
    v = np.asarray(values, dtype=float)
    s = size or spot_size(len(xy))
    sc_ = ax.scatter(xy[:, 0], xy[:, 1], s=s, c=v, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0)
    ax.figure.colorbar(sc_, ax=ax, shrink=0.7)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def save_proportion_panels(adata, key: str, path, dominant_key: str | None = None, ncols: int = 4,
                           max_types: int = 24) -> Path:
    """Spatial maps of every cell type's proportion in ``obsm[key]`` (+ the dominant type), one PNG."""
    props = adata.obsm[key]
    if not isinstance(props, pd.DataFrame):
        props = pd.DataFrame(np.asarray(props), index=adata.obs_names)
    cols = list(props.columns)[:max_types]
    n = len(cols) + (1 if dominant_key else 0)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _subplots(nrows, min(ncols, n), (4.2 * min(ncols, n), 3.8 * nrows))
    flat = list(axes.ravel())
    i = 0
    if dominant_key:
        spatial_scatter(adata, dominant_key, flat[0], title="dominant type", image=False)
        i = 1
    for c in cols:
        spatial_values(adata, props[c].to_numpy(), flat[i], title=f"{c}", vmin=0, vmax=max(1e-6, float(props[c].max())))
        i += 1
    for ax in flat[i:]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def save_imputation_panels(adata, imputed, path, measured=None, max_genes: int = 8,
                           notes: dict[str, str] | None = None) -> Path:
    """Imputed (and, when given, measured) expression of up to ``max_genes`` genes in space, one row per gene.

    ``notes`` (gene -> text) are appended to a gene's imputed-panel title, e.g. why it was chosen."""
    genes = list(imputed.columns)[:max_genes]
    notes = notes or {}
    ncol = 2 if measured is not None else 1
    fig, axes = _subplots(len(genes), ncol, (4.6 * ncol, 3.8 * len(genes)))
    for r, g in enumerate(genes):
        v = np.asarray(imputed[g], dtype=float)
        spatial_values(adata, v, axes[r, 0], title=f"{g} imputed" + (f" ({notes[g]})" if g in notes else ""))
        if measured is not None:
            m = np.asarray(measured[g], dtype=float)
            rr = np.corrcoef(m, v)[0, 1] if np.std(m) > 0 and np.std(v) > 0 else float("nan")
            spatial_values(adata, m, axes[r, 1], title=f"{g} measured (Pearson r = {rr:.2f})")
    fig.tight_layout()
    return _save(fig, path)


def umap_coordinates(emb: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP (scanpy) of an embedding; rows with NaN get NaN."""
    import scanpy as sc  # ~4 s on import, only for UMAP: pl stays cheap, see the module docstring

    from .neighbors import neighbors  # igraph + sklearn (~3 s on import), only for UMAP

    emb = np.asarray(emb, dtype=np.float32)
    ok = np.isfinite(emb).all(axis=1)
    a = neighbors(emb[ok], min(n_neighbors, max(2, int(ok.sum()) - 1)), seed)
    sc.tl.umap(a, random_state=seed)
    out = np.full((emb.shape[0], 2), np.nan, dtype=np.float32)
    out[ok] = a.obsm["X_umap"]
    return out


def save_umap_panels(adata, colors: list[str], path, use_rep: str = "X_spgpt", umap: np.ndarray | None = None,
                     title: str = "") -> Path:
    """UMAP of ``obsm[use_rep]`` coloured by each obs column in ``colors`` (e.g. label, batch)."""
    xy = umap_coordinates(adata.obsm[use_rep]) if umap is None else np.asarray(umap)
    fig, axes = _subplots(1, len(colors), (5.5 * len(colors), 4.6))
    s = max(1.5, 6000.0 / max(len(xy), 1))
    for ax, c in zip(axes[0], colors):
        cats = pd.Categorical(adata.obs[c].astype(str).where(adata.obs[c].notna(), "NA"))
        pal = category_colors(len(cats.categories))
        for i, cat in enumerate(cats.categories):
            m = np.asarray(cats.codes == i)
            ax.scatter(xy[m, 0], xy[m, 1], s=s, c=pal[i], label=str(cat), linewidths=0)
        ax.legend(markerscale=max(1.0, 20 / s) ** 0.5, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5),
                  frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} {c}".strip(), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
