"""The cell raster of large slides (napari_spgpt._raster): every cell owns a pixel near its position."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari_spgpt")


@pytest.mark.parametrize("layout", ["grid", "random", "clumped"])
def test_every_cell_owns_a_pixel_near_it(layout):
    from napari_spgpt._io import _spacing
    from napari_spgpt._raster import category_raster, cell_raster, value_raster

    rng = np.random.default_rng(0)
    n = 30_000
    if layout == "grid":
        side = int(np.sqrt(n)) + 1
        yx = np.column_stack(np.divmod(np.arange(n), side)).astype(float) * 15 + rng.uniform(-4, 4, (n, 2))
    elif layout == "random":
        yx = rng.random((n, 2)) * 3000
    else:  # pairs of cells closer than a pixel
        yx = np.repeat(rng.random((n // 2, 2)) * 3000, 2, axis=0) + rng.normal(0, 0.3, (n, 2))
    r = cell_raster(yx, _spacing(yx))
    assert r.hidden == 0
    assert len(np.unique(r.ids)) == n + 1
    rows, cols = np.unravel_index(r.cell_pixel, r.ids.shape)
    centre = np.column_stack([rows, cols]) * r.scale + np.asarray(r.translate)
    assert np.abs(centre - yx).max() <= 3.5 * r.scale
    codes = rng.integers(-1, 4, n)
    cat = category_raster(r, codes).ravel()[r.cell_pixel]
    assert (cat == np.where(codes >= 0, codes + 1, 0)).all() and cat.dtype == np.uint8  # few categories: the small dtype napari colours fast
    values = rng.random(n)
    values[:10] = np.nan
    v = value_raster(r, values, background=-5.0).ravel()[r.cell_pixel]
    np.testing.assert_allclose(v[10:], values[10:], rtol=1e-6)
    assert (v[:10] == -5.0).all() and (r.ids == 0).any()
