"""What keeps big slides affordable: clustering a subsample and assigning the rest, the fine-tuning step
budget, and the resumable scale benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from spgpt_core.metrics import ari
from spgpt_core.tl._cluster import cluster_embedding

ROOT = Path(__file__).resolve().parents[1]


def _planted(n: int, k: int = 5, dims: int = 16, seed: int = 0):
    """Cells in bands across a square (the planted domains) with overlapping Gaussian embeddings."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    xy = np.column_stack([np.arange(n) % side, np.arange(n) // side]).astype(float)
    truth = np.minimum((xy[:, 1] / side * k).astype(int), k - 1)
    centres = rng.normal(0, 1.5, (k, dims))
    emb = (centres[truth] + rng.normal(0, 1.0, (n, dims))).astype(np.float32)
    return emb, xy, truth


@pytest.mark.parametrize("method", ["leiden", "kmeans"])
def test_subsample_and_assign_matches_clustering_every_cell(method):
    emb, xy, truth = _planted(12_000)
    full, info_full = cluster_embedding(emb, n_clusters=5, method=method, seed=0)
    sub, info_sub = cluster_embedding(emb, n_clusters=5, method=method, seed=0, subsample_above=10_000,
                                      n_subsample=3_000)
    assert info_full["clustered_on"] == "all cells"
    assert info_sub["clustered_on"] == "subsample" and info_sub["n_subsample"] == 3_000
    assert info_sub["assign"] == "nearest centroid"
    assert ari(truth, full) > 0.8  # the planted clusters are findable at all
    assert ari(full, sub) > 0.9 and ari(truth, sub) > ari(truth, full) - 0.05


def test_scalable_path_at_10k_cells_is_fast_and_recorded():
    """tl.cluster above the threshold: labels for every cell, the path in uns, within seconds."""
    import time

    import anndata as ad

    from spgpt_core import tl

    emb, xy, truth = _planted(20_000, seed=1)
    a = ad.AnnData(np.zeros((len(emb), 1), dtype=np.float32))
    a.obsm["X_spgpt"], a.obsm["spatial"] = emb, xy
    t = time.perf_counter()
    # the threshold scaled down with the slide (20k cells, 4k clustered), so the test stays fast
    tl.cluster(a, n_clusters=5, method="leiden", smooth_k=6, subsample_above=10_000, n_subsample=4_000)
    seconds = time.perf_counter() - t
    params = a.uns["spgpt_domain"]["params"]
    assert params["clustered_on"] == "subsample" and params["n_subsample"] == 4_000
    assert a.obs["spgpt_domain"].notna().all() and a.obs["spgpt_domain"].nunique() == 5
    assert ari(truth, a.obs["spgpt_domain"].astype(str)) > 0.9
    assert seconds < 60, seconds


def test_assignment_reads_the_embedding_in_chunks(monkeypatch):
    """Memory of the assignment is chunk x K, whatever the number of cells."""
    from spgpt_core.tl import _cluster

    emb, _, truth = _planted(9_000, seed=2)
    monkeypatch.setattr(_cluster, "ASSIGN_CHUNK", 1_000)
    seen = []
    real = np.argmin

    def spy(a, axis=None, **kw):
        seen.append(a.shape)
        return real(a, axis=axis, **kw)

    monkeypatch.setattr(_cluster.np, "argmin", spy)
    labels, _ = cluster_embedding(emb, n_clusters=5, method="leiden", subsample_above=5_000, n_subsample=2_000)
    assert seen and max(s[0] for s in seen) == 1_000 and all(s[1] <= 10 for s in seen)
    assert ari(truth, labels) > 0.8


# ------------------------------------------------------------------------- fine-tuning budget


def _small_slide():
    from spgpt_core.datasets import make_sample_slide

    return make_sample_slide(n_rows=16, n_cols=18, seed=3)  # ~220 spots: ~14 patches of 16 per epoch


def test_finetune_stops_at_the_step_budget():
    from spgpt_core.checkpoint import SpGPT
    from spgpt_core.train import finetune

    slide = _small_slide()
    model = SpGPT.random("tiny", seed=0)
    capped = finetune([slide.copy()], model, epochs=3, max_steps=4, max_context=32)
    assert capped.metadata["training"]["steps"] == 4
    assert capped.metadata["training"]["config"]["max_steps"] == 4
    whole = finetune([slide.copy()], model, epochs=1, max_steps=None, max_context=32)
    assert whole.metadata["training"]["steps"] > 4  # without a budget: every patch of the epoch


def test_step_budget_is_one_option_for_both_commands():
    import argparse

    from spgpt_core.errors import InputError
    from spgpt_core.params import DEFAULT_FINETUNE_STEPS, DomainsConfig, FinetuneBudget, add_options, from_args

    assert DomainsConfig(n_clusters=3).finetune_steps == FinetuneBudget().finetune_steps == DEFAULT_FINETUNE_STEPS
    flags = {cls.__dataclass_fields__["finetune_steps"].metadata["flag"] for cls in (DomainsConfig, FinetuneBudget)}
    assert flags == {"--finetune-steps"}
    p = argparse.ArgumentParser()
    add_options(p, FinetuneBudget)
    assert from_args(FinetuneBudget, p.parse_args(["--finetune-steps", "0"])).finetune_steps is None
    with pytest.raises(InputError, match="finetune_steps=-2"):
        DomainsConfig(n_clusters=3, finetune_steps=-2)


# ---------------------------------------------------------------------------- the benchmark


def _scale_module():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_bench_records_each_run_and_skips_those_done(tmp_path, monkeypatch):
    scale = _scale_module()
    out, cache = tmp_path / "scale.jsonl", tmp_path / "cache"
    first = scale.run(["embed"], [400], out=out, cache=cache, model="random:tiny", timeout=600)
    assert len(first) == 1 and first[0]["ok"], first[0].get("error")
    assert first[0]["peak_gb"] > 0 and first[0]["cpu_s"] > 0 and first[0]["cells"] == 400
    assert (cache / "xenium_400.h5ad").exists()  # the generated slide is cached for the next run

    def must_not_run(*a, **k):
        raise AssertionError("a (verb, size) already in the results was run again")

    monkeypatch.setattr(scale, "measure", must_not_run)
    assert scale.run(["embed"], [400], out=out, cache=cache, model="random:tiny", timeout=600) == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["verb"], r["size"]) for r in rows] == [("embed", 400)]
    table = scale.render(rows)
    assert "| embed | 400 |" in table and "spgpt embed $CACHE/xenium_400.h5ad" in table


def test_generated_slide_has_the_stated_shape(tmp_path):
    import anndata as ad

    scale = _scale_module()
    a = ad.read_h5ad(scale.make_slide(tmp_path / "s.h5ad", 2_000))
    expressed = np.diff(a.X.indptr)
    assert a.n_vars == 300 and a.obs["domain"].nunique() == 5 and "spatial" in a.obsm
    assert 120 <= np.median(expressed) <= 180  # the Xenium-like slide: ~150 expressed genes per cell


def test_neighbour_mean_is_the_mean_over_the_k_nearest_spots():
    """The sparse averaging in tl._features equals the plain gather-and-mean it replaced (which needed an
    n x k x d copy)."""
    from spgpt_core.neighbors import knn_indices
    from spgpt_core.tl._features import neighbour_mean

    rng = np.random.default_rng(0)
    F, xy = rng.normal(size=(3_000, 7)), rng.uniform(size=(3_000, 2))
    np.testing.assert_allclose(neighbour_mean(F, xy, 6), F[knn_indices(xy, 6)].mean(axis=1), atol=1e-12)
