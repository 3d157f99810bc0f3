"""Is the integration gap batch separation or biological resolution? Scores each benchmark pair's
zero-shot joint embedding as returned and after centring each slide's embeddings on their own mean
(removing any constant per-slide offset), and reports how the offset relates to sequencing depth.

    python bench/experiments/integration_diagnostic.py [MODEL_DIR|default] [--threads 2] [--json out.json]

Protocol as quick_eval.py (``spgpt_core.tl.integrate``, Leiden, Methods 4.5.2 metrics).
Centring is a diagnostic, not a method spgpt uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quick_eval import DATA, INTEGRATION_SETS, joint_embedding, scores  # noqa: E402

from spgpt_core.checkpoint.pretrained import load_model  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    res: dict = {"model": args.model, "pairs": {}}
    for name, rels, key in INTEGRATION_SETS:
        joint, X, labels, batch, ok = joint_embedding(Path(args.data), rels, key, model)
        X, labels, batch = X[ok], labels[ok], batch[ok]
        n_genes = np.asarray((joint.X[ok] > 0).sum(1)).ravel()
        centred = X.copy()
        for b in ("a", "b"):
            centred[batch == b] -= centred[batch == b].mean(0)
        shift = X[batch == "a"].mean(0) - X[batch == "b"].mean(0)
        u = shift / np.linalg.norm(shift)
        row = {"median_expressed_genes": [float(np.median(n_genes[batch == b])) for b in ("a", "b")],
               "offset_norm": round(float(np.linalg.norm(shift)), 4),
               "within_slide_spread": round(float(np.sqrt(X.var(0).sum())), 4),
               "r_offset_direction_vs_log_expressed_genes_within_slide_a":
                   round(float(np.corrcoef(X[batch == "a"] @ u, np.log(n_genes[batch == "a"]))[0, 1]), 3)}
        for tag, E in (("as_returned", X), ("slides_centred", centred)):
            row[tag] = scores(E, labels, batch)
        res["pairs"][name] = row
        print(name, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
