"""Spatial domains under the unseen-tissue protocol (bench/protocols/unseen_tissue.yaml), next to the
strongest simple baselines computed in the same run.

    python bench/generalize.py --set dev  [--quick]   # every candidate pipeline: defaults are chosen here
    python bench/generalize.py --set dev --top 10     # all seeds for the 10 best candidates of the first seed
    python bench/generalize.py --set test [--quick]   # the default, its ablations and the baselines, report only
    python bench/generalize.py --set test --protocol my_slides.yaml [--data DIR]   # the same on other slides

Every slide of the run is checked (exists, readable, label column, coordinates) before any work starts.

Every (slide, pipeline, seed) result is appended to bench/results/generalize_<set>.jsonl as it
finishes and skipped when the run is repeated, so a stopped run resumes; embeddings are cached in
bench/.cache/. A test run also appends its summary, with the commit, to bench/results/test_runs.jsonl.
The spgpt pipelines call the functions ``tl.domains`` runs (``tl._features``, ``tl._cluster``) on a
cached zero-shot embedding, so each candidate costs one clustering, not one embedding.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import spgpt_core as sg
from spgpt_core.io import get_coordinates
from spgpt_core.metrics import ari, nmi
from spgpt_core.params import DomainsConfig
from spgpt_core.tl._cluster import cluster_embedding, consensus_cluster
from spgpt_core.tl._features import (SMOOTHED_K, domain_features, expression_pcs, neighbour_mean, reduce,
                                     smoothed, smoothed_features, unit_variance)

from _protocol import SHARED_DATA, Protocol, load_protocol, read
from _report import log_test_run, markdown_table, model_suffix, verdict


# ------------------------------------------------------------------------------ slides and features


def load_slide(entry: dict, ignore: list[str], protocol: Protocol):
    a = read(protocol.path(entry["path"]))
    labels = a.obs[entry["label"]].astype(str).to_numpy()
    scored = ~pd.Series(labels).str.lower().isin([x.lower() for x in ignore] + ["nan", "none", ""]).to_numpy()
    return a, labels, scored


def baseline_pcs(a, n_top_genes: int, n_pcs: int) -> np.ndarray:
    """The usual scanpy PCA: log1p(counts per 1e4), seurat HVGs, scaled (clipped at 10), PCA (seed 0)."""
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    if b.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(b, n_top_genes=n_top_genes, flavor="seurat")
        b = b[:, b.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(b, max_value=10)
    return sc.pp.pca(b, n_comps=min(n_pcs, b.n_vars - 1, b.n_obs - 1), random_state=0, copy=True).obsm["X_pca"]


def cached_embedding(name: str, a, model_spec: str, cache: Path) -> np.ndarray:
    """The zero-shot embedding tl.domains computes (3,000 most variable matched genes), cached per model."""
    model = sg.load_model(model_spec)
    tag = hashlib.sha1(json.dumps(model.describe(), sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = cache / f"emb_{name}_{tag}.npy"
    if path.exists():
        return np.load(path)
    b = a.copy()
    sg.tl.domains(b, model, n_clusters=2, method="kmeans", smooth_k=0, drop_empty=True, features="embedding")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(b.obsm["X_spgpt"], dtype=np.float32))
    return np.load(path)


# ------------------------------------------------------------------------------------ pipelines


def baselines(b: dict) -> list[dict]:
    out = [{"pipeline": "PCA + k-means", "kind": "baseline", "features": "pca", "method": "kmeans"}]
    for method in b["clustering"]:
        out.append({"pipeline": f"PCA smoothed (k={b['smooth_k']}) + {method}", "kind": "baseline",
                    "features": "pca_smoothed", "method": method})
        out.append({"pipeline": f"BANKSY-style PCA (lambda={b['banksy_lambda']}) + {method}", "kind": "baseline",
                    "features": "pca_banksy", "method": method})
    return out


def spgpt_config(**kw) -> dict:
    cfg = {f.name: getattr(DomainsConfig(n_clusters=2), f.name) for f in fields(DomainsConfig)}
    cfg.update(kw)
    keys = ("features", "embedding_share", "spatial_weight", "spatial_k", "method", "smooth_k", "spatial_prior", "n_pcs",
            "consensus")
    return {k: cfg[k] for k in keys}


def candidates(c: dict) -> list[dict]:
    out = []
    for features, lam, k, method, n_pcs in itertools.product(c["features"], c["spatial_weight"], c["spatial_k"],
                                                             c["method"], c.get("n_pcs", [30])):
        if lam == 0 and k != c["spatial_k"][0]:
            continue  # k only matters with neighbours
        for share in (c["embedding_weight"] if features == "fused" else [0.5]):
            # the grid was searched on one clustering smoothed by the majority vote
            cfg = spgpt_config(features=features, embedding_share=share, spatial_weight=lam, spatial_k=k,
                               method=method, n_pcs=n_pcs, consensus=1, spatial_prior=0.0)
            out.append({"pipeline": describe(cfg), "kind": "spgpt", **cfg})
    return sorted(out, key=lambda p: p["method"] == "leiden")  # the slow searches last


def describe(cfg: dict) -> str:
    f = cfg["features"] + (f" (share {cfg['embedding_share']})" if cfg["features"] == "fused" else "")
    nb = f", neighbours lambda={cfg['spatial_weight']} k={cfg['spatial_k']}" if cfg["spatial_weight"] > 0 else ""
    pcs = f", {cfg['n_pcs']} PCs" if cfg["n_pcs"] != 30 else ""  # 30: the name rows measured before had
    n = cfg.get("consensus", 1)
    con = f", consensus of {n} seeds x 2 views (+ smoothed k={SMOOTHED_K})" if n > 1 else ""
    beta = cfg.get("spatial_prior", 0.0)  # rows measured before the Potts prior existed used the vote
    smooth = f"Potts prior {beta} over {cfg['smooth_k']}" if beta and cfg["smooth_k"] else f"smooth {cfg['smooth_k']}"
    return f"spgpt {f}{nb}{pcs}, {cfg['method']}{con}, {smooth}"


def default_pipeline() -> dict:
    """``spgpt domains`` as shipped; named by its settings, so rows of an earlier default are not reused."""
    cfg = spgpt_config()
    return {"pipeline": f"spgpt default = {describe(cfg)[len('spgpt '):]}", "kind": "spgpt", "default": True, **cfg}


def ablations() -> list[dict]:
    """The default pipeline on one block only (what the embedding and the expression each bring), with one
    clustering instead of the consensus, and with the majority vote instead of the Potts prior."""
    d = spgpt_config()
    out = [{"pipeline": describe({**d, "features": f}) + " [ablation]", "kind": "spgpt", **d, "features": f}
           for f in ("embedding", "expression", "fused") if f != d["features"]]
    if d["consensus"] > 1:
        out.append({"pipeline": describe({**d, "consensus": 1}) + " [ablation]", "kind": "spgpt", **d, "consensus": 1})
    if d["spatial_prior"] > 0:
        out.append({"pipeline": describe({**d, "spatial_prior": 0.0}) + " [ablation]", "kind": "spgpt", **d,
                    "spatial_prior": 0.0})
    return out


def share_sweep(shares) -> list[dict]:
    """The default pipeline, fused, at each embedding share other than the default's own."""
    d = spgpt_config()
    return [{"pipeline": describe(cfg), "kind": "spgpt", **cfg}
            for cfg in (spgpt_config(features="fused", embedding_share=w) for w in shares)
            if not (d["features"] == "fused" and cfg["embedding_share"] == d["embedding_share"])]


def features_for(p: dict, slide: dict, b: dict, seed: int) -> np.ndarray:
    ok, xy = slide["ok"], slide["xy"]
    if p["kind"] == "baseline":
        P = slide["pcs"][ok]
        if p["features"] == "pca":
            return P
        if p["features"] == "pca_smoothed":  # mean of the spot and its k nearest spots
            return smoothed(P, xy[ok], b["smooth_k"], seed)
        lam, k = b["banksy_lambda"], b["banksy_k"]
        U = unit_variance(P)
        return reduce(np.hstack([np.sqrt(1 - lam) * U, np.sqrt(lam) * neighbour_mean(U, xy[ok], k, seed)]),
                      b["n_pcs"], seed)
    return domain_features(expression=slide["expr"][ok], embedding=slide["emb"][ok], coords=xy[ok],
                           features=p["features"], embedding_weight=p["embedding_share"],
                           spatial_weight=p["spatial_weight"], spatial_k=p["spatial_k"], n_pcs=p["n_pcs"], seed=seed)


def run_one(p: dict, slide: dict, entry: dict, b: dict, seed: int) -> dict:
    t = time.time()
    F = features_for(p, slide, b, seed)
    smooth = p.get("smooth_k", 0)
    beta = p.get("spatial_prior", 0.0) if p["kind"] == "spgpt" else 0.0  # the baselines keep no smoothing
    ok = slide["ok"]
    if p.get("consensus", 1) > 1:  # as tl.domains: the features beside the same blocks smoothed
        S = smoothed_features(expression=slide["expr"][ok], embedding=slide["emb"][ok], coords=slide["xy"][ok],
                              features=p["features"], embedding_weight=p["embedding_share"], seed=seed)
        labels, _ = consensus_cluster([F, S], n_clusters=entry["k"], method=p["method"], repeats=p["consensus"],
                                      coords=slide["xy"][ok], smooth_k=smooth, spatial_prior=beta, seed=seed)
    else:
        labels, _ = cluster_embedding(F, n_clusters=entry["k"], method=p["method"], coords=slide["xy"][ok],
                                      smooth_k=smooth, spatial_prior=beta, seed=seed)
    scored = slide["scored"][slide["ok"]]
    truth = slide["labels"][slide["ok"]][scored]
    return {"ari": ari(truth, labels[scored]), "nmi": nmi(truth, labels[scored]), "seconds": round(time.time() - t, 2)}


# ----------------------------------------------------------------------------------------- driver


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["dev", "test"], required=True)
    ap.add_argument("--family", choices=["domains", "integration", "deconvolution", "imputation"], default="domains",
                    help="task family (integration: bench/_integration_family.py; deconvolution and imputation: "
                         "bench/_mapping_families.py)")
    ap.add_argument("--quick", action="store_true", help="first seed only")
    ap.add_argument("--model", default="default")
    ap.add_argument("--protocol", help="a protocol YAML laid out as bench/protocols/unseen_tissue.yaml (settings it "
                                       "leaves out are that file's); default: that file")
    ap.add_argument("--data", help="folder the protocol's relative slide paths start from (default: the file's "
                                   "data_root, else ../shared/data)")
    ap.add_argument("--out", help="results folder (default: bench/results, or bench/results/protocols/NAME for "
                                  "another protocol file)")
    ap.add_argument("--slides", help="comma-separated subset of the set's slide names")
    ap.add_argument("--dev-best", type=int, default=3, help="test: also run the N best dev candidates (first seed) "
                                                             "and the best fused one (default: %(default)s)")
    ap.add_argument("--methods", help="domains: comma-separated clusterings of the candidates to run; deconvolution "
                                       "and imputation: '|'-separated pipeline names (default: all)")
    ap.add_argument("--share-sweep", action="store_true",
                    help="dev: also the default pipeline at every embedding share of the protocol's candidates "
                         "(the rule that chooses the share; expression alone is the share-0 ablation)")
    ap.add_argument("--top", type=int, help="dev: run every seed only for the N candidates with the best mean ARI "
                                             "on the first seed (run --quick first)")
    args = ap.parse_args(argv)
    P = load_protocol(args.protocol, args.data, args.out)
    P.check(args.family, args.set)
    P.results.mkdir(parents=True, exist_ok=True)
    if args.family == "integration":  # its own module: slide groups, not slides
        from _integration_family import main as integration
        return integration(P, args.set, args.quick, args.model, command(args, P))
    if args.family in ("deconvolution", "imputation"):
        from _mapping_families import run_family

        return run_family(P, args.family, args.set, quick=args.quick, model=args.model, cases=args.slides,
                          methods=args.methods, command=command(args, P))
    proto = P.spec
    seeds = proto["seeds"][:1] if args.quick else proto["seeds"]
    entries = [e for e in proto["domains"][args.set] if not args.slides or e["name"] in args.slides.split(",")]
    b = proto["baselines"]
    pipelines = baselines(b) + [default_pipeline()] + ablations()
    if args.set == "dev":
        pipelines += [p for p in candidates(proto["candidates"])
                      if not args.methods or p["method"] in args.methods.split(",")]
        if args.share_sweep:
            pipelines += share_sweep(proto["candidates"]["embedding_weight"])
        if args.top is not None:
            keep = [default_pipeline(), *ablations(), *(share_sweep(proto["candidates"]["embedding_weight"])
                                                       if args.share_sweep else [])]
            pipelines = [p for p in pipelines if p["kind"] == "baseline" or p in keep
                         or p["pipeline"] in best_on_first_seed(P.results / "generalize_dev.jsonl", seeds[0], args.top,
                                                                args.methods.split(",") if args.methods else None)]
    else:  # the default, its ablations and the dev's best candidates
        dev = P.results / "generalize_dev.jsonl"
        if dev.exists():  # chosen on dev (first seed), never on test numbers
            best = best_on_first_seed(dev, proto["seeds"][0], args.dev_best)
            fused = best_on_first_seed(dev, proto["seeds"][0], 1, features="fused")
            known = {p["pipeline"]: p for p in candidates(proto["candidates"])}
            pipelines += [{**known[name], "kind": "spgpt"} for name in dict.fromkeys(best + fused) if name in known]
    pipelines = list({p["pipeline"]: p for p in pipelines}.values())  # a sweep row may also be a candidate
    out = P.results / f"generalize_{args.set}.jsonl"
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            if _current(r):
                done.add((r["slide"], r["pipeline"], r["seed"], r["model"]))
    for entry in entries:
        todo = [(p, s) for p in pipelines for s in seeds if (entry["name"], p["pipeline"], s, args.model) not in done]
        if not todo:
            continue
        a, labels, scored = load_slide(entry, proto["ignore_labels"], P)
        emb = cached_embedding(entry["name"], a, args.model, P.cache)
        slide = {"labels": labels, "scored": scored, "xy": get_coordinates(a, required=True),
                 "ok": np.isfinite(emb).all(axis=1), "emb": emb, "pcs": baseline_pcs(a, b["n_top_genes"], b["n_pcs"]),
                 "expr": expression_pcs(a, n_top_genes=b["n_top_genes"], n_pcs=b["n_pcs"])}
        print(f"{entry['name']}: {a.n_obs} spots, {len(todo)} runs", flush=True)
        for p, seed in todo:
            res = run_one(p, slide, entry, b, seed)
            row = {"set": args.set, "slide": entry["name"], "seed": seed, "model": args.model, "K": entry["k"],
                   **{k: v for k, v in p.items()}, **res,
                   **({"features_version": FEATURES_VERSION} if p["kind"] != "baseline" else {})}
            with out.open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
    report(out, args, pipelines, P)


#: Version of spgpt's expression PCs the spgpt rows were computed with; 2 from 2026-12-06: library sizes
#: over all genes (protocol: expression_library_size). Rows of earlier versions stay in the jsonl, unused.
FEATURES_VERSION = 2


def _current(row: dict) -> bool:
    """Whether a jsonl row holds what this code computes (baselines use scanpy's PCs: every version)."""
    v = row.get("features_version")
    return row["kind"] == "baseline" or (1 if v is None or v != v else v) == FEATURES_VERSION


def best_on_first_seed(path: Path, seed: int, n: int, methods: list[str] | None = None,
                       features: str | None = None) -> list[str]:
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    df = df[(df.kind == "spgpt") & (df.seed == seed) & ~df.pipeline.str.startswith("spgpt default")]
    if methods:
        df = df[df.method.isin(methods)]
    if features:
        df = df[df.features == features]
    return df.groupby("pipeline")["ari"].mean().sort_values(ascending=False).head(n).index.tolist()


PUBLISHED_NAMES = {"DLPFC_151673": "DLPFC151673", "DLPFC_151674": "DLPFC151674",
                   "STARmap_mPFC_BZ5": "mPFC20180417_BZ5_control", "STARmap_mPFC_BZ9": "mPFC20180419_BZ9_control"}


def published(slides) -> pd.DataFrame:
    """Published mean ARIs (BenchmarkST, 20 seeds) of the slides they cover, one row per method."""
    path = SHARED_DATA / "published" / "benchmarkst_mean_ari.tsv"
    if not path.exists():
        return pd.DataFrame()
    t = pd.read_csv(path, sep="\t").set_index("dataset")
    rows = {}
    for method in ("GraphST", "STAGATE", "SpaGCN"):
        rows[f"published {method} (BenchmarkST)"] = {
            s: float(str(t.loc[PUBLISHED_NAMES[s], method]).split("±")[0]) for s in slides
            if s in PUBLISHED_NAMES and PUBLISHED_NAMES[s] in t.index}
    return pd.DataFrame.from_dict(rows, orient="index")


def command(args, protocol: Protocol) -> str:
    """The command line that reproduces this run's table."""
    own = "" if protocol.shipped else f" --protocol {args.protocol}" + (f" --data {args.data}" if args.data else "")
    family = f" --family {args.family}" if args.family != "domains" else ""
    return (f"python bench/generalize.py{family} --set {args.set}{' --quick' if args.quick else ''}{own}"
            + (f" --model {args.model}" if args.model != "default" else "")
            + (f" --top {args.top}" if getattr(args, "top", None) is not None else "")
            + (" --share-sweep" if getattr(args, "share_sweep", False) else ""))


def report(path: Path, args, pipelines: list[dict], protocol: Protocol) -> None:
    """The table of this run's pipelines (rows of earlier defaults stay in the jsonl, not in the table)."""
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    df = df[(df.model == args.model) & df.pipeline.isin([p["pipeline"] for p in pipelines])]
    df = df[[_current(r) for r in df.to_dict("records")]]
    per = df.groupby(["pipeline", "slide"])["ari"].mean().unstack("slide")
    per["mean"] = per.mean(axis=1)
    per["n_seeds"] = df.groupby("pipeline")["seed"].nunique()
    per["seed_sd"] = df.groupby(["pipeline", "seed"])["ari"].mean().groupby("pipeline").std()
    per = per.sort_values("mean", ascending=False)
    kinds = df.drop_duplicates("pipeline").set_index("pipeline")["kind"]
    fixed = [p["pipeline"] for p in pipelines if p["kind"] == "baseline" or p.get("default")
             or p["pipeline"].endswith("[ablation]")]
    show = pd.concat([per.loc[[i for i in per.index if i in fixed]],
                      per[(kinds[per.index] == "spgpt").to_numpy()].head(12)])
    show = pd.concat([show[~show.index.duplicated()], published([c for c in per.columns if c in PUBLISHED_NAMES])])
    default = next((p["pipeline"] for p in pipelines if p.get("default")), None)
    text = markdown_table(show.round(3)) + "\n\n" + verdict(per["mean"].to_dict(), kinds.to_dict(), default, "mean ARI")
    print(text)
    suffix = model_suffix(args.model)
    (protocol.results / f"generalize_{args.set}{suffix}.md").write_text(
        f"# Domains, {args.set} set (mean ARI over seeds)\n\nCommand: `{command(args, protocol)}`\n\n{text}\n")
    if args.set == "test":
        log_test_run({"model": args.model, "quick": args.quick, "mean_ari": per["mean"].round(4).to_dict()},
                     protocol)


if __name__ == "__main__":
    sys.exit(main())
