"""`spgpt domains` on generated slides of growing size: wall time, peak memory and ARI against the
planted bands. Each size runs in its own process (so peak memory is that run's) and its result is
appended to the output JSON as soon as it finishes; sizes already there are skipped (resumable).

    python bench/scale_domains.py --sizes 10000 50000 200000 --out bench/results/scale_domains.json

Sizes are approximate: the generator's Visium-like lattice keeps ~78% of its positions inside the
tissue outline.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_DOMAINS = 5


def lattice(n_spots: int) -> tuple[int, int]:
    rows = int(math.sqrt(n_spots / 0.78))
    return rows, int(round(n_spots / 0.78 / rows))


def run_one(n_spots: int, model: str, workdir: Path) -> dict:
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from spgpt_core.datasets import make_sample_slide

    rows, cols = lattice(n_spots)
    slide = make_sample_slide(n_rows=rows, n_cols=cols, n_domains=N_DOMAINS, seed=2)
    src, out = workdir / f"slide_{n_spots}.h5ad", workdir / f"domains_{n_spots}.h5ad"
    slide.write_h5ad(src)
    cmd = [sys.executable, "-m", "spgpt_core.cli", "-q", "domains", str(src), "--n-clusters", str(N_DOMAINS),
           "--model", model, "--out", str(out), "--overwrite"]
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        return {"n_spots": slide.n_obs, "ok": False, "error": res.stderr[-2000:], "seconds": round(wall, 1)}
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB on Linux; max over children so far
    a = ad.read_h5ad(out)
    return {"n_spots": int(a.n_obs), "ok": True, "seconds": round(wall, 1),
            "peak_rss_gb": round(peak / 1e6, 2) if peak > before else None,
            "ari": round(float(adjusted_rand_score(a.obs["domain"], a.obs["spgpt_domain"])), 3),
            "n_domains_found": int(a.obs["spgpt_domain"].nunique()), "model": model}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--model", default="default")
    p.add_argument("--out", default="bench/results/scale_domains.json")
    args = p.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    done = {r["target"] for r in results}
    with tempfile.TemporaryDirectory(prefix="spgpt_scale_") as d:
        for n in args.sizes:
            if n in done:
                continue
            r = {"target": n, **run_one(n, args.model, Path(d))}
            print(json.dumps(r), flush=True)
            results.append(r)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
