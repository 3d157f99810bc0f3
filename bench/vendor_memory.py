"""`spgpt domains` on generated 100k-cell instrument folders (Xenium, and the Xenium slide as `.h5ad`;
MERSCOPE, CosMx, Visium HD 8 µm bins): wall time, peak memory (each run a fresh process under
/usr/bin/time -v) and ARI against the planted domains. Shows that reading an instrument's folder
costs about what reading the converted file does. Runs already in the output JSON are skipped.

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


def write_folder(layout: str, folder: Path, cells: int, genes: int):
    """Write the generated folder; return (path to read, planted domain per cell name)."""
    from spgpt_core.vendors import synthetic
    from spgpt_core.vendors import synthetic_others as so

    if layout == "xenium":  # no morphology image: at 0.2125 µm pixels it is ~1 GB, and no verb reads it
        return folder, synthetic.write_xenium(folder, n_cells=cells, n_genes=genes, n_domains=N_DOMAINS, images=False)
    if layout == "merscope":
        return folder, so.write_merscope(folder, n_cells=cells, n_genes=genes, n_domains=N_DOMAINS, images=False)
    if layout == "cosmx":  # 0.51 mm fields of view, as the instrument's
        return folder, so.write_cosmx(folder, n_cells=cells, n_genes=genes, n_domains=N_DOMAINS, fov_um=510.0)
    truth = so.write_visium_hd(folder / "outs", side_um=8.0 * cells ** 0.5, n_genes=genes, n_domains=N_DOMAINS)
    return folder, truth["square_008um"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--model", default="default")
    p.add_argument("--layouts", nargs="+", default=["xenium", "merscope", "cosmx", "visium_hd"])
    p.add_argument("--out", default="bench/results/vendor_memory.json")
    args = p.parse_args()

    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from spgpt_core.io import read_slide, write_h5ad

    out_json = Path(args.out)
    results = json.loads(out_json.read_text()) if out_json.exists() else \
        {"cells": args.cells, "genes": args.genes, "model": args.model, "runs": {}}
    for layout in args.layouts:
        runs = [f"{layout} folder"] + ([".h5ad"] if layout == "xenium" else [])  # .h5ad: the Xenium slide converted
        if all(r in results["runs"] for r in runs):
            continue
        with tempfile.TemporaryDirectory(prefix="spgpt_vendor_bench_") as d:
            t0 = time.time()
            folder, truth = write_folder(layout, Path(d) / f"{layout}_outs", args.cells, args.genes)
            sources = {f"{layout} folder": folder}
            if layout == "xenium":
                sources[".h5ad"] = write_h5ad(read_slide(folder), Path(d) / "slide.h5ad")
            results.setdefault("generated_in_seconds", {})[layout] = round(time.time() - t0, 1)
            for name, src in sources.items():
                out = Path(d) / f"domains_{name.split()[0].strip('.')}.h5ad"
                r = run_domains(src, out, args.model)
                if r["ok"]:
                    a = ad.read_h5ad(out)
                    r["cells"] = int(a.n_obs)
                    r["ari"] = round(float(adjusted_rand_score(truth.loc[a.obs_names], a.obs["spgpt_domain"])), 3)
                r["input_mb"] = round(sum(f.stat().st_size for f in ([src] if src.is_file() else src.rglob("*"))
                                          if f.is_file()) / 1e6, 1)
                results["runs"][name] = r
                print(name, json.dumps(r), flush=True)
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
