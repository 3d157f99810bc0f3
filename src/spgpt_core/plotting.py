"""PNG figures from the CLI (matplotlib, Agg backend; never opens a window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def category_colors(n: int) -> list[str]:
    """Distinct hex colours for n categories (tab10, tab20, then evenly spaced hues)."""
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [matplotlib.colors.to_hex(cmap(i / n)) for i in range(n)]


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


def spatial_scatter(adata, color: str, ax, title: str | None = None, size: float | None = None, image: bool = True):
    """Spots coloured by a categorical or numeric obs column, over the tissue image if any."""
    import pandas as pd

    from .io import get_coordinates

    xy = get_coordinates(adata, required=True).astype(float)
    img, sf = _tissue_image(adata) if image else (None, 1.0)
    if img is not None:
        ax.imshow(img)
        xy = xy * sf
    values = adata.obs[color]
    s = size or max(2.0, 12000.0 / max(len(xy), 1))
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
        cats = pd.Categorical(values)
        colors = adata.uns.get(f"{color}_colors")
        if colors is None or len(colors) != len(cats.categories):
            colors = category_colors(len(cats.categories))
        for i, c in enumerate(cats.categories):
            m = np.asarray(cats.codes == i)
            ax.scatter(xy[m, 0], xy[m, 1], s=s, c=colors[i], label=str(c), linewidths=0)
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


def save_spatial_panels(adata, colors: list[str], path: Path, titles: list[str] | None = None) -> Path:
    """One spatial panel per obs column, side by side, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(colors), figsize=(5.5 * len(colors), 5), squeeze=False)
    for ax, c, t in zip(axes[0], colors, titles or colors):
        spatial_scatter(adata, c, ax, title=t)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
