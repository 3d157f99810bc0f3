"""`spgpt domains` on a generated 100k-cell Xenium output folder and on the same slide as `.h5ad`:
wall time, peak memory (each run a fresh process under /usr/bin/time -v) and ARI against the planted
domains. Shows that reading an instrument's folder costs no more than reading the converted file.

    python bench/vendor_memory.py --cells 100000 --out bench/results/vendor_memory.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_DOMAINS = 5


def run_domains(src: Path, out: Path, model: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "spgpt_core.cli", "-q", "domains", str(src),
           "--n-clusters", str(N_DOMAINS), "--model", model, "--out", str(out), "--overwrite"]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        return {"ok": False, "error": res.stderr[-2000:], "seconds": round(wall, 1)}
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    return {"ok": True, "seconds": round(wall, 1), "peak_rss_gb": round(peak_kb / 1e6, 2),
            "command": f"spgpt domains {src.name} --n-clusters {N_DOMAINS} --model {model} --out {out.name}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--model", default="default")
    p.add_argument("--out", default="bench/results/vendor_memory.json")
    args = p.parse_args()

    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from spgpt_core.io import read_slide, write_h5ad
    from spgpt_core.vendors.synthetic import write_xenium

    results = {"cells": args.cells, "genes": args.genes, "model": args.model, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="spgpt_vendor_bench_") as d:
        folder, h5ad = Path(d) / "xenium_outs", Path(d) / "slide.h5ad"
        t0 = time.time()
        # no morphology image: at 0.2125 µm pixels a 100k-cell slide's image is ~1 GB, and no verb reads it
        truth = write_xenium(folder, n_cells=args.cells, n_genes=args.genes, n_domains=N_DOMAINS, images=False)
        write_h5ad(read_slide(folder), h5ad)
        results["generate_seconds"] = round(time.time() - t0, 1)
        results["folder_mb"] = round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1)
        results["h5ad_mb"] = round(h5ad.stat().st_size / 1e6, 1)
        for name, src in (("xenium folder", folder), (".h5ad", h5ad)):
            out = Path(d) / f"domains_{name.split()[0].strip('.')}.h5ad"
            r = run_domains(src, out, args.model)
            if r["ok"]:
                a = ad.read_h5ad(out)
                r["ari"] = round(float(adjusted_rand_score(truth.loc[a.obs_names], a.obs["spgpt_domain"])), 3)
            results["runs"][name] = r
            print(name, json.dumps(r), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
