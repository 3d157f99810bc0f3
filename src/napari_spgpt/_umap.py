"""A UMAP view of the embedding (display only), drawn with matplotlib inside the widget.

scanpy, scikit-learn and matplotlib are imported when a UMAP is computed or drawn so napari starts fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from spgpt_core.pl import umap_coordinates


def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of the finite rows (NaN rows stay NaN), on spgpt's kNN graph; PCA for a handful of cells."""
    emb = np.asarray(emb, dtype=np.float32)
    ok = np.isfinite(emb).all(axis=1)
    if ok.sum() > n_neighbors + 1:
        return umap_coordinates(emb, n_neighbors=n_neighbors, seed=seed)
    out = np.full((len(emb), 2), np.nan, dtype=np.float32)
    if ok.sum() >= 3:
        from sklearn.decomposition import PCA  # scikit-learn (~1 s on import): only for a handful of cells

        out[ok] = PCA(n_components=2, random_state=seed).fit_transform(emb[ok])
    return out


class UmapCanvas:
    """Factory for the matplotlib canvas (imported lazily: matplotlib's Qt backend is heavy)."""

    def __new__(cls):
        # matplotlib's Qt backend is heavy on import: only when the first UMAP is drawn
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure


        class _Canvas(FigureCanvasQTAgg):
            def __init__(self) -> None:
                fig = Figure(figsize=(3.2, 3.0), dpi=100, facecolor="#262930")
                super().__init__(fig)
                self.ax = fig.add_axes([0.02, 0.02, 0.96, 0.9])
                self.setMinimumHeight(260)
                self.n_points = 0

            def plot(self, xy: np.ndarray, labels: pd.Categorical, mapping: dict[str, str],
                     title: str = "UMAP of spgpt embedding") -> None:
                ax = self.ax
                ax.clear()
                ax.set_facecolor("#262930")
                ok = np.isfinite(xy).all(axis=1)
                colors = np.array([mapping.get(str(v), "#7f7f7f") for v in np.asarray(labels)])
                size = max(1.0, min(12.0, 3000.0 / max(ok.sum(), 1)))
                order = np.random.default_rng(0).permutation(np.flatnonzero(ok))  # no category drawn on top
                ax.scatter(xy[order, 0], xy[order, 1], c=colors[order], s=size, linewidths=0)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("#5a5f6b")
                ax.set_title(title, color="white", fontsize=9)
                self.title = title
                self.n_points = int(ok.sum())
                self.draw_idle()

        return _Canvas()
