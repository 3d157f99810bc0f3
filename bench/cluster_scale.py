"""Clustering a big slide: Leiden on every cell (approximate kNN graph, resolution searched for K)
against Leiden on a 50,000-cell subsample with the rest assigned to the nearest centroid
(``tl._cluster.SUBSAMPLE_ABOVE``), time and ARI against the planted domains, both followed by the
same spatial smoothing (6 neighbours, as ``spgpt domains``).

    python bench/scale.py --verbs embed --sizes 100000          # the real 100k embedding first
    python bench/cluster_scale.py --embedding bench/.cache/scale/out/embed_100000.h5ad --million

``--million`` also clusters a 1M-cell slide on the subsample path. Its embedding is the 100k one
resampled: each cell of a 1M-cell layout of the same generator (same bands and nodule) takes the
embedding of a random 100k cell of its planted domain. That keeps the model's per-domain spread but
not any spatial correlation of the noise, so its ARI is a proxy; the time and memory are the real
cost of the steps after embedding at 1M. Results: ``bench/results/cluster_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

N_DOMAINS = 5


def read_embedding(path: Path):
    """obsm['X_spgpt'], obsm['spatial'] and the planted obs['domain'] of an embedded slide (not its counts)."""
    import anndata as ad
    import h5py

    with h5py.File(path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        return (np.asarray(f["obsm/X_spgpt"][:], dtype=np.float32), np.asarray(f["obsm/spatial"][:]),
                obs["domain"].astype(str).to_numpy())


def one(emb, xy, truth, **kw) -> dict:
    from spgpt_core.metrics import ari
    from spgpt_core.tl._cluster import cluster_embedding

    t, c = time.perf_counter(), time.process_time()
    labels, info = cluster_embedding(emb, n_clusters=N_DOMAINS, method="leiden", coords=xy, smooth_k=6, seed=0, **kw)
    # CPU seconds beside wall: on a shared machine the wall time also measures the neighbours
    return {"cells": len(emb), "seconds": round(time.perf_counter() - t, 1),
            "cpu_s": round(time.process_time() - c, 1), "ari": round(ari(truth, labels), 3),
            "n_found": info["n_clusters_found"], "clustered_on": info["clustered_on"],
            "resolution": info.get("resolution"), "peak_rss_gb_so_far": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}


def million_layout(n: int, seed: int = 0):
    """Positions and planted domains of an n-cell slide of bench/scale.py's generator (make_cells' grid)."""
    from spgpt_core.vendors.synthetic import CELL_SPACING_UM, domains_at

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    xy = np.column_stack([i % side, i // side]).astype(float) * CELL_SPACING_UM
    xy += rng.uniform(-0.3, 0.3, size=xy.shape) * CELL_SPACING_UM + CELL_SPACING_UM
    return xy, domains_at(xy, side * CELL_SPACING_UM, N_DOMAINS).astype(str)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedding", required=True, help="an embedded generated slide (bench/scale.py's embed output)")
    p.add_argument("--million", action="store_true", help="also the subsample path on a 1M-cell resampled proxy")
    p.add_argument("--skip-full", action="store_true", help="leave out Leiden on every cell")
    p.add_argument("--skip-done", action="store_true", help="leave out runs already in --out")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster_scale.json"))
    args = p.parse_args()
    emb, xy, truth = read_embedding(Path(args.embedding))
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}

    def todo(key):
        return not (args.skip_done and key in res)

    def save(key, r):
        res[key] = r
        print(key, json.dumps(r), flush=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    n = len(emb)
    if todo(f"subsample_{n}"):
        save(f"subsample_{n}", one(emb, xy, truth, subsample_above=1))  # the subsample path, whatever n
    if not args.skip_full and todo(f"full_{n}"):
        save(f"full_{n}", one(emb, xy, truth, subsample_above=None))
    if args.million and todo("subsample_1000000_resampled"):
        xy_m, truth_m = million_layout(1_000_000)
        rng = np.random.default_rng(0)
        emb_m = np.empty((len(xy_m), emb.shape[1]), dtype=np.float32)
        for d in np.unique(truth_m):
            donors = np.flatnonzero(truth == d)
            take = truth_m == d
            emb_m[take] = emb[rng.choice(donors, take.sum())]
        save("subsample_1000000_resampled", one(emb_m, xy_m, truth_m))


if __name__ == "__main__":
    main()
