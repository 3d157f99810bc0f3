"""bench/generalize.py on a protocol file of one's own: the command a reviewer runs on slides we do not
have. Generated slides with planted domains stand in for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spgpt_core.datasets import make_sample_reference, make_sample_slide

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "generalize.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def own_slides(tmp_path_factory) -> Path:
    """Two generated slides and a reference under data/, and a protocol naming them by relative paths."""
    d = tmp_path_factory.mktemp("own")
    (d / "data").mkdir()
    ref = make_sample_reference(seed=0)
    ref.write_h5ad(d / "data" / "reference.h5ad")
    for seed in (1, 2):
        make_sample_slide(n_rows=22, n_cols=26, n_domains=4, seed=seed, reference=ref).write_h5ad(
            d / "data" / f"slide_{seed}.h5ad")
    (d / "own.yaml").write_text(
        "data_root: data\n"
        "domains:\n"
        "  test:\n"
        "    - {name: gen_1, path: slide_1.h5ad, label: domain, k: 4}\n"
        "    - {name: gen_2, path: slide_2.h5ad, label: domain, k: 4}\n"
        "deconvolution:\n"
        "  cases:\n"
        "    test:\n"
        "      - {name: gen_mixtures, kind: reference_mixtures, reference: reference.h5ad, label: cell_type}\n")
    return d


def test_own_protocol_runs_and_keeps_its_results_apart(own_slides, tmp_path):
    shipped = sorted(p.name for p in (ROOT / "bench" / "results").glob("*")) if (ROOT / "bench" / "results").exists() else []
    out = tmp_path / "results"
    r = _run("--set", "test", "--quick", "--protocol", str(own_slides / "own.yaml"), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    table = (out / "generalize_test.md").read_text()
    assert f"--protocol {own_slides / 'own.yaml'}" in table  # the command that reproduces it
    rows = [json.loads(line) for line in (out / "generalize_test.jsonl").read_text().splitlines()]
    assert {r["slide"] for r in rows} == {"gen_1", "gen_2"}
    by = {(r["slide"], r["pipeline"]): r["ari"] for r in rows}
    default = [v for (s, p), v in by.items() if p.startswith("spgpt default")]
    baseline = [v for (s, p), v in by.items() if p == "PCA smoothed (k=6) + gmm-tied"]
    assert len(default) == len(baseline) == 2
    assert min(default) > 0.5 and min(baseline) > 0.3  # planted domains are found by both, in the same run
    log = [json.loads(line) for line in (out / "test_runs.jsonl").read_text().splitlines()]
    assert log[-1]["protocol"] == str(own_slides / "own.yaml")
    assert (out / "cache").is_dir()  # its embeddings are cached apart from the shipped protocol's
    after = sorted(p.name for p in (ROOT / "bench" / "results").glob("*")) if (ROOT / "bench" / "results").exists() else []
    assert after == shipped

    r = _run("--family", "deconvolution", "--set", "test", "--quick", "--protocol", str(own_slides / "own.yaml"),
             "--out", str(out), "--methods", "NNLS on class means|spgpt default", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    dec = [json.loads(line) for line in (out / "generalize_deconvolution_test.jsonl").read_text().splitlines()]
    assert {d["pipeline"] for d in dec} == {"NNLS on class means", "spgpt default"}
    assert all(d["macro_f1"] > 0.3 for d in dec)


def test_a_broken_protocol_is_refused_before_any_work_with_every_problem(own_slides, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"data_root: {own_slides / 'data'}\n"
        "domains:\n"
        "  test:\n"
        "    - {name: a, path: missing.h5ad, label: domain, k: 4}\n"
        "    - {name: b, path: slide_1.h5ad, label: region, k: 4}\n"
        "    - {name: c, path: slide_2.h5ad, label: domain, k: 1}\n"
        "    - {name: d, path: slide_2.h5ad, label: domain}\n"
        "integration:\n"
        "  test: [[b, zz]]\n")
    r = _run("--set", "test", "--quick", "--protocol", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    msg = r.stderr
    assert "missing.h5ad does not exist" in msg
    assert "no obs column 'region'" in msg and "domain" in msg  # names what the slide does have
    assert "k=1" in msg and "missing k" in msg
    assert not (tmp_path / "o" / "generalize_test.jsonl").exists()
    r = _run("--family", "integration", "--set", "test", "--protocol", str(bad), cwd=tmp_path)
    assert r.returncode != 0 and "zz not among the slides" in r.stderr
    r = _run("--family", "imputation", "--set", "test", "--protocol", str(bad), cwd=tmp_path)
    assert r.returncode != 0 and "no cases under `imputation: cases: test:`" in r.stderr
    r = _run("--set", "test", "--protocol", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert r.returncode != 0 and "no protocol file" in r.stderr
