"""Every verb on generated slides of growing size: wall time, peak memory and (domains, cluster) ARI
against the planted domains. Each (verb, size) runs the CLI in a fresh process under ``/usr/bin/time -v``
(so its peak RSS is that run's alone) and is appended to ``--out`` (JSON lines) as soon as it
finishes; pairs already there are skipped, so a multi-hour run survives a stop. ``--write`` then
renders the table (``bench/results/scale.md``) from the JSON lines.

    # all verbs, 10k and 100k cells; then the three core verbs at 1M
    python bench/scale.py --verbs embed,cluster,domains,integrate,deconvolve,impute,finetune --sizes 10000,100000
    python bench/scale.py --verbs embed,cluster,domains --sizes 1000000
    python bench/scale.py --visium-hd 500000      # embed on a Visium HD-like slide (bins x 18,000 genes, sparse)
    python bench/scale.py --write                  # render bench/results/scale.md from scale.jsonl

Slides (cached in ``bench/.cache/scale/``, outside git, regenerated when missing): Xenium-like cells on a
jittered grid with planted domains (:func:`spgpt_core.vendors.synthetic.make_cells`: wavy bands and a
nodule, 300 genes, Poisson counts around domain profiles with ~1,200 transcripts per cell, which gives
a median of ~150 expressed genes per cell). ``integrate`` gets two slides of size/2 cells (another seed
each), so it embeds ``size`` cells in all; ``deconvolve`` and ``impute`` map a generated single-cell
reference with the same genes (:func:`spgpt_core.datasets.make_sample_reference`, one type per planted
domain); ``impute`` imputes 50 of the slide's genes (left out of the mapping genes, as ``spgpt impute
--genes`` does for measured genes); ``cluster`` clusters the embedding ``embed`` wrote at that size
(so it needs ``embed`` at that size first; it is run when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VERBS = ("embed", "cluster", "domains", "integrate", "deconvolve", "impute", "finetune")
#: Not verbs of their own: `spgpt domains --features fused`, domains found with the model's embedding
#: (the default finds them in the slide's expression alone and loads no model), and the same after
#: `--finetune-epochs 1`, the paper's fine-tuned domains in one command (fine-tuning is bounded by its
#: step budget, then the slide is embedded with the fine-tuned model).
EXTRA = ("domains-fused", "domains-finetuned")
N_DOMAINS = 5
N_GENES = 300
#: transcripts per cell: with the generator's skewed gene profiles this gives ~150 expressed genes per cell
UMIS = 1200.0
N_IMPUTE = 50
#: Visium HD-like 8 µm bins: a whole-transcriptome panel, few transcripts per bin
HD_GENES, HD_UMIS = 18_000, 200.0
CACHE = ROOT / "bench" / ".cache" / "scale"
OUT = ROOT / "bench" / "results" / "scale.jsonl"


# ------------------------------------------------------------------------------------ slides


def make_slide(path: Path, n_cells: int, *, seed: int = 0, n_genes: int = N_GENES, umis: float = UMIS,
               spacing: float | None = None) -> Path:
    """A generated slide as .h5ad (raw counts, obsm['spatial'] in µm, obs['domain'] planted); cached."""
    if path.exists():
        return path
    import anndata as ad
    import numpy as np
    import pandas as pd

    from spgpt_core.io import write_h5ad
    from spgpt_core.vendors.synthetic import CELL_SPACING_UM, make_cells

    cells = make_cells(n_cells, n_genes, N_DOMAINS, seed, umis=umis, spacing=spacing or CELL_SPACING_UM)
    a = ad.AnnData(cells.counts.astype(np.float32),
                   obs=pd.DataFrame({"domain": pd.Categorical(cells.domain.astype(str))},
                                    index=[f"c{i}" for i in range(n_cells)]),
                   var=pd.DataFrame(index=cells.genes))
    a.obsm["spatial"] = cells.xy
    a.uns["modality"] = "xenium" if spacing is None else "visium_hd"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad(a, path, overwrite=True)
    return path


def make_reference(path: Path) -> Path:
    """A labelled single-cell reference on the slides' genes (one type per planted domain)."""
    if path.exists():
        return path
    from spgpt_core.datasets import make_sample_reference
    from spgpt_core.io import write_h5ad

    ref = make_sample_reference(n_cells_per_type=400, n_types=N_DOMAINS, n_genes=N_GENES, seed=1)
    del ref.varm["true_profiles"]  # a DataFrame in varm; not needed by the CLI
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad(ref, path, overwrite=True)
    return path


def impute_genes(reference: Path, n: int = N_IMPUTE) -> list[str]:
    """The n reference genes with the most counts (genes with signal to impute), sorted."""
    import anndata as ad
    import numpy as np

    ref = ad.read_h5ad(reference)
    totals = np.asarray(ref.X.sum(axis=0)).ravel()
    return sorted(ref.var_names[np.argsort(-totals)[:n]])


# ---------------------------------------------------------------------------------- running


def spgpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "spgpt_core.cli", "-q", *args]


def command(verb: str, size: int, cache: Path, model: str) -> tuple[list[str], Path, int]:
    """(the CLI command, its output, the cells it processes) for one (verb, size)."""
    slide = lambda: make_slide(cache / f"xenium_{size}.h5ad", size)  # noqa: E731
    out = cache / "out" / f"{verb}_{size}.h5ad"
    m = ["--model", model]
    if verb == "embed":
        return spgpt("embed", str(slide()), "--out", str(out), *m, "--overwrite"), out, size
    if verb == "cluster":
        emb = cache / "out" / f"embed_{size}.h5ad"
        if not emb.exists():
            raise RuntimeError(f"cluster at {size} needs embed at {size} first (its output {emb})")
        return spgpt("cluster", str(emb), "--n-clusters", str(N_DOMAINS), "--smooth-k", "6", "--out", str(out),
                     "--overwrite"), out, size
    if verb == "domains":
        return spgpt("domains", str(slide()), "--n-clusters", str(N_DOMAINS), "--out", str(out), *m,
                     "--overwrite"), out, size
    if verb == "domains-fused":
        return spgpt("domains", str(slide()), "--n-clusters", str(N_DOMAINS), "--features", "fused",
                     "--out", str(out), *m, "--overwrite"), out, size
    if verb == "domains-finetuned":
        return spgpt("domains", str(slide()), "--n-clusters", str(N_DOMAINS), "--features", "fused",
                     "--finetune-epochs", "1", "--out", str(out), *m, "--overwrite"), out, size
    if verb == "integrate":
        halves = [make_slide(cache / f"xenium_{size // 2}_seed{s}.h5ad", size // 2, seed=s) for s in (1, 2)]
        return spgpt("integrate", *map(str, halves), "--out", str(out), *m, "--overwrite"), out, 2 * (size // 2)
    ref = make_reference(cache / "reference.h5ad")
    if verb == "deconvolve":
        return spgpt("deconvolve", str(slide()), "--reference", str(ref), "--celltype-key", "cell_type",
                     "--out", str(out), *m, "--overwrite"), out, size
    if verb == "impute":
        return spgpt("impute", str(slide()), "--reference", str(ref), "--genes", ",".join(impute_genes(ref)),
                     "--out", str(out), *m, "--overwrite"), out, size
    if verb == "finetune":
        out = cache / "out" / f"finetune_{size}"
        return spgpt("finetune", str(slide()), "--out", str(out), *m, "--overwrite"), out, size
    raise ValueError(verb)


def measure(cmd: list[str], log: Path, timeout: float | None) -> dict:
    """Run under /usr/bin/time -v; wall seconds, peak RSS (GB) and the exit status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        try:
            res = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env,
                                 timeout=timeout)
            rc = res.returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.time() - t0
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
    # CPU seconds beside wall seconds: on a shared machine the wall time says as much about the
    # neighbours as about spgpt; cpu_s / seconds is the share of the 2 cores the run got
    r = {"ok": rc == 0, "seconds": round(wall, 1), "cpu_s": round(sum(cpu), 1) if cpu else None,
         "peak_gb": round(int(peak.group(1)) / 1e6, 2) if peak else None}
    if rc is None:
        r["error"] = f"stopped after the {timeout:.0f} s limit (--timeout)"
    elif rc != 0:
        r["error"] = text.split("\tCommand being timed")[0][-1500:]  # the run's own last words
    return r


def ari_of(out: Path, key: str = "spgpt_domain") -> tuple[float, int]:
    """ARI of obs[key] against the planted obs['domain'] (only obs is read, not the counts)."""
    import anndata as ad
    import h5py
    from sklearn.metrics import adjusted_rand_score

    with h5py.File(out, "r") as f:
        obs = ad.io.read_elem(f["obs"])
    ok = obs[key].notna()
    return round(float(adjusted_rand_score(obs["domain"][ok], obs[key][ok])), 3), int(obs[key].nunique())


def run_record(out: Path, key: str) -> dict:
    import anndata as ad
    import h5py

    with h5py.File(out, "r") as f:
        if f"uns/{key}" not in f:
            return {}
        return ad.io.read_elem(f[f"uns/{key}"]).get("params", {})


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return r.stdout.strip() + ("+dirty" if dirty else "")


def torch_threads() -> int:
    """Threads the measured process computes with: OMP_NUM_THREADS when set (on a machine shared with
    other jobs one thread gives comparable CPU seconds), else torch's default, one per core."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(verbs: list[str], sizes: list[int], *, out: Path, cache: Path, model: str, timeout: float | None,
        rerun_failed: bool = False) -> list[dict]:
    threads = torch_threads()
    done = {(r["verb"], r["size"]) for r in load(out)
            if (r["ok"] or not rerun_failed) and r.get("threads", 1) == threads}
    new = []
    for size in sizes:
        for verb in verbs:
            if (verb, size) in done:
                continue
            if verb == "cluster" and not (cache / "out" / f"embed_{size}.h5ad").exists():
                new += run(["embed"], [size], out=out, cache=cache, model=model, timeout=timeout)  # its input
            cmd, dst, n_cells = command(verb, size, cache, model)
            r = {"verb": verb, "size": size, "cells": n_cells, "threads": threads,
                 **measure(cmd, cache / "logs" / f"{verb}_{size}.log", timeout)}
            if r["ok"]:
                r["cells_per_s"] = round(n_cells / r["seconds"], 1)
                if verb in ("domains", "cluster", *EXTRA):
                    r["ari"], r["n_found"] = ari_of(dst)
                    r["clustering"] = {k: v for k, v in run_record(dst, "spgpt_domain").items()
                                       if k in ("method", "path", "n_subsample", "assign", "resolution",
                                                "subsample_above")}
            r.update(command=" ".join(["spgpt", *cmd[4:]]).replace(str(cache), "$CACHE"), commit=commit(),
                     model=model, when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            print(json.dumps(r), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as f:  # one line per finished run: a stop loses only the run in progress
                f.write(json.dumps(r) + "\n")
            new.append(r)
            done.add((verb, size))
            if verb not in ("embed",) and dst.exists() and dst.is_file():
                dst.unlink()  # keep the cache small; embed's output is cluster's input
    return new


# ---------------------------------------------------------------------------------- report


def render(rows: list[dict]) -> str:
    latest: dict[tuple, dict] = {}
    shown = (*VERBS, *EXTRA, "embed (Visium HD-like)")
    for r in rows:
        if r["verb"] not in shown:  # a pipeline no longer offered (kept in the jsonl as history)
            continue
        latest[(r["verb"], r["size"], r.get("threads", 1))] = r  # the last run of each pair and thread count
    lines = ["| verb | cells | threads | seconds | CPU s | cells/s | cells/CPU-s | peak GB | ARI | time(1M)/time(100k) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {v: i for i, v in enumerate(shown)}
    for (verb, size, threads), r in sorted(latest.items(),
                                           key=lambda kv: (order.get(kv[0][0], 99), kv[0][2], kv[0][1])):
        ratio = ""
        base = latest.get((verb, 100_000, threads))
        if size == 1_000_000 and base and base["ok"] and r["ok"]:  # wall and CPU: wall also measures the load
            ratio = f"{r['seconds'] / base['seconds']:.1f} (CPU {r['cpu_s'] / base['cpu_s']:.1f})"
        if not r["ok"]:
            lines.append(f"| {verb} | {r['cells']:,} | {r.get('threads', 1)} | {r['seconds']:,.0f} | "
                         f"{r.get('cpu_s') or ''} | | | "
                         f"{r['peak_gb'] or ''} | | "
                         f"failed: {r['error'].splitlines()[-1][:80] if r.get('error') else ''} |")
            continue
        ari = f"{r['ari']:.3f}" if "ari" in r else ""
        per_cpu = f"{r['cells'] / r['cpu_s']:,.0f}" if r.get("cpu_s") else ""
        lines.append(f"| {verb} | {r['cells']:,} | {r.get('threads', 1)} | {r['seconds']:,.0f} | "
                     f"{r.get('cpu_s') or 0:,.0f} | "
                     f"{r['cells_per_s']:,.0f} | {per_cpu} | "
                     f"{r['peak_gb']:.2f} | {ari} | {ratio} |")
    cmds = sorted({r["command"] for r in latest.values()})
    return ("# Every verb at scale (`bench/scale.py`)\n\nGenerated Xenium-like slides (300 genes, median ~150 "
            "expressed genes per cell, 5 planted domains); each run a fresh `spgpt` process under "
            "`/usr/bin/time -v` (wall seconds including start-up and file I/O, CPU seconds user + system, peak "
            "RSS), with the torch threads in the `threads` column (1: OMP_NUM_THREADS=1, run while other jobs "
            "shared the machine; 2: torch's default on this 2-core machine, run alone). CPU s / seconds is the "
            "share of the cores the run got; cells/CPU-s is the rate without the neighbours. "
            "Raw results: `scale.jsonl`.\n\n" + "\n".join(lines) + "\n\nCommands ($CACHE = "
            "bench/.cache/scale):\n\n" + "\n".join(f"    {c}" for c in cmds) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbs", help="comma-separated, of: " + ", ".join(VERBS + EXTRA) + " (default: embed,cluster,"
                   "domains; none with --visium-hd alone)")
    p.add_argument("--sizes", help="comma-separated cell counts (default: 10000,100000)")
    p.add_argument("--visium-hd", type=int, metavar="BINS", help="embed a Visium HD-like slide of BINS 8 µm "
                   f"bins x {HD_GENES:,} genes (sparse); alone, only that")
    p.add_argument("--model", default="default")
    p.add_argument("--timeout", type=float, default=None, help="stop a run after this many seconds (recorded as "
                   "a miss)")
    p.add_argument("--rerun-failed", action="store_true", help="run again the pairs recorded as failed")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--cache", default=str(CACHE), help="generated slides and outputs (outside git)")
    p.add_argument("--write", action="store_true", help="render OUT's table into scale.md beside it")
    args = p.parse_args()
    if not (args.visium_hd and args.verbs is None and args.sizes is None):
        args.verbs, args.sizes = args.verbs or "embed,cluster,domains", args.sizes or "10000,100000"
    else:
        args.verbs = args.sizes = ""
    out, cache = Path(args.out), Path(args.cache)
    verbs = [v.strip() for v in args.verbs.split(",") if v.strip()]
    bad = sorted(set(verbs) - set(VERBS) - set(EXTRA))
    if bad:
        p.error(f"unknown verb(s) {', '.join(bad)}; choose from {', '.join(VERBS)}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.write and verbs:
        run(verbs, sizes, out=out, cache=cache, model=args.model, timeout=args.timeout,
            rerun_failed=args.rerun_failed)
    if args.visium_hd:
        run_visium_hd(args.visium_hd, out=out, cache=cache, model=args.model, timeout=args.timeout)
    if args.write:
        md = out.with_suffix(".md")
        md.write_text(render(load(out)))
        print(f"-> {md}")


def run_visium_hd(n_bins: int, *, out: Path, cache: Path, model: str, timeout: float | None) -> None:
    verb = "embed (Visium HD-like)"
    threads = torch_threads()
    if any(r["verb"] == verb and r["size"] == n_bins and r.get("threads", 1) == threads for r in load(out)):
        return
    src = make_slide(cache / f"visium_hd_{n_bins}.h5ad", n_bins, n_genes=HD_GENES, umis=HD_UMIS, spacing=8.0)
    dst = cache / "out" / f"embed_hd_{n_bins}.h5ad"
    cmd = spgpt("embed", str(src), "--out", str(dst), "--model", model, "--overwrite")
    r = {"verb": verb, "size": n_bins, "cells": n_bins, "threads": threads,
         **measure(cmd, cache / "logs" / f"embed_hd_{n_bins}.log", timeout)}
    if r["ok"]:
        r["cells_per_s"] = round(n_bins / r["seconds"], 1)
        dst.unlink()
    r.update(command=" ".join(["spgpt", *cmd[4:]]).replace(str(cache), "$CACHE"), commit=commit(), model=model,
             genes=HD_GENES, when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(r), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
