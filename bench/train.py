"""Training throughput: tokens/s and achieved FLOP/s per model size, and the full-recipe cost.

Runs real optimizer steps (forward, backward, Adam) on patches of a corpus built from a DLPFC slide
(the same batches `spgpt pretrain` makes), for the small CPU sizes and the scgpt-human shape, and
compares the achieved training FLOP/s (3x the forward matmul FLOPs) with this machine's measured
fp32 matmul FLOP/s in the same run. Then it works out what the paper's recipe (SpatialHuman30M:
30M cells, 4 epochs, context 600) costs on A100s from the measured tokens per cell.

    .venv/bin/python bench/train.py [--steps 4] [--write]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data"

A100_BF16_DENSE = 312e12  # FLOP/s, NVIDIA A100 datasheet (dense bf16 tensor cores)
ASSUMED_MFU = 0.35  # typical achieved fraction for a 12-layer d=512 model with short sequences


def train_flops(cfg, batch) -> float:
    """Forward matmul FLOPs of one batch x 3 (forward + backward). Context and query tokens both run
    the projections and FFN; context rows attend over P keys, query rows over P + 1."""
    P = batch.genes.shape[1]
    n_ctx = int((~batch.pad).sum())
    n_q = int((~batch.query_pad).sum())
    d, f, L = cfg.d_model, cfg.d_ffn, cfg.n_layers
    proj = 2 * (4 * d * d + 2 * d * f) * (n_ctx + n_q)
    attn = 2 * 2 * d * (n_ctx * P + n_q * (P + 1))
    decoders = 2 * n_q * (cfg.n_experts * (cfg.d_decoder_in * d + d * d) + 2 * (d * d + d * cfg.d_decoder_in))
    return 3.0 * (L * (proj + attn) + decoders)


def main() -> None:
    from _report import write_report
    from embed import matmul_flops

    from spgpt_core import SpGPT
    from spgpt_core.train.corpus import Corpus, SlideSpec, build_corpus
    from spgpt_core.train.sampler import PatchSampler
    from spgpt_core.train import TrainConfig
    from spgpt_core.train.batch import make_batch
    from spgpt_core.train.loop import compute_losses

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per size (after one warm-up step)")
    p.add_argument("--write", action="store_true", help="write the report to bench/results/train.md")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        corpus = Corpus(build_corpus([SlideSpec(path=str(DATA / "dlpfc" / "DLPFC_151673.h5ad"))], tmp / "c",
                                     val_fraction=0))
        peak = matmul_flops()
        rows = []
        for size, ctx in (("base-cpu", 128), ("small", 256), ("scgpt-human", 600)):
            torch.manual_seed(0)
            model = SpGPT.random(size)
            net = model.module.train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-4)
            cfg = TrainConfig(corpus="x", max_context=ctx, patch_size=16, k_neighbours=6, gen_ratios=[0.5])
            patches = PatchSampler(corpus, 16, seed=0).patches(0)
            tokens, flops, seconds, cells = 0, 0.0, 0.0, 0
            for i in range(args.steps + 1):
                b = make_batch(corpus, patches[i], cfg, model.config, corpus.gene_stats.means, [0, 0, i])
                t = time.perf_counter()
                opt.zero_grad()
                compute_losses(net, b, cfg)["total"].backward()
                opt.step()
                dt = time.perf_counter() - t
                if i:  # step 0 is warm-up
                    tokens += b.n_tokens
                    flops += train_flops(model.config, b)
                    seconds += dt
                    cells += len(b.genes)
            rows.append({"size": size, "params": sum(q.numel() for q in net.parameters()), "context": ctx,
                         "tokens_per_cell": tokens / cells, "tokens_per_s": tokens / seconds,
                         "cells_per_s": cells / seconds, "gflops": flops / seconds / 1e9,
                         "fraction": flops / seconds / peak, "flops_per_token": flops / tokens})
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    human = next(r for r in rows if r["size"] == "scgpt-human")
    # the full recipe: tokens per cell at context 600 as measured on DLPFC (a Visium slide: the
    # longest cells of the corpus; imaging cells are shorter, so this is an upper bound)
    total_tokens = 30e6 * 4 * human["tokens_per_cell"]
    total_flops = total_tokens * human["flops_per_token"]
    lines = [f"Machine: {torch.get_num_threads()} threads, torch {torch.__version__}; measured fp32 matmul "
             f"{peak / 1e9:.0f} GFLOP/s. Command: `.venv/bin/python bench/train.py --steps {args.steps}`. "
             "One patch of 16 DLPFC spots per optimizer step; FLOPs = 3 x forward matmul FLOPs (encoder, "
             "decoders).", "",
             "| size | parameters | context genes | tokens/cell | tokens/s | cells/s | training GFLOP/s | % of matmul peak |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['context']} | {r['tokens_per_cell']:.0f} | "
              f"{r['tokens_per_s']:,.0f} | {r['cells_per_s']:.1f} | {r['gflops']:.1f} | {100 * r['fraction']:.0f}% |"
              for r in rows]
    gpu_s = total_flops / (A100_BF16_DENSE * ASSUMED_MFU)
    lines += ["", "**The paper's recipe** (SpatialHuman30M: 30M cells x 4 epochs, scgpt-human size, context 600):",
              f"{human['tokens_per_cell']:.0f} tokens per cell (measured above) x 120M cell-passes = "
              f"{total_tokens:.2e} tokens x {human['flops_per_token']:.2e} FLOP/token = {total_flops:.2e} FLOP.",
              f"On A100s (312 TFLOP/s dense bf16) at an assumed {ASSUMED_MFU:.0%} utilisation: "
              f"{gpu_s / 3600:.0f} GPU-hours, i.e. {gpu_s / 3600 / 4:.0f} h on 4 GPUs and "
              f"{gpu_s / 3600 / 32:.1f} h on 32 GPUs (DDP scaling assumed linear; the gradient all-reduce of "
              "55M parameters per step is small next to 16 patches of compute).",
              f"On this CPU at the measured {human['gflops']:.0f} GFLOP/s it would take "
              f"{total_flops / (human['gflops'] * 1e9) / 86400 / 365:.0f} years."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_report("train", "## Training throughput\n\n" + table)


if __name__ == "__main__":
    main()
