"""Consensus (ensemble) clustering for spatial domains on the dev slides of the unseen-tissue protocol.

Each member is one clustering (gmm-tied, K from the protocol, no smoothing) of one feature pipeline at
one seed; the members' partitions are combined through their co-association matrix (spectral: the top-K
eigenvectors of the one-hot partitions, columns scaled by cluster size^-1/2, then k-means), then the
labels are smoothed over the 6 nearest spots as the default does. Linear in spots: the eigenproblem is
(members x K) square. Question: does an ensemble over seeds, or over the default's and the baseline's
features, beat the single default by enough to pay for its members' cost? Dev slides only.

    .venv/bin/python bench/experiments/domain_consensus.py            # -> results/domain_consensus.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import generalize as G  # noqa: E402
from _protocol import load_protocol  # noqa: E402

from spgpt_core.io import get_coordinates  # noqa: E402
from spgpt_core.metrics import ari  # noqa: E402
from spgpt_core.tl._cluster import cluster_embedding, consensus_labels  # noqa: E402
from spgpt_core.tl._smoothing import smooth_labels  # noqa: E402
from spgpt_core.tl._features import domain_features, expression_pcs, smoothed  # noqa: E402

EXPR = {"f": "expression", "lam": 0.8, "k": 12, "npc": 10}   # the default's settings, expression only
FUSED = {"f": "fused", "w": 0.25, "lam": 0.8, "k": 12, "npc": 10}  # the default
BASE = {"f": "smoothed", "k": 6}                               # PCA smoothed over 6 spots (the baseline)
RUNS = [  # name, members, repeats per member, seeds
    ("expr default (single)", [EXPR], 1, (0, 1, 2)),
    ("baseline smoothed k6 (single)", [BASE], 1, (0, 1, 2)),
    ("fused default (single)", [FUSED], 1, (0, 1, 2)),
    ("expr default x5 seeds consensus", [EXPR], 5, (0, 1, 2)),
    ("baseline x5 seeds consensus", [BASE], 5, (0, 1, 2)),
    ("expr k6,12,24 x npc10,30 consensus", [dict(EXPR, k=k, npc=n) for k in (6, 12, 24) for n in (10, 30)], 1,
     (0, 1, 2)),
    ("expr default + baseline, x3 seeds consensus", [EXPR, BASE], 3, (0, 1, 2)),
    ("fused default x5 seeds consensus", [FUSED], 5, (0, 1, 2)),
    ("expr default + baseline, x5 seeds consensus", [EXPR, BASE], 5, (0, 1, 2)),
    ("fused default + baseline, x3 seeds consensus", [FUSED, BASE], 3, (0, 1, 2)),
    ("expr default x5 seeds consensus, seeds 3-4", [EXPR], 5, (3, 4)),
    ("expr default (single), seeds 3-4", [EXPR], 1, (3, 4)),
]
#: The pre-registered decision (bench/protocols/unseen_tissue.yaml, domains_consensus): seeds 0-4.
DECISION = [
    ("decision: expr default (single), seeds 0-4", [EXPR], 1, (0, 1, 2, 3, 4)),
    ("decision: expr default + baseline, x5 seeds consensus, seeds 0-4", [EXPR, BASE], 5, (0, 1, 2, 3, 4)),
]


def dev_slides(model: str) -> dict:
    P = load_protocol()
    proto = P.spec
    b = proto["baselines"]
    out = {}
    for e in proto["domains"]["dev"]:
        a, labels, scored = G.load_slide(e, proto["ignore_labels"], P)
        emb = G.cached_embedding(e["name"], a, model, P.cache)
        out[e["name"]] = {"labels": labels, "scored": scored, "xy": get_coordinates(a, required=True),
                          "ok": np.isfinite(emb).all(axis=1), "emb": emb, "k": e["k"],
                          "pcs": G.baseline_pcs(a, b["n_top_genes"], b["n_pcs"]),
                          "expr": expression_pcs(a, n_top_genes=b["n_top_genes"], n_pcs=b["n_pcs"])}
    return out


def member_features(sl: dict, m: dict, seed: int) -> np.ndarray:
    ok, xy = sl["ok"], sl["xy"]
    if m["f"] == "smoothed":
        return smoothed(sl["pcs"][ok], xy[ok], m["k"], seed)
    return domain_features(expression=sl["expr"][ok], embedding=sl["emb"][ok], coords=xy[ok], features=m["f"],
                           embedding_weight=m.get("w", 0.25), spatial_weight=m["lam"], spatial_k=m["k"],
                           n_pcs=m["npc"], seed=seed)


def consensus(parts: list[np.ndarray], K: int, seed: int) -> np.ndarray:
    """K clusters of the partitions' co-association matrix, without forming it (n x n): the function
    ``tl.domains`` now uses (the runs of the first diary used this script's own copy of it, the same
    algorithm with float64 eigenvectors)."""
    return consensus_labels(parts, K, seed)


def labels_for(sl: dict, members: list[dict], n_rep: int, seed: int, same_features: bool = False) -> np.ndarray:
    """``same_features``: each member's features computed once (at ``seed``) and only the clustering's seed
    varied, as ``tl.domains`` does (the explore runs recomputed the features at each member seed)."""
    xy = sl["xy"][sl["ok"]]
    if len(members) == 1 and n_rep == 1:
        lab, _ = cluster_embedding(member_features(sl, members[0], seed), n_clusters=sl["k"], method="gmm-tied",
                                   coords=xy, smooth_k=6, seed=seed)
        return lab
    parts = []
    for j, m in enumerate(members):
        F = member_features(sl, m, seed) if same_features else None
        for r in range(n_rep):
            s = 1000 * seed + 10 * j + r
            lab, _ = cluster_embedding(F if same_features else member_features(sl, m, s), n_clusters=sl["k"],
                                       method="gmm-tied", coords=xy, smooth_k=0, seed=s)
            parts.append(lab)
    return smooth_labels(consensus(parts, sl["k"], seed), xy, 6)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", choices=["explore", "decision"], default="explore",
                    help="explore: the runs of the first diary; decision: the pre-registered seeds 0-4 comparison")
    ap.add_argument("--out", default=str(ROOT / "bench/experiments/results/domain_consensus.jsonl"))
    args = ap.parse_args(argv)
    data = dev_slides(args.model)
    for name, members, n_rep, seeds in (RUNS if args.runs == "explore" else DECISION):
        per = {}
        for sname, sl in data.items():
            sc = sl["scored"][sl["ok"]]
            truth = sl["labels"][sl["ok"]][sc]
            per[sname] = [ari(truth, labels_for(sl, members, n_rep, s, args.runs == "decision")[sc]) for s in seeds]
        by_seed = np.mean(list(per.values()), axis=0)
        row = {"name": name, "model": args.model, "seeds": list(seeds), "mean": round(float(by_seed.mean()), 4),
               "seed_sd": round(float(np.std(by_seed, ddof=1)), 4), "per_seed": [round(float(x), 4) for x in by_seed],
               **{k: round(float(np.mean(v)), 3) for k, v in per.items()}}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
