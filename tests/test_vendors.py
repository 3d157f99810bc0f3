"""Instrument output folders (Xenium, Visium HD, MERSCOPE, CosMx): read by spgpt as spatialdata_io reads them.

Every generated folder is also opened with the matching spatialdata_io reader, an implementation
spgpt does not control, so the generator and spgpt's reader cannot merely agree with each other.
"""

from __future__ import annotations

import json
import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spgpt_core.cli import main
from spgpt_core.errors import InputError
from spgpt_core.io import read_slide
from spgpt_core.vendors import detect_layout, synthetic
from spgpt_core.vendors import synthetic_others as so

sdio = pytest.importorskip("spatialdata_io", reason="spatialdata-io is in the spatialdata extra")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vendors")
    truth = {
        "xenium": synthetic.write_xenium(root / "xenium_outs", n_cells=300),
        "visium_hd": so.write_visium_hd(root / "visium_hd_run" / "outs"),
        "merscope": so.write_merscope(root / "merscope" / "region_0", n_cells=300),
        "cosmx": so.write_cosmx(root / "cosmx_export", n_cells=300),
    }
    paths = {"xenium": root / "xenium_outs", "visium_hd": root / "visium_hd_run",
             "merscope": root / "merscope" / "region_0", "cosmx": root / "cosmx_export"}
    return paths, truth


def _same(a, b_names, b_genes, b_xy):
    assert list(a.obs_names) == list(b_names)
    assert list(a.var_names) == list(b_genes)
    np.testing.assert_allclose(a.obsm["spatial"], b_xy, rtol=1e-6)


def _same_counts(X, other) -> bool:
    other = other.toarray() if hasattr(other, "toarray") else np.asarray(other)
    return np.array_equal(X.toarray(), other)


def _check_slide(a, layout):
    assert a.uns["spgpt_source"]["layout"] == layout and a.obs_names.is_unique and a.var_names.is_unique
    assert a.X.format == "csr" and a.X.dtype == np.float32 and a.obsm["spatial"].shape == (a.n_obs, 2)
    assert np.all(a.X.data == np.round(a.X.data)) and a.X.data.min() > 0  # raw counts, stored sparse


# --- each vendor against spatialdata_io ----------------------------------------------------------------


def test_xenium_matches_spatialdata_io(folders):
    paths, truth = folders
    a = read_slide(paths["xenium"])
    _check_slide(a, "xenium")
    assert detect_layout(paths["xenium"]) == "xenium" and a.uns["modality"] == "xenium"
    s = sdio.xenium(paths["xenium"], cells_boundaries=False, nucleus_boundaries=False, cells_labels=False,
                    nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=False,
                    aligned_images=False)["table"]  # gex_only=True: its own feature_type filter
    _same(a, s.obs_names, s.var_names, s.obsm["spatial"])  # both micrometres
    assert _same_counts(a.X, s.X)
    dropped = a.uns["spgpt_vendor"]["dropped_controls"]
    assert set(dropped) == {"Negative Control Probe", "Negative Control Codeword", "Genomic Control",
                            "Unassigned Codeword"}
    assert all(d["features"] == 3 and d["counts"] > 0 for d in dropped.values())
    assert list(truth["xenium"].index) == list(a.obs_names)


def test_xenium_image_and_boundaries_open_with_spatialdata_io(folders):
    paths, _ = folders
    s = sdio.xenium(paths["xenium"], cells_labels=False, nucleus_labels=False, transcripts=False,
                    morphology_mip=False, aligned_images=False)
    assert "morphology_focus" in s.images and len(s.shapes["cell_boundaries"]) == 300
    # the polygons (µm / pixel size in the 'global' frame) are centred on the cells spgpt reads
    from spatialdata import get_centroids

    a = read_slide(paths["xenium"])
    c = get_centroids(s.shapes["cell_boundaries"], coordinate_system="global").compute()
    np.testing.assert_allclose(c.loc[a.obs_names, ["x", "y"]].to_numpy() * 0.2125, a.obsm["spatial"], atol=1e-3)


@pytest.mark.parametrize("table", ["square_008um", "square_016um"])
def test_visium_hd_bins_match_spatialdata_io(folders, table):
    paths, _ = folders
    size = int(table[7:10])
    a = read_slide(paths["visium_hd"], table=None if size == 8 else size)
    _check_slide(a, "visium_hd")
    assert a.uns["spgpt_source"]["table"] == table and a.uns["spgpt_source"]["bin_size_um"] == size
    s = sdio.visium_hd(paths["visium_hd"] / "outs", bin_size=size, load_segmentations_only=False)[table]
    mpp = json.loads((paths["visium_hd"] / "outs/binned_outputs" / table / "spatial/scalefactors_json.json")
                     .read_text())["microns_per_pixel"]
    _same(a, s.obs_names, s.var_names, s.obsm["spatial"] * mpp)  # pixels there, micrometres here
    assert _same_counts(a.X, s.X)
    import pyarrow.parquet as pq

    listed = pq.read_table(paths["visium_hd"] / "outs/binned_outputs" / table / "spatial/tissue_positions.parquet")
    assert (a.obs["in_tissue"] == 1).all() and a.n_obs < listed.num_rows  # the filtered matrix: in-tissue bins


def test_visium_hd_cells_match_spatialdata_io(folders):
    paths, truth = folders
    a = read_slide(paths["visium_hd"] / "outs", table="cells")
    assert a.uns["spgpt_source"]["table"] == "cell_segmentations"
    s = sdio.visium_hd(paths["visium_hd"] / "outs", load_segmentations_only=True)
    t = s["cell_segmentations"]
    from spatialdata import get_centroids

    c = get_centroids(s[t.uns["spatialdata_attrs"]["region"]], coordinate_system="synthetic").compute()
    mpp = a.uns["spgpt_source"]["microns_per_pixel"]
    _same(a, t.obs_names, t.var_names, c.loc[t.obs_names, ["x", "y"]].to_numpy() * mpp)
    assert list(truth["visium_hd"]["cell_segmentations"].index) == list(a.obs_names)


def test_visium_hd_refuses_2um_bins_naming_8um(folders):
    paths, _ = folders
    with pytest.raises(InputError, match=r"2 µm.*8 µm bins \(the default, square_008um\)"):
        read_slide(paths["visium_hd"], table="square_002um")
    with pytest.raises(InputError, match=r"use 8 \(default\) or 16"):
        read_slide(paths["visium_hd"], table=24)


def test_merscope_matches_spatialdata_io(folders):
    paths, _ = folders
    a = read_slide(paths["merscope"])
    _check_slide(a, "merscope")
    s = sdio.merscope(paths["merscope"], transcripts=False, cells_boundaries=False, mosaic_images=False)["table"]
    _same(a, s.obs_names, s.var_names, s.obsm["spatial"])  # both micrometres
    assert _same_counts(a.X, s.X)
    assert a.uns["spgpt_vendor"]["dropped_controls"]["Blank"]["features"] == s.obsm["blank"].shape[1] == 10
    assert a.uns["spgpt_vendor"]["dropped_controls"]["Blank"]["counts"] == s.obsm["blank"].to_numpy().sum()


def test_merscope_images_and_polygons_open_with_spatialdata_io(folders):
    paths, _ = folders
    s = sdio.merscope(paths["merscope"], transcripts=False, cells_table=False)
    assert len(s.images) == 1 and len(next(iter(s.shapes.values()))) == 300


def test_cosmx_matches_spatialdata_io(folders):
    paths, truth = folders
    a = read_slide(paths["cosmx"])
    _check_slide(a, "cosmx")
    s = sdio.cosmx(paths["cosmx"], transcripts=False)["table"]
    # spatialdata_io names cells '{cell_ID}_{fov}', keeps cell 0 out (absent from the metadata) and the controls in X
    names = [f"{f}_{c}" for f, c in zip(s.obs["fov"], s.obs["cell_ID"])]
    assert sorted(names) == sorted(a.obs_names) and len(set(s.obs["fov"])) > 1
    order = pd.Index(names).get_indexer(a.obs_names)
    genes = [g for g in s.var_names if not g.startswith(("NegPrb", "SystemControl"))]
    np.testing.assert_allclose(a.obsm["spatial"], s.obsm["global"][order] * 0.12028)
    assert list(a.var_names) == genes
    assert _same_counts(a.X, s[order, genes].X)
    dropped = a.uns["spgpt_vendor"]["dropped_controls"]
    assert dropped["NegPrb"]["features"] == 10 and dropped["SystemControl"]["features"] == 3
    assert not any(n.endswith("_0") for n in a.obs_names)  # cell 0 (outside every cell) dropped
    assert list(truth["cosmx"].index) == list(a.obs_names)


# --- command line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["xenium", "visium_hd", "merscope", "cosmx"])
def test_cli_embeds_a_vendor_folder_with_the_same_cells_genes_and_coordinates(folders, layout, tmp_path, capsys):
    paths, _ = folders
    out = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(paths[layout]), "--model", "random:tiny", "--out", str(out),
                 "--batch-size", "64"]) == 0, capsys.readouterr().err
    got, want = ad.read_h5ad(out), read_slide(paths[layout])
    _same(got, want.obs_names, want.var_names, want.obsm["spatial"])
    assert got.obsm["X_spgpt"].shape[0] == want.n_obs
    assert got.uns["spgpt_source"]["layout"] == layout


# --- bad input -------------------------------------------------------------------------------------------


def test_unknown_folder_names_every_layout_and_its_files(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError) as e:
        read_slide(tmp_path)
    for needed in ("Xenium", "cell_feature_matrix.h5", "cells.parquet", "Visium HD", "tissue_positions.parquet",
                   "MERSCOPE", "cell_by_gene.csv", "cell_metadata.csv", "CosMx", "_exprMat_file.csv",
                   "_metadata_file.csv"):
        assert needed in str(e.value)


@pytest.mark.parametrize("layout, coordinates", [
    ("xenium", "cells.parquet"),
    ("visium_hd", "outs/binned_outputs/square_008um/spatial/tissue_positions.parquet"),
    ("merscope", "cell_metadata.csv"),
    ("cosmx", "Run5573_S1_metadata_file.csv"),
])
def test_matrix_without_coordinates_names_the_missing_file(folders, tmp_path, layout, coordinates):
    paths, _ = folders
    copy = tmp_path / "copy"
    shutil.copytree(paths[layout], copy)
    (copy / coordinates).unlink()
    with pytest.raises(InputError, match=coordinates.rsplit("/", 1)[-1].replace(".", r"\.")):
        read_slide(copy)


@pytest.mark.parametrize("layout, broken", [
    ("xenium", "cell_feature_matrix.h5"),
    ("xenium", "cells.parquet"),
    ("visium_hd", "outs/binned_outputs/square_008um/spatial/tissue_positions.parquet"),
    ("visium_hd", "outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5"),
    ("merscope", "cell_by_gene.csv"),
    ("cosmx", "Run5573_S1_exprMat_file.csv"),
])
def test_truncated_file_is_a_clear_error_and_nothing_is_written(folders, tmp_path, layout, broken, capsys):
    paths, _ = folders
    copy = tmp_path / "copy"
    shutil.copytree(paths[layout], copy)
    data = (copy / broken).read_bytes()
    (copy / broken).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_slide(copy)
    out = tmp_path / "out.h5ad"
    assert main(["-q", "embed", str(copy), "--model", "random:tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "Traceback" not in err and not out.exists()


def test_vendor_table_options_are_checked(folders):
    paths, _ = folders
    with pytest.raises(InputError, match="one table"):
        read_slide(paths["xenium"], table="square_016um")
    with pytest.raises(InputError, match="coordinate_system does not apply"):
        read_slide(paths["merscope"], coordinate_system="global")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # detection itself is silent and cheap
        assert detect_layout(paths["cosmx"]) == "cosmx" and detect_layout(paths["merscope"]) == "merscope"
