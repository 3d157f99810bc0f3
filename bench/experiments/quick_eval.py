"""Quick zero-shot comparison of candidate models: the spgpt half of bench/tasks.py's domain and
integration tasks, without the baselines (they do not depend on the model; see BENCHMARKS.md).

    python bench/experiments/quick_eval.py MODEL_DIR [--threads 1] [--layer -1] [--json out.json]

Domains: DLPFC 151673 / 151674 (K = 7) and STARmap mPFC BZ5 / BZ9 (K = 4), embedding of the 3,000 most
variable genes, then ARI of [k-means, k-means + 6-neighbour smoothing, Leiden, Leiden + smoothing]
(seed 0). Integration: ``spgpt_core.tl.integrate`` of each pair, Leiden, Methods 4.5.2
metrics. Every candidate model in docs/experiments/ was scored with this protocol.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from spgpt_core import metrics
from spgpt_core.tl._cluster import cluster_embedding
from spgpt_core.tl._embed import compute_embedding
from spgpt_core.tl._integrate import integrate
from spgpt_core.checkpoint.pretrained import load_model

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DOMAIN_SETS = [
    ("DLPFC_151673", "dlpfc/DLPFC_151673.h5ad", 7),
    ("DLPFC_151674", "dlpfc/DLPFC_151674.h5ad", 7),
    ("mPFC_BZ5", "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad", 4),
    ("mPFC_BZ9", "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad", 4),
]
INTEGRATION_SETS = [
    ("DLPFC", ["dlpfc/DLPFC_151673.h5ad", "dlpfc/DLPFC_151674.h5ad"], "layer"),
    ("mPFC", ["starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad",
              "starmap_mpfc/STARmap_mPFC_20180419_BZ9_control.h5ad"], "cell_type"),
]
CLUSTERINGS = [("kmeans", 0), ("kmeans", 6), ("leiden", 0), ("leiden", 6)]


def domain_aris(emb: np.ndarray, adata, k: int, labels: np.ndarray) -> list[float]:
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    ok = np.isfinite(emb).all(1)
    out = []
    for method, smooth in CLUSTERINGS:
        lab, _ = cluster_embedding(emb[ok], n_clusters=k, method=method, coords=xy[ok], smooth_k=smooth, seed=0)
        full = np.full(len(emb), None, dtype=object)
        full[ok] = lab.astype(str)
        out.append(round(float(metrics.ari(labels, full)), 3))
    return out


def joint_embedding(data: Path, rels: list[str], key: str, model, layer: int = -1):
    """One integration pair, zero-shot: (joint AnnData, embedding, labels, batch, mask of scored cells)."""
    joint = integrate([ad.read_h5ad(data / r) for r in rels], model, batch_names=["a", "b"], seed=0, layer=layer)
    X = joint.obsm["X_spgpt"]
    labels = joint.obs[key].astype(str).to_numpy()
    ok = np.isfinite(X).all(1) & metrics.valid_label_mask(labels)
    return joint, X, labels, joint.obs["batch"].astype(str).to_numpy(), ok


def scores(X, labels, batch) -> dict:
    """Methods 4.5.2 metrics (Leiden), rounded."""
    s = metrics.integration_scores(X, labels, batch, method="leiden")
    return {k: round(float(v), 3) for k, v in s.items() if isinstance(v, (int, float))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model directory (or 'default')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=str(DATA), help="the shared data folder (default: %(default)s)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--layer", type=int, default=-1,
                   help="embed with the <cls> state after this transformer layer (1-based; -1: the final one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    model = load_model(args.model)
    t0 = time.perf_counter()
    res: dict = {"model": args.model, "layer": args.layer, "domains": {}, "integration": {}}
    for name, rel, k in DOMAIN_SETS:
        a = ad.read_h5ad(data / rel)
        emb, _ = compute_embedding(a, model, empty="drop", seed=0, n_top_genes=3000, layer=args.layer)
        aris = domain_aris(emb, a, k, a.obs["layer"].astype(str).to_numpy())
        res["domains"][name] = aris
        print(f"{name:14s} ARI {aris}  best {max(aris):.3f}", flush=True)
    for name, rels, key in INTEGRATION_SETS:
        _, X, lab, batch, ok = joint_embedding(data, rels, key, model, args.layer)
        res["integration"][name] = scores(X[ok], lab[ok], batch[ok])
        print(f"{name:14s} integration AvgBIO {res['integration'][name]['avg_bio']:.3f}  "
              f"AvgBATCH {res['integration'][name]['avg_batch']:.3f}", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
