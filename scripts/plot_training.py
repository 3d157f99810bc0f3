"""Loss curves of a training run: ``metrics.jsonl`` (from ``spgpt pretrain``) -> PNG.

    .venv/bin/python scripts/plot_training.py runs/default-model/metrics.jsonl docs/default_model_loss.png \
        [docs/random_gene_init_metrics.jsonl]

The optional third file is another run whose validation losses are drawn dashed for comparison
(here: the same recipe with random instead of co-expression gene embeddings).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TERMS = ("gep", "geps_intra", "geps_inter")


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(metrics: str, out: str, compare: str | None = None) -> None:
    from matplotlib.figure import Figure

    rows = _rows(metrics)
    train = [r for r in rows if "gep" in r]
    val = [r for r in rows if "val_gep" in r]
    other = [r for r in _rows(compare) if "val_gep" in r] if compare else []
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for t in TERMS:
        ax1.plot([r["step"] for r in train], [r[t] for r in train], label=t, lw=1)
        line, = ax2.plot([r["step"] for r in val], [r[f"val_{t}"] for r in val], marker="o", ms=3, label=t)
        if other:
            ax2.plot([r["step"] for r in other], [r[f"val_{t}"] for r in other], ls="--", lw=1,
                     color=line.get_color(), label=f"{t}, {Path(compare).stem}")
    ax1.set_title("training loss (MSE on binned values, per logged step)")
    ax2.set_title("validation loss (held-out spatial patches)")
    for ax in (ax1, ax2):
        ax.set_xlabel("optimizer step")
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    ax1.set_ylim(top=min(500, max(r["gep"] for r in train)))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"{len(train)} training and {len(val)} validation points -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
