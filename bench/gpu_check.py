"""One prepared check of spgpt's GPU path, for a machine with CUDA GPUs (under 5 minutes).

    bash bench/gpu_check.sh [--dry-run] [--out bench/results/gpu_check.json]

Steps, each recorded in the JSON as soon as it finishes (a failed step keeps its error and the next
steps still run):

  precision   bf16-autocast embeddings against fp32 of the same slide, shipped model: cosine per cell
              (pass: the minimum >= 0.99)
  throughput  embedding cells/s, tokens/s and peak GPU memory at the shipped (base-cpu) and the
              scGPT-human sizes, on a generated wide slide
  pretrain    50 pretraining steps on one GPU, then the same under torchrun with one process per GPU (NCCL)
  finetune    `spgpt finetune` on the sample slide (1 epoch)
  domains     `spgpt domains` on the sample slide on the GPU, ARI against the planted domains

Everything runs on generated data (nothing is downloaded). ``--dry-run`` runs the same code on the
CPU with tiny sizes, bf16 autocast on the CPU for the comparison and gloo for torchrun, so CI keeps
this script working. Without ``--dry-run`` and without CUDA it says so in the JSON and exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's spgpt, also when the venv holds another
import torch  # noqa: E402

from spgpt_core.atomic import atomic_path  # noqa: E402


class Check:
    """Sizes and paths of one run, and the JSON report written after every step."""

    def __init__(self, dry: bool, out: Path, work: Path):
        self.dry, self.out, self.work = dry, out, work
        self.device = "cpu" if dry else "cuda"
        self.model = "random:tiny" if dry else "default"
        self.n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        if dry:  # two processes share the CI machine's cores
            self.env["OMP_NUM_THREADS"] = "1"
        self.report = {"dry_run": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": _versions(),
                       "device": _device_info(), "steps": {}}

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out) as tmp:
            tmp.write_text(json.dumps(self.report, indent=2, default=float))

    def spgpt(self, *args: str, torchrun: int = 0, timeout: float = 600) -> dict:
        """Run an spgpt command (under torchrun with that many processes); its wall time and output."""
        cmd = [sys.executable, "-m", "spgpt_core.cli", "-q", *args]
        if torchrun:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                   "-m", "spgpt_core.cli", "-q", *args]
        t = time.perf_counter()
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.work)
        if r.returncode:
            raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {r.returncode}: {r.stderr[-2000:]}")
        return {"wall_s": round(time.perf_counter() - t, 2), "stdout": r.stdout.strip()[-500:]}


def _versions() -> dict:
    from importlib.metadata import version

    import spgpt_core

    gpu = torch.cuda.is_available()
    return {"spgpt": spgpt_core.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpu else None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if gpu else None,
            **{pkg: version(pkg) for pkg in ("numpy", "scipy", "anndata", "scanpy")},
            "platform": platform.platform(), "cpu_cores": os.cpu_count()}


def _device_info() -> dict:
    if not torch.cuda.is_available():
        return {"cuda_available": False, "gpus": 0}
    props = torch.cuda.get_device_properties(0)
    return {"cuda_available": True, "gpus": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
            "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
            "bf16_supported": torch.cuda.is_bf16_supported()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------- data


def sample_slide(c: Check, seed: int = 0) -> Path:
    """The generated Visium-like slide with planted domains (small for the dry run)."""
    from spgpt_core.datasets import make_sample_slide

    path = c.work / f"sample{seed}.h5ad"
    if not path.exists():
        rows, cols = (14, 16) if c.dry else (40, 48)
        make_sample_slide(n_rows=rows, n_cols=cols, n_domains=3 if c.dry else 5, seed=seed).write_h5ad(path)
    return path


def wide_slide(n_cells: int, n_genes: int, expressed: int, seed: int = 0):
    """Cells with ``expressed`` of ``n_genes`` vocabulary genes each (a whole-transcriptome-like length),
    so both model sizes run at or near their full context."""
    import anndata as ad
    import scipy.sparse as sp

    from spgpt_core.pp.vocab import GeneVocab

    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_genes, density=expressed / n_genes, format="csr", random_state=rng,
                  data_rvs=lambda k: 1 + rng.geometric(0.3, size=k)).astype(np.float32)
    a = ad.AnnData(X)
    a.var_names = [g for g in GeneVocab.default().tokens if not g.startswith("<")][:n_genes]
    a.obsm["spatial"] = rng.random((n_cells, 2)) * 1000
    a.uns["modality"] = "visium"
    return a


# ---------------------------------------------------------------------------------------- steps


def step_precision(c: Check) -> dict:
    """bf16 autocast vs fp32 on the same slide and model: cosine per cell (embeddings are unit vectors)."""
    import anndata as ad

    from spgpt_core import load_model
    from spgpt_core.tl._embed import embed_arrays, prepare_slide

    model = load_model(c.model, device=c.device)
    adata = ad.read_h5ad(sample_slide(c))
    prep = prepare_slide(adata, model, n_top_genes=None)
    emb = {p: embed_arrays(adata, model, prep, precision=p) for p in ("fp32", "bf16")}
    cos = np.sum(emb["fp32"] * emb["bf16"], axis=1)
    return {"model": c.model, "cells": int(adata.n_obs), "cosine_min": float(cos.min()),
            "cosine_median": float(np.median(cos)), "cosine_p01": float(np.quantile(cos, 0.01)),
            "pass": bool(cos.min() >= 0.99), "threshold": 0.99}


def step_throughput(c: Check) -> dict:
    """Cells/s, tokens/s and peak GPU memory of the embedding (tokenisation included), per model size."""
    from spgpt_core import load_model
    from spgpt_core.tl._embed import context_genes, embed_arrays, prepare_slide

    n_cells, n_genes, expressed = (300, 400, 60) if c.dry else (10_000, 4_000, 1_000)
    adata = wide_slide(n_cells, n_genes, expressed)
    out = {"cells": n_cells, "genes": n_genes, "expressed_per_cell": expressed, "batch_size": 64, "sizes": {}}
    for name, spec in (("default", c.model), ("scgpt-human", "random:tiny" if c.dry else "random:scgpt-human")):
        model = load_model(spec, device=c.device)
        prep = prepare_slide(adata, model, n_top_genes=None)
        tokens = int(np.minimum(prep.stats.cell_n_expressed, context_genes(model.config.max_seq_len)).sum() + n_cells)
        embed_arrays(adata[:256].to_memory(), model, prepare_slide(adata[:256].to_memory(), model, n_top_genes=None))
        if c.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _sync(c.device)
        t = time.perf_counter()
        embed_arrays(adata, model, prep, batch_size=64)
        _sync(c.device)
        dt = time.perf_counter() - t
        out["sizes"][name] = {
            "model": spec, "parameters": sum(p.numel() for p in model.module.parameters()),
            "context_tokens": model.config.max_seq_len, "tokens_per_cell": tokens / n_cells, "seconds": round(dt, 3),
            "cells_per_s": n_cells / dt, "tokens_per_s": tokens / dt,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if c.device == "cuda" else None}
        del model
    return out


def _train_config(c: Check, corpus: Path, run_dir: Path, grad_accum: int) -> Path:
    import yaml

    cfg = {"corpus": str(corpus), "run_dir": str(run_dir), "patch_size": 16, "k_neighbours": 6, "epochs": 100,
           "grad_accum": grad_accum, "lr": 1e-4, "warmup_steps": 10, "eval_every": 0, "checkpoint_every": 10**6,
           "seed": 0, "device": c.device}
    if c.dry:
        cfg.update(init="random:tiny", max_context=32, max_steps=3, log_every=1, num_threads=1)
    else:  # the paper's model shape and context; two loader processes per GPU build batches ahead of it
        cfg.update(init="random:scgpt-human", max_context=600, max_steps=50, log_every=10, num_workers=2)
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def _training_numbers(run_dir: Path) -> dict:
    rec = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rec if "gep" in r]
    later = train[1:] or train  # the first window holds CUDA start-up and kernel selection
    return {"steps": train[-1]["step"], "final_loss": train[-1]["loss"], "first_loss": train[0]["loss"],
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in later])),
            "tokens_seen": train[-1]["tokens_seen"], "train_seconds": train[-1]["elapsed_s"]}


def step_pretrain(c: Check) -> dict:
    """Pretraining steps on one device, then under torchrun with one process per GPU (2 with gloo in the dry run)."""
    from spgpt_core.train.corpus import SlideSpec, build_corpus

    corpus = c.work / "corpus"
    if not corpus.exists():
        build_corpus([SlideSpec(path=str(sample_slide(c, s))) for s in (0, 1)], corpus, val_fraction=0.0)
    world = 2 if c.dry else max(1, c.n_gpus)
    grad_accum = world * math.ceil((2 if c.dry else 8) / world)  # a multiple of the process count
    backend = "gloo" if c.dry else "nccl" if world > 1 else "none (one GPU: one process)"
    out = {"grad_accum": grad_accum, "processes": world, "backend": backend, "loader_workers": 0 if c.dry else 2}
    one = c.work / "pretrain_1"
    out["single"] = {**c.spgpt("pretrain", "--config", str(_train_config(c, corpus, one, grad_accum))),
                     **_training_numbers(one)}
    many = c.work / f"pretrain_{world}"
    out["torchrun"] = {**c.spgpt("pretrain", "--config", str(_train_config(c, corpus, many, grad_accum)),
                                 torchrun=world), **_training_numbers(many)}
    out["torchrun_speedup"] = out["torchrun"]["tokens_per_s"] / out["single"]["tokens_per_s"]
    return out


def step_finetune(c: Check) -> dict:
    extra = ["--max-context", "32"] if c.dry else []
    r = c.spgpt("finetune", str(sample_slide(c)), "--model", c.model, "--device", c.device, "--epochs", "1",
                "--out", str(c.work / "finetuned"), "--overwrite", *extra)
    meta = json.loads((c.work / "finetuned" / "metadata.json").read_text())
    return {**r, "model": c.model, "steps": meta["training"]["steps"], "tokens": meta["training"]["tokens"]}


def step_domains(c: Check) -> dict:
    import anndata as ad

    from spgpt_core.metrics import ari

    k = "3" if c.dry else "5"
    out = c.work / "domains.h5ad"
    r = c.spgpt("domains", str(sample_slide(c)), "--n-clusters", k, "--features", "fused", "--model", c.model,
                "--device", c.device, "--out", str(out), "--overwrite")  # fused: the model's path, on the GPU
    a = ad.read_h5ad(out)
    return {**r, "model": c.model, "device": a.uns["X_spgpt"]["params"]["device"], "cells": int(a.n_obs),
            "domains": int(a.obs["spgpt_domain"].nunique()),
            "ari_vs_planted": float(ari(a.obs["domain"].astype(str), a.obs["spgpt_domain"].astype(str)))}


STEPS = {"precision": step_precision, "throughput": step_throughput, "pretrain": step_pretrain,
         "finetune": step_finetune, "domains": step_domains}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, gloo: checks the script itself (CI)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check.json"), help="JSON report")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    args = p.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spgpt_gpu_check_") as work:
        c = Check(args.dry_run, Path(args.out), Path(work))
        if not args.dry_run and not torch.cuda.is_available():
            c.report["error"] = (f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
                                 "scripts/setup.sh installs the CPU wheel: install a CUDA build of the same torch "
                                 "version in .venv, or run with --dry-run to check the script on the CPU")
            c.save()
            print(f"gpu_check: {c.report['error']} -> {c.out}", file=sys.stderr)
            return 2
        print(f"gpu_check ({'dry run, CPU' if c.dry else c.report['device'].get('name')}) -> {c.out}", flush=True)
        failed = []
        for name in args.steps.split(","):
            t = time.perf_counter()
            try:
                result = {"ok": True, **STEPS[name](c)}
                if result.get("pass") is False:
                    result["ok"] = False
                    failed.append(name)
            except Exception as e:  # noqa: BLE001 - recorded; the next step still runs
                result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                failed.append(name)
            result["step_seconds"] = round(time.perf_counter() - t, 2)
            c.report["steps"][name] = result
            c.report["total_seconds"] = round(time.perf_counter() - t0, 2)
            c.save()
            shown = {k: v for k, v in result.items() if k not in ("traceback", "stdout")}
            print(f"[{name}] {json.dumps(shown, default=float)[:600]}", flush=True)
        c.report["failed_steps"] = failed
        c.save()
    print(f"gpu_check: {len(STEPS) - len(failed)}/{len(STEPS)} steps ok in {time.perf_counter() - t0:.0f}s -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
