"""Resident memory of ``tl.domains`` stage by stage on one slide: where a run's peak comes from.

A thread samples this process's RSS every 50 ms; the stages (reading, model, gene choice, embedding,
expression PCs, combined features, clustering) are marked by wrapping the functions ``tl.domains``
calls. Prints, per stage boundary, the RSS then and the peak so far, and the stage the peak fell in.

    python bench/domains_memory.py bench/.cache/scale/xenium_1000000.h5ad --features fused  # the model's path
    python bench/domains_memory.py bench/.cache/scale/xenium_1000000.h5ad                   # default: no model
    python bench/domains_memory.py SLIDE.h5ad --features fused --finetune-epochs 1 --n-clusters 7
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

STAGES = ("load_model", "highly_variable_mask", "finetune", "embed", "expression_pcs", "domain_features", "cluster")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slide")
    p.add_argument("--n-clusters", type=int, default=5)
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--features", help="expression, fused or embedding (default: tl.domains')")
    p.add_argument("--model", default="default")
    args = p.parse_args()

    import anndata as ad
    import psutil

    import spgpt_core.tl._domains as D

    proc = psutil.Process()
    state = {"stage": "start", "peak": 0, "at": "start"}
    marks = []

    def sample():
        while True:
            rss = proc.memory_info().rss
            if rss > state["peak"]:
                state["peak"], state["at"] = rss, state["stage"]
            time.sleep(0.05)

    def mark(name):
        state["stage"] = name
        marks.append((name, proc.memory_info().rss / 1e9, state["peak"] / 1e9))

    def wrapped(fn):
        @functools.wraps(fn)
        def call(*a, **k):
            mark(f"> {fn.__name__}")
            try:
                return fn(*a, **k)
            finally:
                mark(f"< {fn.__name__}")
        return call

    for name in STAGES:
        setattr(D, name, wrapped(getattr(D, name)))
    threading.Thread(target=sample, daemon=True).start()
    mark("reading")
    adata = ad.read_h5ad(args.slide)
    mark("read")
    D.domains(adata, args.model, n_clusters=args.n_clusters, finetune_epochs=args.finetune_epochs,
              **({"features": args.features} if args.features else {}))
    mark("end")
    for name, rss, peak in marks:
        print(f"{name:26s} RSS {rss:5.2f} GB   peak so far {peak:5.2f} GB")
    print(f"peak {state['peak'] / 1e9:.2f} GB, during '{state['at']}'")


if __name__ == "__main__":
    main()
