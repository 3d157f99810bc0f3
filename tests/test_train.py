"""Corpus, spatial patch sampling, batches, the training loop: losses, checkpoints, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from helpers.data import ROOT, data_file
from spgpt_core.train.corpus import Corpus, SlideSpec, build_corpus, read_slide_list
from spgpt_core.errors import ConfigError, InputError
from spgpt_core.train.sampler import PatchSampler
from spgpt_core.train import TrainConfig, load_config, pretrain
from spgpt_core.train.batch import make_batch

MPFC = "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"
OSM = "osmfish/osmFISH_SScortex_valid_4839cells.h5ad"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    return build_corpus([SlideSpec(path=str(data_file(MPFC)), modality="starmap"),
                         SlideSpec(path=str(data_file(OSM)), modality="osmfish")], out, val_fraction=0.05, seed=0)


def test_corpus_build_qc_normalisation_and_split(corpus_dir):
    c = Corpus(corpus_dir)
    assert [s.modality for s in c.slides] == ["starmap", "osmfish"]
    for s, e in zip(c.slides, c.meta["slides"]):
        n_expr = np.diff(np.asarray(s.indptr))
        assert n_expr.min() >= 10  # imaging QC: >= 10 expressed genes
        assert e["n_cells"] <= e["n_cells_input"] and s.coords.shape == (s.n_cells, 2)
        assert 0.02 < np.asarray(s.split).mean() < 0.12  # ~5% held out, as whole patches
        vals = np.asarray(s.values)
        assert abs(vals.mean() - 1.0) < 0.02  # slide level: divided by the mean non-zero value (before QC)
    known = np.isfinite(c.gene_stats.means)
    assert known.sum() == c.meta["n_genes_with_stats"] > 150
    assert c.vocab.fingerprint() == c.meta["vocab_fingerprint"]


def test_validation_cells_form_spatial_patches(corpus_dir):
    s = Corpus(corpus_dir).slides[0]
    val = np.flatnonzero(np.asarray(s.split) == 1)
    from scipy.spatial import cKDTree

    # each held-out cell has held-out cells among its nearest neighbours (patches, not scattered cells)
    _, idx = cKDTree(s.coords).query(s.coords[val], k=4)
    assert (np.isin(idx[:, 1:], val).sum(1) >= 2).mean() > 0.8


def test_empty_corpus_and_bad_slide_lists(tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    a = ad.AnnData(sp.csr_matrix(np.eye(5, 30, dtype=np.float32)))  # one gene per cell: fails QC
    a.var_names = ["GAD1", "GAD2", "SST", "PVALB", "VIP", "SNAP25"] + [f"RPL{i}" for i in range(3, 27)]
    with pytest.raises(InputError, match="corpus would be empty"):
        build_corpus([SlideSpec(path="x", adata=a)], tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "l.yaml").write_text("- {path: a.h5ad, colour: red}\n")
    with pytest.raises(InputError, match="unknown"):
        read_slide_list([str(tmp_path / "l.yaml")])
    with pytest.raises(InputError, match="not an spgpt corpus"):
        Corpus(tmp_path)


def test_patches_are_spatial_neighbourhoods_shuffled_and_sharded(corpus_dir):
    c = Corpus(corpus_dir)
    sm = PatchSampler(c, patch_size=8, seed=1)
    e0, e0b, e1 = sm.patches(0), sm.patches(0), sm.patches(1)
    assert [p.cells.tolist() for p in e0] == [p.cells.tolist() for p in e0b]  # pure function of (seed, epoch)
    assert [p.cells.tolist() for p in e0] != [p.cells.tolist() for p in e1]  # reshuffled every epoch
    train = [np.flatnonzero(np.asarray(s.split) == 0) for s in c.slides]
    assert len(e0) == sum(round(len(t) / 8) for t in train)  # m / n centres per slide
    from scipy.spatial import cKDTree

    for p in e0[:20]:
        xy = c.slides[p.slide].coords
        t = train[p.slide]
        assert np.isin(p.cells, t).all()
        _, nn = cKDTree(xy[t]).query(xy[p.cells[0]], k=8)
        assert sorted(t[nn].tolist()) == sorted(p.cells.tolist())  # centre + its 7 nearest training cells
    r0, r1 = sm.rank_patches(0, 0, 2), sm.rank_patches(0, 1, 2)
    assert len(r0) == len(r1)
    usable = len(e0) - len(e0) % 2
    interleaved = [p for pair in zip(r0, r1) for p in pair]
    # ranks take disjoint positions of the same epoch list and together cover all of it
    assert [(p.slide, p.cells.tolist()) for p in interleaved] == [(p.slide, p.cells.tolist()) for p in e0[:usable]]


def test_batch_layout_context_and_query_genes(corpus_dir):
    from spgpt_core import SpGPT

    c = Corpus(corpus_dir)
    m = SpGPT.random("tiny")
    cfg = TrainConfig(corpus=str(corpus_dir), max_context=40, gen_ratios=[0.5])
    p = PatchSampler(c, 16).patches(0)[0]
    b = make_batch(c, p, cfg, m.config, c.gene_stats.means, [0, 0, 0])
    assert (b.genes[:, 0] == m.config.cls_token_id).all() and (b.values[:, 0] == -2).all()
    n_ctx = (~b.pad).sum(1) - 1
    expressed_q = ((b.target > 0) & ~b.query_pad).sum(1)
    zero_q = ((b.target == 0) & ~b.query_pad).sum(1)
    slide = c.slides[p.slide]
    available = np.array([len(np.setdiff1d(slide.panel, slide.cell(int(i))[0])) for i in p.cells])
    # queries: expressed : non-expressed = 1 : 1 (fewer when the panel has too few unexpressed genes)
    assert zero_q.tolist() == np.minimum(expressed_q.numpy(), available).tolist()
    assert (zero_q > 0).all()
    assert ((n_ctx - expressed_q).abs() <= 1).all()  # ratio 0.5 of the kept expressed genes
    assert (n_ctx + expressed_q <= 40).all()  # max_context expressed genes per cell
    for r in range(len(b.genes)):  # query genes never repeat context genes
        ctx = set(b.genes[r][~b.pad[r]].tolist())
        assert not ctx & set(b.query_genes[r][~b.query_pad[r]].tolist())
    assert b.coords.shape == (16, 2) and b.target.max() <= 50


def test_depth_augment_thins_the_context_and_keeps_full_depth_targets(corpus_dir):
    from spgpt_core import SpGPT

    c = Corpus(corpus_dir)
    m = SpGPT.random("tiny")
    p = PatchSampler(c, 16).patches(0)[0]
    slide = c.slides[p.slide]
    assert slide.count_unit is not None  # STARmap / osmFISH store whole counts
    full = make_batch(c, p, TrainConfig(corpus=str(corpus_dir), max_context=2000, gen_ratios=[0.5]),
                      m.config, c.gene_stats.means, [0, 0, 0])
    off = make_batch(c, p, TrainConfig(corpus=str(corpus_dir), max_context=2000, gen_ratios=[0.5], depth_augment=0.0),
                     m.config, c.gene_stats.means, [0, 0, 0])
    assert torch.equal(full.genes, off.genes) and torch.equal(full.target, off.target)  # off = the paper's batches
    thin = make_batch(c, p, TrainConfig(corpus=str(corpus_dir), max_context=2000, gen_ratios=[0.5], depth_augment=1.0),
                      m.config, c.gene_stats.means, [0, 0, 0])
    n_ctx_full = (~full.pad).sum(1) - 1
    n_ctx_thin = (~thin.pad).sum(1) - 1
    assert (n_ctx_thin <= n_ctx_full + 1).all() and n_ctx_thin.sum() < 0.9 * n_ctx_full.sum()
    for r, i in enumerate(p.cells):
        expressed = set(slide.cell(int(i))[0].tolist())
        ctx = set(thin.genes[r][~thin.pad[r]].tolist()) - {m.config.cls_token_id}
        q = thin.query_genes[r][~thin.query_pad[r]]
        t = thin.target[r][~thin.query_pad[r]]
        assert ctx <= expressed and not ctx & set(q.tolist())  # thinned genes only, no query leaks in
        # targets are the full cell's bins (the same as in the un-thinned batch), however deep the thinning
        full_bins = {int(g): float(v) for g, v, pad in zip(full.genes[r][1:], full.values[r][1:], full.pad[r][1:])
                     if not pad}
        full_bins.update({int(g): float(v) for g, v, pad in zip(full.query_genes[r], full.target[r], full.query_pad[r])
                          if not pad and v > 0})
        assert [float(x) for x in t] == [full_bins.get(int(g), 0.0) for g in q]


def test_count_unit_is_none_for_normalised_values(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, 1.0, size=(60, 30)).astype(np.float32)  # continuous values, not counts
    a = ad.AnnData(X)
    a.var_names = ad.read_h5ad(data_file(MPFC), backed="r").var_names[:30]
    a.obsm["spatial"] = rng.random((60, 2)) * 100
    out = build_corpus([SlideSpec(path="normalised", adata=a, modality="merfish")], tmp_path / "c", val_fraction=0.0)
    assert Corpus(out).slides[0].count_unit is None


def _cfg(corpus_dir, run_dir, **kw):
    base = dict(corpus=str(corpus_dir), run_dir=str(run_dir), init="random:tiny", patch_size=8, k_neighbours=4,
                max_context=32, epochs=1, max_steps=6, lr=2e-3, grad_accum=2, log_every=1, eval_every=3,
                checkpoint_every=2, seed=0)
    return TrainConfig(**{**base, **kw})


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_logs_every_term_and_saves_a_usable_model(corpus_dir, tmp_path):
    model = pretrain(_cfg(corpus_dir, tmp_path / "run", max_steps=12, eval_every=6))
    rec = _losses(tmp_path / "run")
    train = [r for r in rec if "gep" in r]
    val = [r for r in rec if "val_gep" in r]
    assert len(train) == 12 and len(val) == 2
    for k in ("gep", "geps_intra", "geps_inter"):
        assert np.isfinite([r[k] for r in train]).all()
        assert val[-1]["val_" + k] < val[0]["val_" + k]
    assert {"lr", "tokens_per_s", "moe_balance"} <= set(train[0])
    from spgpt_core import SpGPT

    back = SpGPT.from_pretrained(tmp_path / "run" / "model")
    assert back.gene_stats.n_known > 150 and back.metadata["training"]["steps"] == 12
    with pytest.raises(InputError, match="--resume"):
        pretrain(_cfg(corpus_dir, tmp_path / "run"))  # never silently overwrites a run
    assert model.config.d_model == 32


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "spgpt_core.cli", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _write_yaml(path, cfg: TrainConfig):
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_kill_9_then_resume_matches_uninterrupted_run(corpus_dir, tmp_path):
    full = _cfg(corpus_dir, tmp_path / "full", max_steps=10, checkpoint_every=2, eval_every=0)
    p = _run_cli(["pretrain", "--config", str(_write_yaml(tmp_path / "full.yaml", full))])
    assert p.wait(timeout=300) == 0, p.stderr.read()

    cut = _cfg(corpus_dir, tmp_path / "cut", max_steps=10, checkpoint_every=2, eval_every=0)
    cfg_file = _write_yaml(tmp_path / "cut.yaml", cut)
    p = _run_cli(["pretrain", "--config", str(cfg_file)])
    ckpt = tmp_path / "cut" / "checkpoints" / "step_00000004.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert ckpt.exists()
    p = _run_cli(["pretrain", "--config", str(cfg_file), "--resume"])
    assert p.wait(timeout=300) == 0, p.stderr.read()
    a = {r["step"]: r for r in _losses(tmp_path / "full") if "gep" in r}
    b = {r["step"]: r for r in _losses(tmp_path / "cut") if "gep" in r}
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for s in range(1, 11):
        for k in ("gep", "geps_intra", "geps_inter", "ecs"):
            assert a[s][k] == pytest.approx(b[s][k], rel=1e-6, abs=1e-6), (s, k)


def test_resume_skips_a_corrupt_latest_checkpoint(corpus_dir, tmp_path):
    pretrain(_cfg(corpus_dir, tmp_path / "r", max_steps=4, checkpoint_every=2))
    ck = tmp_path / "r" / "checkpoints"
    latest = ck / (ck / "latest").read_text()
    latest.write_bytes(latest.read_bytes()[:100])
    m = pretrain(_cfg(corpus_dir, tmp_path / "r", max_steps=6, checkpoint_every=2), resume=True)
    assert m.metadata["training"]["steps"] == 6
    with pytest.raises(InputError, match="nothing to resume"):
        pretrain(_cfg(corpus_dir, tmp_path / "never"), resume=True)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="k_neighbours"):
        TrainConfig(patch_size=4, k_neighbours=4)
    with pytest.raises(ConfigError, match="gen_ratios"):
        TrainConfig(gen_ratios=[1.5])
    with pytest.raises(ConfigError, match="depth_augment"):
        TrainConfig(depth_augment=1.5)
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nepochs: 2\n")
    cfg = load_config(tmp_path / "c.yaml", ["epochs=3", "model_overrides.n_layers=1", "gen_ratios=[0.5]"])
    assert cfg.epochs == 3 and cfg.model_overrides == {"n_layers": 1} and cfg.gen_ratios == [0.5]
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])


def test_continued_pretraining_keeps_the_earlier_stage_record(corpus_dir, tmp_path):
    from spgpt_core import SpGPT

    pretrain(_cfg(corpus_dir, tmp_path / "stage1", max_steps=2, eval_every=0))
    pretrain(_cfg(corpus_dir, tmp_path / "stage2", init=str(tmp_path / "stage1" / "model"), max_steps=3,
                  eval_every=0, depth_augment=1.0))
    back = SpGPT.from_pretrained(tmp_path / "stage2" / "model")
    assert back.metadata["training"]["steps"] == 3 and back.metadata["training"]["config"]["depth_augment"] == 1.0
    assert back.metadata["init_model"]["training"]["steps"] == 2
    assert back.describe()["training_steps"] == 5


def test_continual_pretraining_from_scgpt_human_directory(corpus_dir, tmp_path):
    from helpers.scgpt_checkpoint import write_scgpt_dir

    d = write_scgpt_dir(tmp_path / "scGPT_human", d=32, nheads=4, d_hid=48, nlayers=2)
    m = pretrain(_cfg(corpus_dir, tmp_path / "cp", init=str(d), max_steps=3, eval_every=0))
    assert m.metadata["imported_from"] == "scgpt-human" and m.metadata["training"]["steps"] == 3
    state = torch.load(d / "best_model.pt", weights_only=True)
    moved = m.module.state_dict()["layers.0.attn.qkv.weight"] - state["transformer_encoder.layers.0.self_attn.Wqkv.weight"]
    assert moved.abs().max() > 0  # the imported weights were trained


def test_torchrun_two_processes_match_single_process(corpus_dir, tmp_path):
    single = _cfg(corpus_dir, tmp_path / "one", max_steps=4, eval_every=0, num_threads=1)
    p = _run_cli(["pretrain", "--config", str(_write_yaml(tmp_path / "one.yaml", single))])
    assert p.wait(timeout=300) == 0, p.stderr.read()
    ddp = _cfg(corpus_dir, tmp_path / "two", max_steps=4, eval_every=0, num_threads=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                "-m", "spgpt_core.cli", "-q", "pretrain", "--config", str(_write_yaml(tmp_path / "two.yaml", ddp))]
    r = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = {x["step"]: x for x in _losses(tmp_path / "one") if "gep" in x}
    b = {x["step"]: x for x in _losses(tmp_path / "two") if "gep" in x}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:  # same patches per step; only float reduction order differs
        for k in ("gep", "geps_intra", "geps_inter"):
            assert a[s][k] == pytest.approx(b[s][k], rel=1e-3), (s, k)
    assert json.loads((tmp_path / "two" / "model" / "metadata.json").read_text())["training"]["world_size"] == 2


def test_loader_workers_build_the_same_batches(corpus_dir, tmp_path):
    """num_workers > 0 moves batch building into DataLoader processes; the run is unchanged."""
    pretrain(_cfg(corpus_dir, tmp_path / "w0", max_steps=4, eval_every=0))
    pretrain(_cfg(corpus_dir, tmp_path / "w2", max_steps=4, eval_every=0, num_workers=2))
    a = [r for r in _losses(tmp_path / "w0") if "gep" in r]
    b = [r for r in _losses(tmp_path / "w2") if "gep" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["tokens_seen"] == y["tokens_seen"]
        for k in ("gep", "geps_intra", "geps_inter"):
            assert x[k] == pytest.approx(y[k], rel=1e-6), k
    with pytest.raises(ConfigError, match="num_workers"):
        TrainConfig(num_workers=-1)
