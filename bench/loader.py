"""The pretraining data path at scale: a generated cohort, and the training loader alone in tokens/s.

    # 1. a cohort of generated slides (default 20 x 100,000 cells, 300 genes, ~150 expressed per cell)
    .venv/bin/python bench/loader.py make-cohort /tmp/cohort
    # 2. the corpus build, its peak memory measured by the kernel
    /usr/bin/time -v .venv/bin/spgpt -q corpus build /tmp/cohort/*.h5ad --out /tmp/corpus
    # 3. the loader alone: batches from the on-disk corpus, 1 and 2 worker processes
    .venv/bin/python bench/loader.py measure /tmp/corpus --workers 1 2 --seconds 30

``measure`` runs what the training loop runs per micro-batch (patch sampling, then ``make_batch``:
reading the cells from the memory-mapped corpus, normalisation, binning, gene subsampling, context
and query selection, padding) with no model, in W processes that each take their own share of the
epoch's patches exactly as W torchrun ranks (or W data-loader workers) do. Tokens are counted as the
trainer counts them (context + query tokens of each batch). Each worker is pinned to one thread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: bench/train.py's arithmetic for the paper's recipe: 9.8e10 tokens in 38 A100-hours (35% utilisation)
A100_TOKENS_PER_S = 9.8e10 / (38 * 3600)


def make_cohort(out: Path, n_slides: int, n_cells: int, n_genes: int, expressed: int, seed: int = 0) -> None:
    """Slides of raw counts with vocabulary gene names and coordinates, written one at a time."""
    import anndata as ad
    import scipy.sparse as sp

    from spgpt_core.pp.vocab import GeneVocab

    out.mkdir(parents=True, exist_ok=True)
    genes = [g for g in GeneVocab.default().tokens if not g.startswith("<")]
    for s in range(n_slides):
        path = out / f"slide{s:03d}.h5ad"
        if path.exists():
            continue
        rng = np.random.default_rng([seed, s])
        # cells express a varying number of genes (around `expressed`), with gene-specific rates
        n_expr = np.clip(rng.poisson(expressed, n_cells), 12, n_genes)
        p = rng.gamma(0.7, 1.0, n_genes)
        p /= p.sum()
        indptr = np.concatenate([[0], np.cumsum(n_expr)])
        idx = np.empty(indptr[-1], dtype=np.int32)
        for i in range(0, n_cells, 10_000):  # draw genes without replacement per cell, in blocks
            keys = np.log(rng.random((min(10_000, n_cells - i), n_genes))) / p  # Efraimidis-Spirakis
            top = np.argsort(-keys, axis=1)
            for r, k in enumerate(n_expr[i:i + 10_000]):
                idx[indptr[i + r]:indptr[i + r] + k] = np.sort(top[r, :k])
        data = (1 + rng.geometric(0.4, len(idx))).astype(np.float32)
        a = ad.AnnData(sp.csr_matrix((data, idx, indptr), shape=(n_cells, n_genes)))
        a.var_names = genes[s % 3 * 50: s % 3 * 50 + n_genes]  # panels overlap, as real cohorts do
        side = int(np.ceil(np.sqrt(n_cells)))
        a.obsm["spatial"] = np.stack([np.arange(n_cells) % side, np.arange(n_cells) // side], 1) * 10.0
        a.uns["modality"] = "xenium"
        a.write_h5ad(path)
        print(f"{path}: {n_cells:,} cells, {len(idx) / n_cells:.0f} genes per cell", flush=True)


def _worker(corpus_dir: str, rank: int, world: int, seconds: float, max_context: int, queue) -> None:
    import torch

    torch.set_num_threads(1)
    from spgpt_core.model import preset_config
    from spgpt_core.train import TrainConfig
    from spgpt_core.train.batch import make_batch
    from spgpt_core.train.corpus import Corpus
    from spgpt_core.train.sampler import PatchSampler

    corpus = Corpus(corpus_dir)
    cfg = TrainConfig(corpus=corpus_dir, max_context=max_context)
    model_cfg = preset_config("scgpt-human")
    t = time.perf_counter()
    patches = PatchSampler(corpus, cfg.patch_size, seed=0).rank_patches(0, rank, world)
    setup = time.perf_counter() - t
    tokens = cells = n = 0
    t, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - t < seconds and n < len(patches):
        b = make_batch(corpus, patches[n], cfg, model_cfg, corpus.gene_stats.means, [0, 0, n * world + rank])
        tokens += b.n_tokens
        cells += len(b.genes)
        n += 1
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt  # reads that waited for the disk
    # per CPU-second as well: on a shared machine a process gets less than a core, and the CPU time it
    # did get is what one dedicated core would deliver
    queue.put({"rank": rank, "batches": n, "tokens": tokens, "cells": cells, "seconds": dt, "cpu_seconds": cpu,
               "setup_seconds": setup, "tokens_per_s": tokens / dt, "tokens_per_cpu_s": tokens / cpu,
               "tokens_per_cell": tokens / max(cells, 1), "major_page_faults": faults})


def measure(corpus_dir: Path, workers: list[int], seconds: float, max_context: int) -> list[dict]:
    ctx = mp.get_context("spawn")  # a clean interpreter per worker, like torchrun ranks
    rows = []
    for w in workers:
        queue = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(str(corpus_dir), r, w, seconds, max_context, queue))
                 for r in range(w)]
        for p in procs:
            p.start()
        per = sorted((queue.get() for _ in procs), key=lambda d: d["rank"])
        for p in procs:
            p.join()
        total = sum(d["tokens_per_s"] for d in per)
        rows.append({"workers": w, "tokens_per_s_total": total, "tokens_per_s_per_worker": total / w,
                     "tokens_per_cpu_s": sum(d["tokens"] for d in per) / sum(d["cpu_seconds"] for d in per),
                     "per_worker": per})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-cohort", help="write generated slides")
    m.add_argument("out", type=Path)
    m.add_argument("--slides", type=int, default=20)
    m.add_argument("--cells", type=int, default=100_000)
    m.add_argument("--genes", type=int, default=300)
    m.add_argument("--expressed", type=int, default=150)
    r = sub.add_parser("measure", help="tokens/s of the training loader alone")
    r.add_argument("corpus", type=Path)
    r.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    r.add_argument("--seconds", type=float, default=30)
    r.add_argument("--max-context", type=int, default=600, help="expressed genes per cell (paper: 600)")
    r.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    if args.cmd == "make-cohort":
        make_cohort(args.out, args.slides, args.cells, args.genes, args.expressed)
        return
    rows = measure(args.corpus, args.workers, args.seconds, args.max_context)
    best = min(r["tokens_per_cpu_s"] for r in rows)  # the slower of the runs: per dedicated core
    summary = {"corpus": str(args.corpus), "cpu_cores": os.cpu_count(), "max_context": args.max_context,
               "rows": rows, "a100_tokens_per_s": A100_TOKENS_PER_S,
               "workers_per_a100": A100_TOKENS_PER_S / best}
    print(f"one A100 consumes ~{A100_TOKENS_PER_S:.2e} tokens/s; at {best:.3g} tokens/s per CPU core that is "
          f"{summary['workers_per_a100']:.1f} loader processes per A100")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
