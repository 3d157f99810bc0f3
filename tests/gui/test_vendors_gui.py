"""Instrument output folders in napari: the reader and the Load widget show the cells the core reads,
on the folder's tissue image (lazy, multiscale where the instrument wrote a pyramid)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import add_widget, wait_job

from spgpt_core.io import read_slide
from spgpt_core.vendors import synthetic
from spgpt_core.vendors import synthetic_others as so

pytest.importorskip("spatialdata_io")
pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vendor_gui")
    synthetic.write_xenium(root / "xenium", n_cells=200)
    so.write_visium_hd(root / "visium_hd" / "outs", side_um=160.0, n_cells=80)
    so.write_merscope(root / "merscope", n_cells=200)
    so.write_cosmx(root / "cosmx", n_cells=200)
    return {k: root / k for k in ("xenium", "visium_hd", "merscope", "cosmx")}


def _slide_layers(viewer):
    from napari_spgpt._layers import slide_layers

    (points,) = slide_layers(viewer)
    return points, points.metadata["spgpt_slide"]


def _same_as_core(slide, core):
    assert list(slide.adata.obs_names) == list(core.obs_names)
    assert list(slide.adata.var_names) == list(core.var_names)
    np.testing.assert_allclose(slide.adata.obsm["spatial"], core.obsm["spatial"])
    assert (slide.adata.X != core.X).nnz == 0


@pytest.mark.parametrize("layout", ["xenium", "merscope", "visium_hd", "cosmx"])
def test_reader_opens_vendor_folder_like_the_core(viewer, folders, layout):
    from napari_spgpt._reader import get_reader

    assert get_reader(str(folders[layout])) is not None
    viewer.open(str(folders[layout]), plugin="spgpt")
    points, slide = _slide_layers(viewer)
    core = read_slide(folders[layout])
    _same_as_core(slide, core)
    # points sit where the slide's micrometres map into the image's pixels
    xy_px = core.obsm["spatial"] @ slide.to_pixels[:2, :2].T + slide.to_pixels[:2, 2]
    np.testing.assert_allclose(points.data[:, ::-1], xy_px, rtol=1e-6)
    images = [la for la in viewer.layers if la._type_string == "image"]
    outlines = [la for la in viewer.layers if la._type_string == "shapes"]
    if layout in ("xenium", "merscope"):  # polygons around the cells, in the same pixel frame
        (shapes,) = outlines
        assert len(shapes.data) == core.n_obs
        from scipy.spatial import cKDTree

        centres = np.array([poly[:-1].mean(axis=0) for poly in shapes.data])[:, ::-1]
        dist, nearest = cKDTree(xy_px).query(centres)
        assert dist.max() < 1.0 and len(set(nearest)) == core.n_obs  # one outline per cell, centred on it
    else:
        assert outlines == []  # Visium HD bins are their own squares; CosMx has none here
    if layout == "cosmx":
        assert images == [] and any("field of view" in n for n in slide.notes)
        return
    # one layer per channel (MERSCOPE: DAPI and PolyT); the nuclear stain is the one to check against
    image = next((la for la in images if "DAPI" in la.name), images[0])
    assert len(images) == (2 if layout == "merscope" else 1)
    h, w = slide.image.shape_yx
    assert (xy_px >= 0).all() and (xy_px[:, 0] < w).all() and (xy_px[:, 1] < h).all()
    if layout in ("xenium", "merscope"):
        # the generated stain is a bright disc at every cell: the cells must land on them
        assert image.multiscale
        level = np.asarray(image.data[0])
        plane = level if level.ndim == 2 else level[0]
        at_cells = plane[np.round(xy_px[:, 1]).astype(int), np.round(xy_px[:, 0]).astype(int)]
        assert (at_cells > 1000).mean() > 0.95 and np.median(plane) < 1000


def test_reader_declines_other_folders(tmp_path):
    from napari_spgpt._reader import get_reader

    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path)) is None


def test_load_widget_offers_visium_hd_bin_sizes(viewer, folders, qtbot):
    w = add_widget(viewer, "Load slide")
    w.path.value = str(folders["visium_hd"])
    assert w.table.choices == ("square_008um", "square_016um", "cell_segmentations")
    assert not w.table.native.isHidden() and w.coordinate_system.native.isHidden()  # the dock itself is not shown
    w.table.value = "square_016um"
    w.load()
    wait_job(qtbot, w)
    _, slide = _slide_layers(viewer)
    _same_as_core(slide, read_slide(folders["visium_hd"], table=16))
    from napari_spgpt._commands import input_args

    assert input_args(slide) == [str(folders["visium_hd"]), "--table", "square_016um"]


def test_visium_hd_segmented_cells_come_with_their_outlines(folders):
    from napari_spgpt._io import load_slide

    slide = load_slide(folders["visium_hd"], table="cells")
    core = read_slide(folders["visium_hd"], table="cells")
    _same_as_core(slide, core)
    assert len(slide.outlines) == core.n_obs
    centres = np.array([poly[:-1].mean(axis=0) for poly in slide.outlines])[:, ::-1]
    np.testing.assert_allclose(np.sort(centres[:, 0]), np.sort(slide.points_yx[:, 1]), atol=0.5)
