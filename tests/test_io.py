"""Reading, checking and writing slides, on real data; every bad input must raise a helpful InputError."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from helpers.data import all_h5ad, data_file
from spgpt_core.errors import InputError
from spgpt_core.io import (
    check_matrix,
    get_coordinates,
    iter_row_chunks,
    read_slide,
    to_spatialdata,
    write_h5ad,
    write_spatialdata,
)

pytestmark = pytest.mark.filterwarnings("ignore:zarr v3 autosharding:UserWarning")  # spatialdata's writer, not ours

DLPFC = "dlpfc/DLPFC_151673.h5ad"


@pytest.fixture(scope="module")
def dlpfc_300() -> ad.AnnData:
    """First 300 spots of a real Visium slide, in memory (tests copy it before changing it)."""
    return read_slide(data_file(DLPFC))[:300].copy()


def dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# --- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", all_h5ad())
def test_every_real_slide_reads_backed_and_passes_checks(rel):
    adata = read_slide(data_file(rel), backed=True)
    try:
        assert adata.isbacked and adata.n_obs > 0
        source = {"path": str(data_file(rel).resolve()), "table": None, "coordinate_system": None}
        assert adata.uns["spgpt_source"] == source
        check_matrix(adata, chunk_size=1000)
        xy = get_coordinates(adata)
        if rel.startswith("rctd_pairs/") and "reference" in rel:
            assert xy is None  # single-cell references have no coordinates
        else:
            assert xy.shape == (adata.n_obs, 2) and xy.dtype == np.float64 and np.isfinite(xy).all()
    finally:
        adata.file.close()


def test_read_in_memory_matches_backed():
    mem = read_slide(data_file(DLPFC))
    backed = read_slide(data_file(DLPFC), backed=True)
    assert not mem.isbacked and mem.shape == backed.shape == (3639, 8513)
    np.testing.assert_array_equal(get_coordinates(mem), get_coordinates(backed))
    backed.file.close()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"not found: .*nope\.h5ad.*Check the path"):
        read_slide(tmp_path / "nope.h5ad")


def test_corrupt_h5ad(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"this is not HDF5" * 100)
    with pytest.raises(InputError, match=r"Could not read .*bad\.h5ad.*corrupt.*re-download"):
        read_slide(bad)


def test_truncated_h5ad(tmp_path):
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data_file(DLPFC).read_bytes()[:200_000])
    with pytest.raises(InputError, match=r"cut\.h5ad"):
        read_slide(cut)


def test_table_options_rejected_for_h5ad():
    with pytest.raises(InputError, match=r"only apply to SpatialData"):
        read_slide(data_file(DLPFC), table="table")


def test_unknown_extension(tmp_path):
    csv = tmp_path / "counts.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"counts\.csv.*expected an AnnData \.h5ad file or a SpatialData \.zarr"):
        read_slide(csv)


def test_corrupt_zarr(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match=r"empty\.zarr"):
        read_slide(tmp_path / "empty.zarr")


def test_spatialdata_not_installed(tmp_path, monkeypatch):
    (tmp_path / "s.zarr").mkdir()
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # makes `import spatialdata` fail
    with pytest.raises(InputError, match=r'pip install "spgpt\[spatialdata\]"'):
        read_slide(tmp_path / "s.zarr")


# --- coordinates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "columns"),
    [
        (DLPFC, ("x", "y")),
        ("her2st/HER2ST_A1.h5ad", ("pixel_x", "pixel_y")),
        ("osmfish/osmFISH_SScortex_valid_4839cells.h5ad", ("X", "Y")),
        ("giotto_mini/giotto_mini_seqfishplus_cortex_field.h5ad", ("sdimx", "sdimy")),
    ],
)
def test_coordinates_fall_back_to_obs_columns(rel, columns):
    adata = read_slide(data_file(rel))
    expected = get_coordinates(adata)
    del adata.obsm["spatial"]
    np.testing.assert_allclose(get_coordinates(adata), expected)
    np.testing.assert_array_equal(get_coordinates(adata), adata.obs[list(columns)].to_numpy(float))


def test_coordinates_use_first_two_of_3d():
    adata = read_slide(data_file("giotto_mini/giotto_mini_starmap3D_cortex.h5ad"))
    assert adata.obsm["spatial"].shape[1] == 3
    np.testing.assert_array_equal(get_coordinates(adata), adata.obsm["spatial"][:, :2])


def test_missing_coordinates(dlpfc_300):
    adata = dlpfc_300.copy()
    del adata.obsm["spatial"]
    adata.obs = adata.obs.drop(columns=["x", "y"])
    assert get_coordinates(adata) is None
    with pytest.raises(InputError, match=r"no spatial coordinates.*obsm\['spatial'\].*\(x_um, y_um\).*adata\.obsm"):
        get_coordinates(adata, required=True)


def test_nan_coordinates(dlpfc_300):
    adata = dlpfc_300.copy()
    adata.obsm["spatial"][5, 0] = np.nan
    with pytest.raises(InputError, match=r"1 cells have missing or infinite coordinates in obsm\['spatial'\]"):
        get_coordinates(adata)


# --- matrix checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_iter_row_chunks_covers_matrix(dlpfc_300, layout):
    adata = dlpfc_300.copy()
    X = adata.X
    adata.X = {"csr": sp.csr_matrix(X), "csc": sp.csc_matrix(X), "dense": dense(X)}[layout]
    chunks = list(iter_row_chunks(adata, chunk_size=128))
    assert [(a, b) for a, b, _ in chunks] == [(0, 128), (128, 256), (256, 300)]
    assert all(isinstance(c, sp.csr_matrix) and c.dtype == np.float32 for _, _, c in chunks)
    np.testing.assert_array_equal(sp.vstack([c for _, _, c in chunks]).toarray(), dense(X))


def test_iter_row_chunks_backed():
    adata = read_slide(data_file(DLPFC), backed=True)
    total = sum(c.sum() for _, _, c in iter_row_chunks(adata, chunk_size=1000))
    mem = read_slide(data_file(DLPFC))
    assert total == pytest.approx(float(mem.X.sum()), rel=1e-6)
    adata.file.close()


@pytest.mark.parametrize("layout", ["csr", "dense"])
@pytest.mark.parametrize(
    ("value", "kind"), [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")]
)
def test_bad_values(dlpfc_300, layout, value, kind):
    adata = dlpfc_300.copy()
    X = dense(adata.X)
    X[200, 7] = X[250, 3] = value  # rows in different chunks; the first one is reported
    adata.X = sp.csr_matrix(X) if layout == "csr" else X
    cell, gene = adata.obs_names[200], adata.var_names[7]
    with pytest.raises(InputError, match=rf"2 {kind} value\(s\) \(first at cell '{cell}', gene '{gene}'\).*raw counts"):
        check_matrix(adata, chunk_size=64)


def test_bad_values_backed_file(tmp_path, dlpfc_300):
    adata = dlpfc_300.copy()
    X = dense(adata.X)
    X[299, 0] = np.nan
    X[0, 1] = -3
    adata.X = sp.csr_matrix(X)
    write_h5ad(adata, tmp_path / "bad.h5ad")
    backed = read_slide(tmp_path / "bad.h5ad", backed=True)
    with pytest.raises(InputError, match=r"1 NaN value.*1 negative value"):
        check_matrix(backed, chunk_size=50)
    backed.file.close()


def test_duplicate_names(dlpfc_300):
    adata = dlpfc_300.copy()
    adata.var_names = [adata.var_names[0]] + list(adata.var_names[:-1])
    with pytest.raises(InputError, match=r"1 gene name\(s\) occur more than once.*var_names_make_unique.*--gene-col"):
        check_matrix(adata)
    adata = dlpfc_300.copy()
    adata.obs_names = ["spot"] * adata.n_obs
    with pytest.raises(InputError, match=r"cell name\(s\) occur more than once \(e\.g\. spot\).*obs_names_make_unique"):
        check_matrix(adata)


def test_empty_matrix(dlpfc_300):
    with pytest.raises(InputError, match=r"empty \(0 cells x 8513 genes\)"):
        check_matrix(dlpfc_300[:0].copy())
    with pytest.raises(InputError, match=r"empty \(300 cells x 0 genes\)"):
        check_matrix(dlpfc_300[:, :0].copy())


def test_no_x(dlpfc_300):
    adata = ad.AnnData(obs=dlpfc_300.obs, var=dlpfc_300.var)
    with pytest.raises(InputError, match=r"no expression matrix"):
        check_matrix(adata)


# --- writing h5ad ------------------------------------------------------------------------------


def test_write_h5ad_rules(tmp_path, dlpfc_300):
    out = tmp_path / "new" / "dir" / "slide.h5ad"
    assert write_h5ad(dlpfc_300, out) == out
    back = ad.read_h5ad(out)
    assert (back.X != dlpfc_300.X).nnz == 0 and no_temp_files(out.parent)
    with pytest.raises(InputError, match=r"already exists; pass --overwrite"):
        write_h5ad(dlpfc_300, out)
    write_h5ad(dlpfc_300[:10].copy(), out, overwrite=True)
    assert ad.read_h5ad(out).n_obs == 10
    with pytest.raises(InputError, match=r"Refusing to write over the input"):
        write_h5ad(dlpfc_300, out, overwrite=True, input_path=out)
    backed = ad.read_h5ad(out, backed="r")
    with pytest.raises(InputError, match=r"Refusing to write over the input"):
        write_h5ad(backed, out, overwrite=True)
    backed.file.close()
    with pytest.raises(InputError, match=r"must end in \.h5ad"):
        write_h5ad(dlpfc_300, tmp_path / "slide.zarr")


def test_write_h5ad_from_backed(tmp_path):
    backed = read_slide(data_file(DLPFC), backed=True)
    out = write_h5ad(backed, tmp_path / "copy.h5ad", input_path=data_file(DLPFC))
    assert ad.read_h5ad(out).shape == (3639, 8513)
    backed.file.close()


def test_write_h5ad_crash_leaves_no_partial_file(tmp_path, dlpfc_300, monkeypatch):
    out = tmp_path / "slide.h5ad"
    write_h5ad(dlpfc_300[:10].copy(), out)
    before = out.read_bytes()

    def crash(self, filename, **kwargs):
        Path(filename).write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", crash)
    with pytest.raises(InputError, match=r"Could not write .*slide\.h5ad \(OSError: disk full\); nothing was written"):
        write_h5ad(dlpfc_300, out, overwrite=True)
    with pytest.raises(InputError, match=r"nothing was written"):
        write_h5ad(dlpfc_300, tmp_path / "other.h5ad")
    assert out.read_bytes() == before and not (tmp_path / "other.h5ad").exists()
    assert no_temp_files(tmp_path)


# --- SpatialData -------------------------------------------------------------------------------


def test_spatialdata_round_trip(tmp_path, dlpfc_300):
    sdata = to_spatialdata(dlpfc_300)
    table = sdata.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "spots"
    out = write_spatialdata(sdata, tmp_path / "slide.zarr")
    back = read_slide(out)
    assert back.uns["spgpt_source"]["table"] == "table"
    np.testing.assert_array_equal(back.obsm["spatial"], dlpfc_300.obsm["spatial"])
    np.testing.assert_array_equal(dense(back.X), dense(dlpfc_300.X))
    assert list(back.obs_names) == list(dlpfc_300.obs_names) and list(back.var_names) == list(dlpfc_300.var_names)
    assert no_temp_files(tmp_path)


def test_spatialdata_coordinates_from_annotated_shapes(tmp_path, dlpfc_300):
    from spatialdata.transformations import Identity, Scale, set_transformation

    sdata = to_spatialdata(dlpfc_300)
    micron_scale = Scale([0.5, 2.0], axes=("x", "y"))
    set_transformation(sdata["spots"], {"global": Identity(), "micron": micron_scale}, set_all=True)
    xy = dlpfc_300.obsm["spatial"]
    with_obsm = write_spatialdata(sdata, tmp_path / "with_obsm.zarr")
    assert read_slide(with_obsm).uns["spgpt_source"]["coordinate_system"] is None  # obsm['spatial'] kept
    np.testing.assert_allclose(read_slide(with_obsm, coordinate_system="micron").obsm["spatial"], xy * [0.5, 2.0])

    del sdata.tables["table"].obsm["spatial"]  # force the centroid path
    out = write_spatialdata(sdata, tmp_path / "slide.zarr")

    back = read_slide(out)
    assert back.uns["spgpt_source"]["coordinate_system"] == "global"
    np.testing.assert_allclose(back.obsm["spatial"], xy)
    assert back.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(dense(back.X), dense(dlpfc_300.X))

    micron = read_slide(out, coordinate_system="micron")
    np.testing.assert_allclose(micron.obsm["spatial"], xy * [0.5, 2.0])
    with pytest.raises(InputError, match=r"no coordinate system 'pixels'; it has: global, micron"):
        read_slide(out, coordinate_system="pixels")


def test_spatialdata_table_choice(tmp_path, dlpfc_300):
    sdata = to_spatialdata(dlpfc_300)
    sdata.tables["second"] = sdata.tables["table"][:50].copy()
    out = write_spatialdata(sdata, tmp_path / "two.zarr")
    with pytest.raises(InputError, match=r"several tables \(.*second.*\); choose one with --table"):
        read_slide(out)
    with pytest.raises(InputError, match=r"no table 'cells'; available tables:"):
        read_slide(out, table="cells")
    assert read_slide(out, table="second").n_obs == 50


def test_spatialdata_image_and_radius(dlpfc_300):
    from spatialdata.transformations import get_transformation

    adata = dlpfc_300.copy()
    rng = np.random.default_rng(0)
    adata.uns["spatial"] = {
        "151673": {
            "images": {"hires": rng.random((60, 80, 3), dtype=np.float32)},
            "scalefactors": {"tissue_hires_scalef": 0.25, "spot_diameter_fullres": 12.0},
        }
    }
    sdata = to_spatialdata(adata)
    image = sdata.images["image"]
    assert image.dims == ("c", "y", "x") and image.shape == (3, 60, 80)
    affine = get_transformation(image, "global").to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    np.testing.assert_allclose(affine @ [80, 60, 1], [320, 240, 1])  # hires pixels -> full-resolution pixels
    assert (sdata.shapes["spots"]["radius"] == 6.0).all()
    assert "spatial" not in sdata.tables["table"].uns  # the image is stored once, as an element

    plain = to_spatialdata(dlpfc_300)
    assert not plain.images
    radius = plain.shapes["spots"]["radius"].iloc[0]
    assert 0 < radius < np.ptp(dlpfc_300.obsm["spatial"][:, 0])


def test_to_spatialdata_keeps_user_columns(dlpfc_300):
    adata = dlpfc_300.copy()
    adata.obs["region"] = "cortex"
    table = to_spatialdata(adata).tables["table"]
    assert (table.obs["region"] == "cortex").all()
    assert table.uns["spatialdata_attrs"]["region_key"] == "region_1"


def test_write_spatialdata_rules(tmp_path, dlpfc_300):
    out = write_spatialdata(to_spatialdata(dlpfc_300[:20].copy()), tmp_path / "s.zarr")
    with pytest.raises(InputError, match=r"already exists; pass --overwrite"):
        write_spatialdata(to_spatialdata(dlpfc_300), out)
    write_spatialdata(to_spatialdata(dlpfc_300[:30].copy()), out, overwrite=True)
    assert read_slide(out).n_obs == 30 and no_temp_files(tmp_path)
    with pytest.raises(InputError, match=r"must end in \.zarr"):
        write_spatialdata(to_spatialdata(dlpfc_300), tmp_path / "s.h5ad")
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]


def test_records_with_slash_keys_survive_h5ad(tmp_path):
    """Cell-type names like "L2/3 IT" must not turn into HDF5 sub-groups when a record is written."""
    import anndata as ad
    import numpy as np

    from spgpt_core.records import h5ad_safe

    a = ad.AnnData(np.ones((2, 2), dtype=np.float32))
    a.uns["rec"] = h5ad_safe({"per_type": {"L2/3 IT": 3, "Astro": 1}})
    a.write_h5ad(tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad").uns["rec"]["per_type"]
    assert set(back) == {"L2%2F3 IT", "Astro"} and back["L2%2F3 IT"] == 3
