"""Choosing the count matrix (--counts-layer) and flagging log-normalised X, on real slides."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from helpers.data import DATA_DIR, data_file

from spgpt_core import tl
from spgpt_core.cli import main
from spgpt_core.pp.counts import count_layers, log_scale_warning, with_counts
from spgpt_core.errors import InputError

BZ5 = "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"


def _log_normalised(a, keep_counts: str | None = "counts", raw: bool = False):
    """What users often bring: log1p-normalised X, the counts in a layer (or .raw)."""
    b = a.copy()
    if keep_counts:
        b.layers[keep_counts] = b.X.copy()
    if raw:
        b.raw = b.copy()  # a copy: .raw = b shares X, which normalize_total then scales in place
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b


@pytest.fixture(scope="module")
def bz5():
    return ad.read_h5ad(data_file(BZ5))


def test_no_shared_data_file_is_flagged():
    """Counts, normalised imaging values and references in ../shared/data are not called log-normalised."""
    files = sorted(DATA_DIR.rglob("*.h5ad")) if DATA_DIR.is_dir() else []
    if not files:
        pytest.skip(f"real data folder {DATA_DIR} is absent")
    flagged = {str(p.relative_to(DATA_DIR)): log_scale_warning(ad.read_h5ad(p, backed="r")) for p in files}
    assert {k: v for k, v in flagged.items() if v} == {}
    assert len(files) > 20


def test_log_normalised_x_is_flagged_with_the_layer_to_use(bz5):
    assert log_scale_warning(bz5) is None
    msg = log_scale_warning(_log_normalised(bz5))
    assert "log-normalised" in msg and "--counts-layer counts" in msg and "counts_layer='counts'" in msg
    no_layer = _log_normalised(bz5, keep_counts=None)
    del no_layer.uns["log1p"]  # detected from the values alone
    msg = log_scale_warning(no_layer)
    assert "non-integer" in msg and "pass the raw counts" in msg
    assert count_layers(_log_normalised(bz5, keep_counts="umi", raw=True)) == ["umi", "raw"]
    restored = _log_normalised(bz5)
    restored.X = restored.layers["counts"]  # counts put back into X: scanpy's uns['log1p'] stays behind
    assert log_scale_warning(restored) is None


def test_with_counts_swaps_in_the_layer_and_explains_bad_names(bz5, caplog):
    b = _log_normalised(bz5, raw=True)
    with caplog.at_level(logging.WARNING, logger="spgpt_core.pp.counts"):
        assert with_counts(b, None) is b
    assert "looks log-normalised" in caplog.text
    for layer in ("counts", "raw"):
        c = with_counts(b, layer)
        assert (c.X != bz5.X).nnz == 0 and c.obs is not None and list(c.obs_names) == list(b.obs_names)
        assert "log1p" not in c.uns  # scanpy's mark describes X, not the counts
    with pytest.raises(InputError, match=r"no such layer \(it has: counts, raw\)"):
        with_counts(b, "spliced")
    with pytest.raises(InputError, match="has no .raw"):
        with_counts(bz5, "raw")


def test_embed_from_a_counts_layer_equals_embedding_the_counts(bz5):
    """The layer is what the model reads; X and everything else of the user's AnnData stay as they were."""
    ref = tl.embed(bz5.copy(), "default", seed=0).obsm["X_spgpt"]
    b = _log_normalised(bz5)
    x_before = b.X.copy()
    tl.embed(b, "default", seed=0, counts_layer="counts")
    np.testing.assert_allclose(b.obsm["X_spgpt"], ref, atol=1e-6)
    assert b.uns["X_spgpt"]["params"]["counts_layer"] == "counts"
    assert (b.X != x_before).nnz == 0
    # and embedding the log values does differ: the option matters
    wrong = tl.embed(_log_normalised(bz5), "default", seed=0).obsm["X_spgpt"]
    assert np.abs(wrong - ref).max() > 0.05


def test_cli_counts_layer_keeps_the_input_x_in_the_output(tmp_path, bz5, capsys):
    src = tmp_path / "lognorm.h5ad"
    _log_normalised(bz5).write_h5ad(src)
    out = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(src), "--out", str(out), "--counts-layer", "counts"]) == 0
    res = ad.read_h5ad(out)
    assert np.allclose(res.X.toarray(), ad.read_h5ad(src).X.toarray())  # X is still the user's log values
    ref = tl.embed(bz5.copy(), "default", seed=0).obsm["X_spgpt"]
    np.testing.assert_allclose(res.obsm["X_spgpt"], ref, atol=1e-6)
    assert main(["-q", "embed", str(src), "--out", str(tmp_path / "o2.h5ad"), "--counts-layer", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--counts-layer 'nope'" in err and "it has: counts" in err


def test_integrate_and_corpus_take_counts_layers(tmp_path, bz5):
    from spgpt_core.train.corpus import read_slide_list

    a, b = bz5[:300].copy(), bz5[300:600].copy()
    ref = tl.integrate([a, b], "random:tiny", batch_names=["one", "two"])
    joint = tl.integrate([a, _log_normalised(b)], "random:tiny", batch_names=["one", "two"],
                         counts_layers=[None, "counts"])
    np.testing.assert_allclose(joint.obsm["X_spgpt"], ref.obsm["X_spgpt"], atol=1e-6)
    assert (joint.X != ref.X).nnz == 0  # the joint object holds the counts of both slides
    assert list(joint.uns["X_spgpt"]["params"]["counts_layers"]) == ["None", "counts"]  # h5ad-safe record
    yaml = tmp_path / "slides.yaml"
    yaml.write_text(f"- {{path: {data_file(BZ5)}, counts_layer: counts}}\n")
    assert read_slide_list([str(yaml)])[0].counts_layer == "counts"
