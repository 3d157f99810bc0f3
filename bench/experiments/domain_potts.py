"""A Potts spatial prior (hidden Markov random field) in place of the majority vote that ends ``spgpt
domains``, on the dev slides of the unseen-tissue protocol (pre-registered: ``domains_spatial_prior`` in
bench/protocols/unseen_tissue.yaml, grid and rule written before this script first ran).

For each dev slide and seed the default's consensus labels are computed once, unsmoothed; the default
then smooths them by the vote over 6 spots, each candidate refines them by ``tl._smoothing.potts_labels``
at one beta on the default's domain features. Rows go to results/domain_potts.jsonl as they finish (a
rerun skips them); the table and the rule's decision are printed at the end.

    .venv/bin/python bench/experiments/domain_potts.py --model runs/dev-held-out-continual/model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import generalize as G  # noqa: E402
from _protocol import load_protocol  # noqa: E402
from _report import markdown_table  # noqa: E402

from spgpt_core.io import get_coordinates  # noqa: E402
from spgpt_core.metrics import ari  # noqa: E402
from spgpt_core.params import DomainsConfig  # noqa: E402
from spgpt_core.tl._cluster import consensus_cluster  # noqa: E402
from spgpt_core.tl._smoothing import potts_labels, smooth_labels  # noqa: E402
from spgpt_core.tl._features import domain_features, expression_pcs, smoothed_features  # noqa: E402

OUT = ROOT / "bench" / "experiments" / "results" / "domain_potts.jsonl"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="the model whose cached embeddings mark empty spots")
    ap.add_argument("--set", default="dev", choices=["dev", "test"])
    args = ap.parse_args(argv)
    P = load_protocol()
    spec = P.spec["domains_spatial_prior"]
    betas, k_nb, max_iter, seeds = spec["betas"], spec["neighbours"], spec["max_iter"], spec["dev_seeds"]
    cfg = DomainsConfig(n_clusters=2)
    b = P.spec["baselines"]
    done = set()
    if OUT.exists():
        done = {(r["set"], r["slide"], r["seed"], r["pipeline"], r["model"])
                for r in map(json.loads, OUT.read_text().splitlines())}
    names = ["default (vote over 6)"] + [f"potts beta={x}" for x in betas]
    for e in P.spec["domains"][args.set]:
        if all((args.set, e["name"], s, nm, args.model) in done for s in seeds for nm in names):
            continue
        a, labels, scored = G.load_slide(e, P.spec["ignore_labels"], P)
        emb = G.cached_embedding(e["name"], a, args.model, P.cache)
        ok = np.isfinite(emb).all(axis=1)
        xy = get_coordinates(a, required=True)[ok]
        expr = expression_pcs(a, n_top_genes=b["n_top_genes"], n_pcs=b["n_pcs"])[ok]
        truth, keep = labels[ok], scored[ok]
        for seed in seeds:
            if all((args.set, e["name"], seed, nm, args.model) in done for nm in names):
                continue
            t = time.time()
            F = domain_features(expression=expr, embedding=emb[ok], coords=xy, features=cfg.features,
                                embedding_weight=cfg.embedding_share, spatial_weight=cfg.spatial_weight,
                                spatial_k=cfg.spatial_k, n_pcs=cfg.n_pcs, seed=seed)
            S = smoothed_features(expression=expr, embedding=emb[ok], coords=xy, features=cfg.features,
                                  embedding_weight=cfg.embedding_share, seed=seed)
            raw, _ = consensus_cluster([F, S], n_clusters=e["k"], method=cfg.method, repeats=cfg.consensus,
                                       coords=xy, smooth_k=0, seed=seed)
            base_s = time.time() - t
            runs = [("default (vote over 6)", lambda: (smooth_labels(raw, xy, cfg.smooth_k), {}))]
            runs += [(f"potts beta={x}", (lambda x=x: potts_labels(F, raw, xy, beta=x, k=k_nb, max_iter=max_iter)))
                     for x in betas]
            for name, fn in runs:
                t = time.time()
                lab, info = fn()
                row = {"set": args.set, "slide": e["name"], "seed": seed, "pipeline": name, "model": args.model,
                       "ari": round(float(ari(truth[keep], lab[keep])), 4),
                       "seconds": round(base_s + time.time() - t, 3), **info}
                with OUT.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(e["name"], seed, "done", flush=True)
    report(args, spec)


def report(args, spec) -> None:
    df = pd.DataFrame([json.loads(x) for x in OUT.read_text().splitlines()])
    df = df[(df.set == args.set) & (df.model == args.model)]
    per = df.pivot_table(index="pipeline", columns="slide", values="ari", aggfunc="mean")
    per["mean"] = per.mean(axis=1)
    seed_means = df.groupby(["pipeline", "seed"])["ari"].mean().groupby("pipeline").std(ddof=1)
    per["seed_sd"] = seed_means
    per["s/slide"] = df.groupby("pipeline")["seconds"].mean()
    per = per.sort_values("mean", ascending=False)
    print(markdown_table(per))
    if args.set == "dev":
        d = per.loc["default (vote over 6)"]
        cands = per.drop(index="default (vote over 6)")
        best = cands["mean"].idxmax()
        c = cands.loc[best]
        passed = c["mean"] >= d["mean"] + spec["margin"] and c["seed_sd"] <= d["seed_sd"] + 0.01
        print(f"\nrule: best {best}: {c['mean']:.3f} (SD {c['seed_sd']:.3f}) against the default's {d['mean']:.3f} "
              f"(SD {d['seed_sd']:.3f}): {'ADOPT' if passed else 'not adopted'}")


if __name__ == "__main__":
    main()
