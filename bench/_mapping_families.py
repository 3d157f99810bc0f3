"""Deconvolution and imputation under the unseen-tissue protocol (``bench/protocols/unseen_tissue.yaml``),
every method of ``tl.deconvolve`` / ``tl.impute`` and the simple baselines in the same run.

    python bench/generalize.py --family deconvolution --set dev [--quick]
    python bench/generalize.py --family imputation --set test [--quick]

Cases (pairs stay inside one set; names and sources in the YAML's ``deconvolution`` / ``imputation``):

* ``pseudo_spots``: the slide's labelled cells split 50/50 per type (seeded); one half binned into
  pseudo-spots (``tests/helpers/pseudo_spots.py``, ~8 cells per spot) whose composition is known, the
  other half is the reference.
* ``reference_mixtures`` (RCTD pairs, deconvolution): the RCTD spatial files carry no cell labels, so
  there is no spatial truth. The reference is split 50/50 per type; each mixture spot sums 4-10 cells
  of one half, 60% of them of one random type and the rest random cells (RCTD's own simulation
  design: known composition, a clear dominant type); the other half is the reference.
* ``pair`` (imputation): the real pair, slide and reference as given.

Imputation is leave-genes-out: the shared genes split into ``folds`` random folds (seeded); each fold is
removed from the slide and imputed from the reference; the score is the median over all genes of all
folds of Pearson r between measured and imputed values (log1p counts per 1e4 training-gene counts).

Every (case, method, seed) row is appended to ``generalize_{family}_{set}.jsonl`` in the protocol's results
folder (``bench/results/`` for the shipped protocol) as it
finishes and skipped when the run is repeated. The markdown table goes to ``generalize_{family}_{set}.md``;
a test-set run also appends its means, with the commit, to ``bench/results/test_runs.jsonl``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _protocol import Protocol, gene_folds, measure, read, split_cells  # noqa: E402
from helpers.pseudo_spots import make_pseudo_spots  # noqa: E402

from spgpt_core import metrics as M  # noqa: E402
from spgpt_core.params import AUTO_METHOD, DeconvolveConfig, ImputeConfig  # noqa: E402

from _report import log_test_run, markdown_table, model_suffix, verdict

#: name -> (tl keyword arguments, kind). Baselines are the simple methods on expression alone.
DECONVOLUTION_METHODS = {
    "NNLS on class means": (dict(method="nnls"), "baseline"),
    "Tangram cells (expression)": (dict(method="tangram_cells", use_embeddings=False), "baseline"),
    "Tangram clusters, size-weighted (expression)": (dict(method="tangram_clusters", use_embeddings=False),
                                                      "baseline"),
    "spgpt Tangram cells + embeddings (paper)": (dict(method="tangram_cells", use_embeddings=True), "spgpt"),
    "spgpt Tangram clusters + embeddings": (dict(method="tangram_clusters", use_embeddings=True), "spgpt"),
    "spgpt consensus (Tangram clusters + embeddings, NNLS)": (dict(method="consensus", use_embeddings=True),
                                                              "spgpt"),
    # the default without the model: what the embedding adds to the consensus
    "spgpt consensus on expression (Tangram clusters, NNLS) [ablation]": (
        dict(method="consensus", use_embeddings=False), "spgpt"),
    "spgpt default": (dict(), "spgpt"),
}
# Every row maps on every shared training gene (n_top_genes=0), as Tangram does, but the last two: the
# speed option's cost (protocol: imputation_training_genes).
IMPUTATION_METHODS = {
    "kNN (expression, k=10)": (dict(method="knn", use_embeddings=False, n_top_genes=0), "baseline"),
    "NNLS on centroids": (dict(method="nnls", n_top_genes=0), "baseline"),
    "Tangram cells (expression)": (dict(method="tangram_cells", use_embeddings=False, n_top_genes=0), "baseline"),
    "Tangram clusters, size-weighted (expression)": (
        dict(method="tangram_clusters", use_embeddings=False, n_top_genes=0), "baseline"),
    "spgpt Tangram clusters + embeddings (paper)": (
        dict(method="tangram_clusters", use_embeddings=True, n_top_genes=0), "spgpt"),
    "spgpt kNN + embeddings": (dict(method="knn", use_embeddings=True, n_top_genes=0), "spgpt"),
    "spgpt default": (dict(), "spgpt"),
    "spgpt default, --n-top-genes 2000 (speed option)": (dict(n_top_genes=2000), "spgpt"),
    "spgpt default, --n-top-genes 1000 (speed option)": (dict(n_top_genes=1000), "spgpt"),
}


def load(protocol: Protocol, rel: str) -> ad.AnnData:
    a = read(protocol.path(rel))
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    return a


def reference_mixtures(cells: ad.AnnData, key: str, seed: int, n_spots: int = 300) -> ad.AnnData:
    """Mixture spots with known composition from labelled cells without coordinates (module docstring)."""
    rng = np.random.default_rng(seed)
    lab = cells.obs[key].astype(str).to_numpy()
    types = sorted(set(lab))
    rows, cols = [], []
    for s in range(n_spots):
        n = int(rng.integers(4, 11))
        dom = rng.choice(types)
        n_dom = int(np.ceil(0.6 * n))
        pick = list(rng.choice(np.flatnonzero(lab == dom), n_dom, replace=np.sum(lab == dom) < n_dom))
        pick += list(rng.choice(cells.n_obs, n - n_dom, replace=False))
        rows += [s] * n
        cols += pick
    A = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_spots, cells.n_obs))
    X = sp.csr_matrix(A @ cells.X).astype(np.float32)
    onehot = (lab[:, None] == np.array(types)[None, :]).astype(np.float64)
    n_cells = np.asarray(A.sum(axis=1)).ravel()
    names = [f"mix_{i:04d}" for i in range(n_spots)]
    out = ad.AnnData(X=X, obs=pd.DataFrame({"n_cells": n_cells.astype(int)}, index=names), var=cells.var.copy())
    out.obsm["spatial"] = rng.uniform(0, 1000, (n_spots, 2))  # no coordinates exist; the methods do not use them
    out.obsm["true_proportions"] = pd.DataFrame((A @ onehot) / n_cells[:, None], index=names, columns=types)
    return out


def pseudo_spot_halves(protocol: Protocol, case: dict, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """The slide's labelled cells split 50/50 per type: pseudo-spots of one half, the other half as reference."""
    cells = load(protocol, case["path"])
    a, b = split_cells(cells.obs[case["label"]], 0.5, seed=seed)
    return make_pseudo_spots(cells[a].copy(), case["label"]), cells[b].copy()


def deconvolution_case(protocol: Protocol, case: dict, seed: int) -> tuple[ad.AnnData, ad.AnnData, str]:
    """(spots with obsm['true_proportions'], reference, label key)."""
    key = case["label"]
    if case["kind"] == "pseudo_spots":
        return (*pseudo_spot_halves(protocol, case, seed), key)
    ref = load(protocol, case["reference"])
    a, b = split_cells(ref.obs[key], 0.5, seed=seed)
    return reference_mixtures(ref[a].copy(), key, seed), ref[b].copy(), key


def imputation_case(protocol: Protocol, case: dict, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """(measured target, reference)."""
    if case["kind"] == "pseudo_spots":
        return pseudo_spot_halves(protocol, case, seed)
    return load(protocol, case["path"]), load(protocol, case["reference"])


# ------------------------------------------------------------------------------------------- runs


def run_deconvolution(protocol: Protocol, case: dict, kw: dict, seed: int, model: str) -> dict:
    from spgpt_core.tl._deconvolve import compute_proportions

    spots, ref, key = deconvolution_case(protocol, case, seed)
    with measure(rec := {}):
        r = compute_proportions(spots, ref, celltype_key=key, model=model, seed=seed, **kw)
    s = M.deconvolution_scores(spots.obsm["true_proportions"], r.proportions)
    return {**s, "seconds": rec["seconds"], "peak_rss_mb": rec["peak_rss_mb"], "method_run": r.info["method"],
            "n_reference_cells": int(ref.n_obs)}


def run_imputation(protocol: Protocol, case: dict, kw: dict, seed: int, model: str, folds: int) -> dict:
    from spgpt_core.tl._impute import compute_imputation, measured_expression
    from spgpt_core.tl._genes import match_genes

    target, ref = imputation_case(protocol, case, seed)
    sh = match_genes(target, ref)
    genes_t = list(target.var_names[sh.a_idx])
    to_ref = dict(zip(genes_t, ref.var_names[sh.b_idx]))
    pearson, seconds, peak, method = [], 0.0, 0.0, None
    for held in gene_folds(genes_t, folds, seed=seed):
        sub = target[:, ~target.var_names.isin(held)].copy()
        train_t = [g for g in genes_t if g not in held]
        meas = measured_expression(target, held, train_t)
        with measure(rec := {}):
            r = compute_imputation(sub, ref, genes=[to_ref[g] for g in held], model=model, seed=seed, **kw)
        pred = r.imputed.set_axis(held, axis=1)
        pearson += list(M.pearson_per_gene(meas, pred).to_numpy())
        seconds += rec["seconds"]
        peak = max(peak, rec["peak_rss_mb"])
        method = r.info["method"]
    p = np.array(pearson, dtype=float)
    ok = np.isfinite(p)
    return {"median_pearson": float(np.median(p[ok])), "mean_pearson": float(np.mean(p[ok])),
            "n_genes_scored": int(ok.sum()), "n_folds": folds, "seconds": round(seconds, 2), "peak_rss_mb": peak,
            "method_run": method}


# ------------------------------------------------------------------------------------------ driver


def _effective(kw: dict, default: str, config_class) -> tuple:
    method = kw.get("method", "auto")
    method = default if method == "auto" else method
    genes = kw.get("n_top_genes", getattr(config_class(), "n_top_genes", None)) or 0
    return method, method != "nnls" and kw.get("use_embeddings", config_class().use_embeddings), genes


def _twins(table: dict, name: str, default: str, config_class) -> list[str]:
    """The other rows whose options resolve to the same run (method, use of embeddings and genes): e.g.
    the default and the baseline it equals, or an ablation that spells out a baseline's options."""
    want = _effective(table[name][0], default, config_class)
    return [n for n, (kw, _) in table.items() if n != name and _effective(kw, default, config_class) == want]


def _defaults(family: str) -> tuple[str, type]:
    """(the method ``auto`` picks below the size limit, the family's config class)."""
    if family == "deconvolution":
        return AUTO_METHOD["deconvolve"], DeconvolveConfig
    return AUTO_METHOD["impute"], ImputeConfig


def default_tag(family: str) -> str:
    """What "spgpt default" runs, recorded with its rows so they are re-run when it changes: the method
    ``auto`` picks, "(expression)" when the default maps without the embeddings, and for imputation how many
    genes it maps on."""
    method, config_class = _defaults(family)
    tag = method + ("" if config_class().use_embeddings else " (expression)")
    if family == "imputation":
        n = config_class().n_top_genes
        tag += f", {n} highest-variance mapping genes" if n else ", every shared gene"
    return tag


def _git(*a) -> str:
    return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def run_family(protocol: Protocol, family: str, set_name: str, *, quick: bool = False, model: str = "default",
               cases: str | None = None, methods: str | None = None, command: str = "") -> None:
    proto = protocol.spec
    spec = proto[family]
    seeds = proto["seeds"][:1] if quick else proto["seeds"]
    entries = [c for c in spec["cases"][set_name] if not cases or c["name"] in cases.split(",")]
    table = DECONVOLUTION_METHODS if family == "deconvolution" else IMPUTATION_METHODS
    todo_methods = {k: v for k, v in table.items() if not methods or k in methods.split("|")}
    folds = spec.get("folds", 5)
    out = protocol.results / f"generalize_{family}_{set_name}.jsonl"
    done, rows_by_key = set(), {}
    current = default_tag(family)
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["case"], r["pipeline"], r["seed"], r["model"], r.get("default_method")))
            if r["pipeline"] != "spgpt default" or r.get("default_method") == current:  # an earlier default's
                rows_by_key[(r["case"], r["pipeline"], r["seed"], r["model"])] = r    # rows are no twin
    default, config_class = _defaults(family)
    for case in entries:
        for name, (kw, kind) in todo_methods.items():
            for seed in seeds:
                # "spgpt default" is re-run when the default changes; the other rows do not depend on it
                tag = default_tag(family) if name == "spgpt default" else None
                if (case["name"], name, seed, model, tag) in done:
                    continue
                t = time.time()
                twin = next((n for n in _twins(table, name, default, config_class)
                             if (case["name"], n, seed, model) in rows_by_key), None)
                if twin is not None:
                    # the same options as a row already measured: the same numbers (every step is seeded),
                    # so they are copied rather than computed twice
                    row = {**rows_by_key[(case["name"], twin, seed, model)], "pipeline": name, "kind": kind,
                           "default_method": tag, "options": kw, "same_as": twin}
                    rows_by_key[(case["name"], name, seed, model)] = row
                    with out.open("a") as f:
                        f.write(json.dumps(row, default=float) + "\n")
                    continue
                if family == "deconvolution":
                    res = run_deconvolution(protocol, case, kw, seed, model)
                else:
                    res = run_imputation(protocol, case, kw, seed, model, folds)
                row = {"family": family, "set": set_name, "case": case["name"], "pipeline": name, "kind": kind,
                       "seed": seed, "model": model, "default_method": tag, "options": kw, **res}
                rows_by_key[(case["name"], name, seed, model)] = row
                done.add((case["name"], name, seed, model, tag))
                with out.open("a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                print(f"{case['name']} | {name} | seed {seed}: "
                      + ", ".join(f"{k}={v:.3f}" for k, v in res.items() if isinstance(v, float) and k != "seconds")
                      + f" ({time.time() - t:.0f}s)", flush=True)
    report(protocol, family, set_name, out, model=model, quick=quick, command=command)


def report(protocol: Protocol, family: str, set_name: str, path: Path, *, model: str, quick: bool,
           command: str) -> pd.DataFrame:
    df = pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    table = DECONVOLUTION_METHODS if family == "deconvolution" else IMPUTATION_METHODS
    df = df[(df.model == model) & df.pipeline.isin(list(table))]  # rows of retired variants stay in the jsonl
    default = default_tag(family)
    df = df[(df.pipeline != "spgpt default") | (df.default_method == default)]
    metric = "macro_f1" if family == "deconvolution" else "median_pearson"
    cols = [metric, "jsd_mean", "pearson_per_type_mean"] if family == "deconvolution" else [metric, "mean_pearson"]
    per = df.groupby(["pipeline", "case"])[metric].mean().unstack("case")
    per["mean"] = per.mean(axis=1)
    for extra in cols[1:]:
        per[f"{extra} (mean)"] = df.groupby("pipeline")[extra].mean()
    per["seconds (mean)"] = df.groupby("pipeline")["seconds"].mean()
    per["n_seeds"] = df.groupby("pipeline")["seed"].nunique()
    per = per.sort_values("mean", ascending=False)
    per.index = [f"{i} (= {default})" if i == "spgpt default" else i for i in per.index]
    kinds = df.drop_duplicates("pipeline").set_index("pipeline")["kind"]
    line = verdict(per["mean"].to_dict(), kinds.to_dict(), f"spgpt default (= {default})", f"mean {metric}")
    body = markdown_table(per.round(3)) + "\n\n" + line
    title = {"deconvolution": "Deconvolution (macro-F1 of the dominant type; JSD and per-type Pearson r of "
                              "proportions)",
             "imputation": "Imputation, leave-genes-out (median Pearson r per gene over all folds)"}[family]
    text = (f"# {title}, {set_name} set\n\nCommand: `{command}` (model `{model}`; seeds: {sorted(df.seed.unique().tolist())}; "
            f"commit {_git('rev-parse', '--short', 'HEAD')})\n\nBaselines: "
            + ", ".join(sorted(k for k, v in kinds.items() if v == 'baseline'))
            + f". `mean` is over cases of `{metric}`.\n\n{body}\n")
    (protocol.results / f"generalize_{family}_{set_name}{model_suffix(model)}.md").write_text(text)
    print(text)
    if set_name == "test":
        log_test_run({"family": family, "model": model, "quick": quick, "default_method": default,
                      f"mean_{metric}": per["mean"].round(4).to_dict()}, protocol)
    return per

