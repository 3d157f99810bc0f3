"""The command line: outputs, never touching the input, one-line errors for bad input, --help."""

import hashlib
import re
import json

import anndata as ad
import pytest

from helpers.data import data_file
from spgpt_core.cli import build_parser, main


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    src = ad.read_h5ad(data_file("starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"))
    p = tmp_path_factory.mktemp("cli") / "slide.h5ad"
    src.write_h5ad(p)
    return p


def test_embed_then_cluster_writes_new_files_and_keeps_input(tmp_path, slide, capsys):
    before = _sha(slide)
    out = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(slide), "--model", "random:tiny", "--out", str(out), "--batch-size", "16"]) == 0
    assert _sha(slide) == before
    a = ad.read_h5ad(out)
    orig = ad.read_h5ad(slide)
    assert a.obsm["X_spgpt"].shape == (orig.n_obs, 32)
    assert (a.X != orig.X).nnz == 0 and list(a.obs.columns) == list(orig.obs.columns)  # everything else kept
    assert a.uns["X_spgpt"]["params"]["modality"] == "xenium"
    assert "embedded 1,049 cells" in capsys.readouterr().out

    # refuses to overwrite, and to write over its input
    assert main(["-q", "embed", str(slide), "--model", "random:tiny", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["-q", "embed", str(slide), "--model", "random:tiny", "--out", str(slide), "--overwrite"]) == 2
    assert "input file" in capsys.readouterr().err and _sha(slide) == before

    clustered = tmp_path / "dom.h5ad"
    assert main(["-q", "cluster", str(out), "--n-clusters", "4", "--out", str(clustered), "--plot",
                 "--smooth-k", "6"]) == 0
    c = ad.read_h5ad(clustered)
    assert c.obs["spgpt_domain"].nunique() == 4 and len(c.uns["spgpt_domain_colors"]) == 4
    assert c.uns["spgpt_domain"]["params"]["smooth_k"] == 6
    assert clustered.with_suffix(".png").stat().st_size > 10_000


def test_modality_and_gene_col_options(tmp_path, slide):
    out = tmp_path / "e.h5ad"
    assert main(["-q", "embed", str(slide), "--model", "random:tiny", "--out", str(out), "--modality", "starmap",
                 "--gene-col", "index", "--seed", "5"]) == 0
    rec = ad.read_h5ad(out).uns["X_spgpt"]["params"]
    assert rec["modality"] == "starmap" and rec["seed"] == 5


@pytest.mark.parametrize("args,msg", [
    (["embed", "missing.h5ad", "--model", "random:tiny", "--out", "o.h5ad"], "Input not found"),
    (["embed", "SLIDE", "--model", "nodir", "--out", "o.h5ad"], "does not exist"),
    (["embed", "SLIDE", "--model", "random:tiny", "--out", "o.h5ad", "--modality", "nanopore"], "unknown modality"),
    (["embed", "SLIDE", "--model", "random:tiny", "--out", "o.h5ad", "--gene-col", "nope"], "nope"),
    (["cluster", "SLIDE", "--n-clusters", "3", "--out", "o.h5ad"], "run `spgpt embed` first"),
])
def test_bad_input_gives_one_error_line(tmp_path, slide, capsys, args, msg, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(slide) if a == "SLIDE" else a for a in args]
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


def test_broken_model_directory_via_cli(tmp_path, slide, capsys):
    from spgpt_core import SpGPT

    d = SpGPT.random("tiny").save_pretrained(tmp_path / "m")
    (d / "vocab.json").unlink()
    assert main(["-q", "embed", str(slide), "--model", str(d), "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "missing vocab.json" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["cluster", "domains", "integrate", "impute"])
def test_cluster_counts_are_checked_before_any_work(slide, capsys, command):
    extra = {"integrate": [str(slide)], "impute": ["--reference", str(slide), "--genes", "GAD1"]}.get(command, [])
    try:  # argparse's own check (exit 2) or the option declaration's (an error line, exit 2): both before any work
        code = main(["-q", command, str(slide), *extra, "--n-clusters", "0", "--out", "o.h5ad"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "argument --n-clusters: must be >= 1 (got 0)" in err or re.search(r"n_clusters=0 must be >= [12]", err), err


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"embed", "cluster", "demo", "info"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: spgpt" in capsys.readouterr().out


def test_info_reports_model_and_gene_match(slide, capsys):
    assert main(["info", "--model", "random:tiny", str(slide)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[: out.rindex("}") + 1])["d_model"] == 32
    assert "matched 154 / 166 genes" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--model", "random:tiny", "--mapping-epochs", "20"]) == 0
    assert {"sample_slide.h5ad", "sample_reference.h5ad", "demo_result.h5ad", "domains.png", "summary.txt"} <= {
        p.name for p in out.iterdir()}
    text = (out / "summary.txt").read_text()
    assert "spgpt_domains_ARI" in text and "pca_domains_ARI" in text
    res = ad.read_h5ad(out / "demo_result.h5ad")
    assert res.obs["spgpt_domain"].nunique() == res.obs["domain"].nunique()
    assert main(["-q", "demo", "--out", str(out), "--model", "random:tiny"]) == 2  # non-empty folder


def test_embed_reads_a_spatialdata_store_in_a_chosen_coordinate_system(tmp_path, slide, capsys):
    from spgpt_core.io import to_spatialdata, write_spatialdata

    store = write_spatialdata(to_spatialdata(ad.read_h5ad(slide)), tmp_path / "slide.zarr")
    out = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(store), "--coordinate-system", "global", "--model", "random:tiny",
                 "--out", str(out)]) == 0
    res = ad.read_h5ad(out)
    assert res.uns["spgpt_source"]["coordinate_system"] == "global" and "X_spgpt" in res.obsm
    capsys.readouterr()
    assert main(["-q", "embed", str(store), "--coordinate-system", "nope", "--model", "random:tiny",
                 "--out", str(tmp_path / "x.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "nope" in err and "global" in err


def test_domains_fine_tunes_on_variable_genes_and_writes_the_whole_slide(tmp_path, capsys):
    from spgpt_core import metrics as M
    from spgpt_core.datasets import make_sample_slide

    slide = make_sample_slide(n_rows=24, n_cols=28, seed=1)
    src = tmp_path / "slide.h5ad"
    slide.write_h5ad(src)
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "dom.h5ad"
    assert main(["-q", "domains", str(src), "--n-clusters", "5", "--n-top-genes", "200", "--features", "fused",
                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    res = ad.read_h5ad(out)
    assert res.shape == slide.shape  # fine-tuned and embedded on 200 genes, written back whole
    assert res.obs["spgpt_domain"].nunique() == 5
    assert res.uns["X_spgpt"]["params"]["n_top_genes"] == 200
    assert res.uns["spgpt_domain"]["params"]["finetune_epochs"] == 1
    # shipped model: 0.79 fine-tuned, 0.76 zero-shot; an untrained random:small network gets 0.35 zero-shot
    assert M.ari(res.obs["domain"].astype(str).to_numpy(), res.obs["spgpt_domain"].astype(str).to_numpy()) > 0.7
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before
    # fine-tuning needs the model's features: with the default (the expression alone) it is refused up front
    capsys.readouterr()
    assert main(["-q", "domains", str(src), "--n-clusters", "5", "--finetune-epochs", "1", "--out",
                 str(tmp_path / "x.h5ad")]) == 2
    assert "--features fused" in capsys.readouterr().err and not (tmp_path / "x.h5ad").exists()
    # the default: domains from the slide's own expression, no model and no embedding, same domains found
    zs = tmp_path / "zero_shot.h5ad"
    assert main(["-q", "domains", str(src), "--n-clusters", "5", "--n-top-genes", "200", "--out", str(zs),
                 "--plot"]) == 0
    assert f"figure: {zs.with_suffix('.png')}" in capsys.readouterr().out and zs.with_suffix(".png").stat().st_size
    res = ad.read_h5ad(zs)
    assert res.uns["spgpt_domain"]["params"]["finetune_epochs"] == 0
    assert res.uns["spgpt_domain"]["params"]["features"] == "expression" and "X_spgpt" not in res.obsm
    assert M.ari(res.obs["domain"].astype(str).to_numpy(), res.obs["spgpt_domain"].astype(str).to_numpy()) > 0.7


def test_domains_says_when_the_model_is_not_used(tmp_path, caplog):
    """The default finds domains in the expression: a --model given with it is named as unused, not silently
    ignored, and no model is needed (a path that does not exist is not even opened)."""
    from spgpt_core.datasets import make_sample_slide

    src = tmp_path / "slide.h5ad"
    make_sample_slide(n_rows=12, n_cols=14, n_domains=3, seed=4).write_h5ad(src)
    with caplog.at_level("WARNING"):
        assert main(["-q", "domains", str(src), "--n-clusters", "3", "--model", str(tmp_path / "no_such_model"),
                     "--out", str(tmp_path / "d.h5ad")]) == 0
    assert "is not used" in caplog.text and "--features fused" in caplog.text


def test_warnings_print_on_their_own_line_above_the_progress_bar(tmp_path, slide):
    """A warning raised while a bar is drawn (here the Potts prior's fallback: Leiden communities of a random
    embedding are not Gaussian, and the refit would merge them) is a line of its own on stderr."""
    import subprocess
    import sys

    emb = tmp_path / "emb.h5ad"
    assert main(["-q", "embed", str(slide), "--model", "random:tiny", "--out", str(emb)]) == 0
    run = subprocess.run([sys.executable, "-m", "spgpt_core.cli", "cluster", str(emb), "--n-clusters", "4",
                          "--smooth-k", "6", "--spatial-prior", "0.5", "--out", str(tmp_path / "c.h5ad")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [ln.strip() for ln in re.split(r"[\r\n]", run.stderr)]
    assert any(ln.startswith("the Potts prior merged 4 domains into") for ln in lines), run.stderr
    assert ad.read_h5ad(tmp_path / "c.h5ad").obs["spgpt_domain"].nunique() == 4
