"""`spgpt deconvolve` and `spgpt impute` (50 genes) on generated slides of growing size: wall time and
peak RSS (``/usr/bin/time -v`` around the CLI), one process per run. Each (verb, size, options) result is
appended to the output JSON lines as soon as it finishes and skipped when already there (resumable).

    python bench/scale_mapping.py --sizes 10000 100000 --out bench/results/scale_mapping.jsonl
    python bench/scale_mapping.py --sizes 100000 --extra=--method=tangram_clusters

The slide: the generator's Visium-like lattice (``make_sample_slide``) with 300 genes; the reference:
6 types x 500 cells of the same planted profiles. Impute: 50 genes removed from the slide and imputed
from the reference. Default options (``--method auto``); ``--no-embeddings`` unless ``--with-model``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_domains import lattice  # noqa: E402

N_GENES, N_IMPUTE = 300, 50


def make_inputs(n_spots: int, workdir: Path) -> tuple[Path, Path, Path, list[str]]:
    import numpy as np

    from spgpt_core.datasets import make_sample_reference, make_sample_slide

    slide_p, held_p, ref_p = (workdir / f"{k}_{n_spots}.h5ad" for k in ("slide", "held", "ref"))
    ref = make_sample_reference(n_cells_per_type=500, n_genes=N_GENES, seed=0)
    rng = np.random.default_rng(0)
    genes = sorted(rng.choice(ref.var_names.astype(str), N_IMPUTE, replace=False).tolist())
    if not slide_p.exists():
        rows, cols = lattice(n_spots)
        slide = make_sample_slide(n_rows=rows, n_cols=cols, seed=2, reference=make_sample_reference(n_genes=N_GENES,
                                                                                                      seed=0))
        del slide.uns["spatial"]  # the H&E image is not what is measured
        slide.write_h5ad(slide_p)
        slide[:, ~slide.var_names.isin(genes)].copy().write_h5ad(held_p)
        ref.write_h5ad(ref_p)
    return slide_p, held_p, ref_p, genes


def timed(cmd: list[str]) -> dict:
    t0 = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.time() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    return {"ok": res.returncode == 0, "seconds": round(wall, 1),
            "peak_rss_gb": round(int(rss.group(1)) / 1e6, 2) if rss else None,
            **({} if res.returncode == 0 else {"error": res.stderr[-1500:]})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--verbs", nargs="+", default=["deconvolve", "impute"])
    p.add_argument("--with-model", action="store_true", help="embed with the default model (else --no-embeddings)")
    p.add_argument("--extra", default="", help="more CLI options, e.g. --extra=--method=tangram_clusters")
    p.add_argument("--workdir", default="/tmp/spgpt_scale_mapping")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scale_mapping.jsonl"))
    args = p.parse_args()
    out, work = Path(args.out), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    extra = [t for x in args.extra.split() for t in x.split("=", 1)] if args.extra else []
    opts = ([] if args.with_model else ["--no-embeddings"]) + extra
    done = {(r["verb"], r["target_spots"], " ".join(r["options"])) for r in
            (json.loads(line) for line in out.read_text().splitlines())} if out.exists() else set()
    for n in args.sizes:
        for verb in args.verbs:
            if (verb, n, " ".join(opts)) in done:
                continue
            slide_p, held_p, ref_p, genes = make_inputs(n, work)
            res_p = work / f"{verb}_{n}.h5ad"
            base = [sys.executable, "-m", "spgpt_core.cli", "-q", verb]
            if verb == "deconvolve":
                cmd = base + [str(slide_p), "--reference", str(ref_p), "--celltype-key", "cell_type"]
            else:
                cmd = base + [str(held_p), "--reference", str(ref_p), "--genes", ",".join(genes)]
            r = timed(cmd + opts + ["--out", str(res_p), "--overwrite"])
            if r["ok"]:
                import anndata as ad

                a = ad.read_h5ad(res_p, backed="r")
                key = "spgpt_proportions" if verb == "deconvolve" else "spgpt_imputed"
                rec = a.uns[key]
                summ = rec.get("summary", {})
                r.update(n_spots=int(a.n_obs), method=str(rec["params"].get("method")),
                         method_reason=str(summ.get("method_reason")), n_chunks=summ.get("n_chunks"),
                         mapping_seconds=summ.get("mapping_seconds"))
                if verb == "deconvolve":
                    from spgpt_core import metrics as M

                    truth = ad.read_h5ad(slide_p, backed="r").obsm["true_proportions"]
                    s = M.deconvolution_scores(truth, a.to_memory().obsm[key])
                    r.update(macro_f1=round(s["macro_f1"], 3), pearson_per_type=round(s["pearson_per_type_mean"], 3))
            row = {"verb": verb, "target_spots": n, "options": opts, "time": time.strftime("%Y-%m-%d %H:%M"), **r}
            with out.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")
            print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
