"""`spgpt integrate / deconvolve / impute / evaluate`: new outputs, inputs untouched, figures, one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from helpers.data import data_file
from spgpt_core.cli import main


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Copies of real inputs (so a bug could never touch ../shared/data) + a pseudo-spot slide with truth."""
    from helpers.pseudo_spots import make_pseudo_spots

    d = tmp_path_factory.mktemp("cli_analysis")
    out = {}
    for key, rel in [("merfish", "rctd_pairs/RCTD_merfish_spatial.h5ad"),
                     ("merfish_ref", "rctd_pairs/RCTD_merfish_reference.h5ad"),
                     ("bz5", "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"),
                     ("bz9", "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad")]:
        a = ad.read_h5ad(data_file(rel))
        out[key] = d / f"{key}.h5ad"
        a.write_h5ad(out[key])
    spots = make_pseudo_spots(ad.read_h5ad(out["bz5"]), "cell_type")
    out["spots"] = d / "spots.h5ad"
    spots.write_h5ad(out["spots"])
    held = ad.read_h5ad(out["merfish"])
    out["merfish_held"] = d / "merfish_held.h5ad"
    held[:, ~held.var_names.isin(["Gad1", "Slc17a6", "Aqp4"])].copy().write_h5ad(out["merfish_held"])
    return out


def test_deconvolve_then_evaluate(tmp_path, files, capsys):
    before = _sha(files["spots"]), _sha(files["bz9"])
    out = tmp_path / "dec.h5ad"
    assert main(["-q", "deconvolve", str(files["spots"]), "--reference", str(files["bz9"]), "--celltype-key",
                 "cell_type", "--model", "random:tiny", "--mapping-epochs", "60", "--out", str(out), "--plot"]) == 0
    assert (_sha(files["spots"]), _sha(files["bz9"])) == before
    a = ad.read_h5ad(out)
    P = a.obsm["spgpt_proportions"]
    assert isinstance(P, pd.DataFrame) and P.shape[1] == 15 and np.allclose(P.sum(axis=1), 1.0)
    assert a.obs["spgpt_dominant_type"].dtype == "category"
    assert isinstance(a.obsm["true_proportions"], pd.DataFrame)  # everything else in the input is kept
    assert a.uns["spgpt_proportions"]["params"]["use_embeddings"]
    assert out.with_suffix(".png").stat().st_size > 20_000
    assert "deconvolved" in capsys.readouterr().out

    assert main(["-q", "evaluate", str(out), "--task", "deconvolution", "--truth", "true_proportions",
                 "--pred", "spgpt_proportions", "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert 0 <= s["macro_f1"] <= 1 and 0 <= s["jsd_mean"] <= 1 and "morans_i_mean" in s

    # no overwrite without --overwrite
    assert main(["-q", "deconvolve", str(files["spots"]), "--reference", str(files["bz9"]), "--celltype-key",
                 "cell_type", "--no-embeddings", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_impute_then_evaluate(tmp_path, files, capsys):
    out = tmp_path / "imp.h5ad"
    before = _sha(files["merfish_held"])
    assert main(["-q", "impute", str(files["merfish_held"]), "--reference", str(files["merfish_ref"]), "--genes",
                 "Gad1,slc17a6,AQP4", "--no-embeddings", "--mapping-epochs", "100", "--out", str(out), "--plot"]) == 0
    assert _sha(files["merfish_held"]) == before
    a = ad.read_h5ad(out)
    df = a.obsm["spgpt_imputed"]
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["Gad1", "Slc17a6", "Aqp4"]
    assert a.uns["spgpt_imputed"]["params"]["method"] == "tangram_clusters" and out.with_suffix(".png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--task", "imputation", "--pred", "spgpt_imputed", "--truth",
                 str(files["merfish"])]) == 0
    s = json.loads(capsys.readouterr().out)
    assert set(s["per_gene"]) == {"Gad1", "Slc17a6", "Aqp4"} and s["median_pearson"] > 0.2

    all_out = tmp_path / "all.h5ad"
    assert main(["-q", "impute", str(files["merfish_held"]), "--reference", str(files["merfish_ref"]),
                 "--all-missing", "--model", "random:tiny", "--n-clusters", "40", "--mapping-epochs", "20",
                 "--out", str(all_out)]) == 0
    assert list(ad.read_h5ad(all_out).obsm["spgpt_imputed"].columns) == ["Gad1", "Aqp4", "Slc17a6"]  # reference order


def test_integrate_then_evaluate(tmp_path, files, capsys):
    out = tmp_path / "int.h5ad"
    assert main(["-q", "integrate", str(files["bz5"]), str(files["bz9"]), "--model", "random:tiny", "--out", str(out),
                 "--batch-names", "BZ5,BZ9", "--n-clusters", "4", "--label-key", "cell_type", "--plot"]) == 0
    a = ad.read_h5ad(out)
    assert list(a.obs["batch"].cat.categories) == ["BZ5", "BZ9"] and a.obsm["X_spgpt"].shape == (a.n_obs, 32)
    assert a.obs["spgpt_cluster"].nunique() == 4 and out.with_suffix(".png").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["evaluate", str(out), "--task", "integration", "--labels", "cell_type", "--batch", "batch"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert {"avg_bio", "avg_batch", "asw_batch", "graph_connectivity"} <= set(s)
    assert main(["evaluate", str(out), "--task", "domains", "--labels", "layer", "--pred", "spgpt_cluster"]) == 0
    assert "ari" in json.loads(capsys.readouterr().out)


def test_integrate_options_from_the_command_line_are_recorded(tmp_path, files, capsys):
    out = tmp_path / "int.h5ad"
    assert main(["-q", "integrate", str(files["bz5"]), str(files["bz9"]), "--model", "random:tiny", "--out", str(out),
                 "--batch-names", "BZ5,BZ9", "--features", "fused", "--embedding-share", "0.25", "--per-slide",
                 "centre", "--spatial-weight", "0.2", "--spatial-k", "8", "--n-pcs", "8", "--n-clusters", "4"]) == 0
    assert "X_spgpt_integrated" in capsys.readouterr().out
    a = ad.read_h5ad(out)
    rec = a.uns["X_spgpt"]
    assert rec["integrated_key"] == "X_spgpt_integrated" and a.obsm["X_spgpt_integrated"].shape == (a.n_obs, 8)
    assert {k: rec["params"][k] for k in ("features", "embedding_share", "per_slide", "spatial_weight", "spatial_k",
                                          "n_pcs")} == dict(features="fused", embedding_share=0.25, per_slide="centre",
                                                            spatial_weight=0.2, spatial_k=8, n_pcs=8)
    assert a.obs["spgpt_cluster"].nunique() == 4  # clustered on the joint representation
    missing = str(tmp_path / "never_read.h5ad")  # a bad option is refused before any slide is read
    assert main(["integrate", missing, missing, "--embedding-share", "2", "--out", str(tmp_path / "x.h5ad")]) == 2
    assert "embedding_share=2.0 must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["deconvolve", "SPOTS", "--reference", "BZ9", "--celltype-key", "celltype", "--no-embeddings"],
     "no obs column 'celltype'"),
    (["deconvolve", "SPOTS", "--reference", "ONETYPE", "--celltype-key", "cell_type", "--no-embeddings"],
     "at least 2 types"),
    (["deconvolve", "SPOTS", "--reference", "RENAMED", "--celltype-key", "cell_type", "--no-embeddings"],
     "share fewer than 5 genes"),
    (["deconvolve", "SPOTS", "--reference", "BZ9", "--celltype-key", "cell_type", "--model", "no/such/dir"],
     "does not exist"),
    (["impute", "MERFISH_HELD", "--reference", "MERFISH_REF", "--genes", "Gad1,NotAGene", "--no-embeddings"],
     "not in the reference: NotAGene"),
    (["impute", "MERFISH_HELD", "--reference", "MERFISH_REF", "--genes", "Gad1", "--n-clusters", "99999",
      "--no-embeddings"], "larger than the number of reference cells"),
    (["impute", "MERFISH_HELD", "--reference", "MERFISH_REF", "--no-embeddings"], "exactly one of --genes"),
    (["integrate", "BZ5", "--model", "random:tiny"], "at least 2 slides"),
    (["evaluate", "SPOTS", "--task", "deconvolution", "--truth", "true_proportions", "--pred", "nope"],
     "obsm['nope'] not found"),
])
def test_bad_input_gives_one_error_line(tmp_path, files, capsys, args, msg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = ad.read_h5ad(files["bz9"])
    one = one[one.obs["cell_type"] == "Astro"].copy()
    one.write_h5ad(tmp_path / "one.h5ad")
    renamed = ad.read_h5ad(files["bz9"])
    renamed.var_names = [f"gene{i}" for i in range(renamed.n_vars)]
    renamed.write_h5ad(tmp_path / "renamed.h5ad")
    subst = {"SPOTS": files["spots"], "BZ9": files["bz9"], "BZ5": files["bz5"], "MERFISH_REF": files["merfish_ref"],
             "MERFISH_HELD": files["merfish_held"], "ONETYPE": tmp_path / "one.h5ad",
             "RENAMED": tmp_path / "renamed.h5ad"}
    args = [str(subst[a]) if a in subst else a for a in args]
    if args[0] != "evaluate":
        args += ["--out", str(tmp_path / "o.h5ad")]
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_cluster_k_larger_than_spots(tmp_path, files, capsys):
    a = ad.read_h5ad(files["spots"])
    a.obsm["X_spgpt"] = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
    a.write_h5ad(tmp_path / "e.h5ad")
    assert main(["-q", "cluster", str(tmp_path / "e.h5ad"), "--n-clusters", str(a.n_obs + 1), "--method", "kmeans",
                 "--out", str(tmp_path / "c.h5ad")]) == 2
    assert "must be between 1 and the number of cells" in capsys.readouterr().err


def test_renamed_mapping_flags_still_work_with_a_warning(capsys):
    """--epochs (Tangram) became --mapping-epochs and deconvolve's --n-genes became --n-top-genes."""
    from spgpt_core.cli import build_parser

    parser = build_parser()
    for verb in ("deconvolve", "impute"):
        base = [verb, "s.h5ad", "--reference", "r.h5ad", "--out", "o.h5ad"] + (
            ["--celltype-key", "t"] if verb == "deconvolve" else ["--genes", "A"])
        assert parser.parse_args(base).num_epochs == 1000
        assert parser.parse_args([*base, "--mapping-epochs", "7"]).num_epochs == 7
        capsys.readouterr()
        assert parser.parse_args([*base, "--epochs", "9"]).num_epochs == 9
        assert "--epochs is deprecated" in capsys.readouterr().err
    args = parser.parse_args(["deconvolve", "s.h5ad", "--reference", "r.h5ad", "--out", "o.h5ad", "--celltype-key",
                              "t", "--n-genes", "300"])
    assert args.n_top_genes == 300 and "--n-genes is deprecated" in capsys.readouterr().err
