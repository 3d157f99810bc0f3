"""`spgpt embed` over several slides, and the same sharded over 2 torchrun processes (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from helpers.data import ROOT
from spgpt_core.cli import main
from spgpt_core.cohort import output_paths
from spgpt_core.datasets import make_sample_reference, make_sample_slide
from spgpt_core.errors import InputError


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    ref = make_sample_reference(seed=0)
    paths = []
    for seed, (rows, cols) in enumerate([(16, 18), (12, 14)]):  # two sizes: shares of unequal length
        a = make_sample_slide(n_rows=rows, n_cols=cols, n_domains=3, seed=seed, reference=ref)
        X = a.X.tolil()
        X[[3, 40], :] = 0  # empty spots: dropped, and flagged in obs, the same way by both runs
        a.X = X.tocsr()
        paths.append(d / f"slide{seed}.h5ad")
        a.write_h5ad(paths[-1])
    return d, [str(p) for p in paths]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")


def test_two_processes_equal_one_process(slides):
    d, paths = slides
    common = ["--model", "random:tiny", "--device", "cpu", "--drop-empty", "--batch-size", "8", "--n-top-genes", "200"]
    assert main(["-q", "embed", *paths, *common, "--out", str(d / "one")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "spgpt_core.cli", "-q", "embed", *paths, *common, "--out", str(d / "two")]
    r = subprocess.run(torchrun, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (d / "two" / ".spgpt_shards").exists()  # rank 0 cleans up
    for p in paths:
        name = os.path.basename(p).removesuffix(".h5ad") + "_embedded.h5ad"
        one, two = ad.read_h5ad(d / "one" / name), ad.read_h5ad(d / "two" / name)
        e1, e2 = one.obsm["X_spgpt"], two.obsm["X_spgpt"]
        assert np.isnan(e1).any(axis=1).sum() == 2
        np.testing.assert_allclose(e1, e2, atol=1e-5)  # NaN rows in the same places
        assert one.obs["X_spgpt_empty"].sum() == 2
        assert one.obs.equals(two.obs)
        assert one.uns["X_spgpt"]["params"] == two.uns["X_spgpt"]["params"]
        assert one.uns["X_spgpt"]["summary"] == two.uns["X_spgpt"]["summary"]
        labels = []
        for run in ("one", "two"):
            out = d / f"{run}_{name}"
            assert main(["-q", "cluster", str(d / run / name), "--n-clusters", "3", "--out", str(out)]) == 0
            labels.append(ad.read_h5ad(out).obs["spgpt_domain"].astype(str).to_numpy())
        assert (labels[0] == labels[1]).all()


def test_one_slide_to_a_file_and_output_names(slides, tmp_path):
    _, paths = slides
    out = tmp_path / "e.h5ad"
    assert main(["-q", "embed", paths[0], "--model", "random:tiny", "--device", "cpu", "--drop-empty",
                 "--max-seq-len", "20", "--out", str(out)]) == 0
    rec = ad.read_h5ad(out).uns["X_spgpt"]["params"]
    assert rec["max_seq_len"] == 20
    with pytest.raises(InputError, match="--out DIR"):
        output_paths(paths, tmp_path / "x.h5ad")
    with pytest.raises(InputError, match="distinct"):
        output_paths(["a/s.h5ad", "b/s.h5ad"], tmp_path)
    assert output_paths(paths, tmp_path) == [tmp_path / "slide0_embedded.h5ad", tmp_path / "slide1_embedded.h5ad"]
