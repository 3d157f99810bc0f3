"""Two probes of the DLPFC gap (docs/experiments/; neither is adopted).

    python bench/experiments/embedding_probes.py layer-mean --from-layer 1 [--threads 2]
    python bench/experiments/embedding_probes.py finetune-ablation [--threads 2]

``layer-mean``: the spot embedding as the mean of the L2-normalised ``<cls>`` states after layers
FROM..last instead of the final layer's alone (a common feature-extraction trick; not the paper's
choice), scored with ``quick_eval`` (benchmark slides + integration) and ``validation_eval``.

``finetune-ablation``: one epoch of fine-tuning (Methods 4.3) on each DLPFC slide with and without
the ECS term, at two learning rates and with the spatial objective (GEPS-inter) weighted up, then
best-of-four ARI as in ``quick_eval``. A learning rate of 1e-9 is the pipeline check: it must
reproduce the zero-shot scores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import anndata as ad
import torch
import torch.nn.functional as F

import quick_eval
import validation_eval
from spgpt_core.model import SpGPTModel

# keyword arguments of spgpt_core.train.finetune; the first is the pipeline check, the second the default
FINETUNE_VARIANTS = [
    dict(lr=1e-9), dict(lr=1e-3), dict(lr=1e-3, w_ecs=0.0), dict(lr=3e-4, w_ecs=0.0),
    dict(lr=1e-3, w_geps_inter=5.0), dict(lr=1e-3, w_geps_inter=5.0, w_gep=0.2, w_geps_intra=0.2),
]


@contextlib.contextmanager
def layer_mean_embedding(from_layer: int):
    """Temporarily make ``SpGPTModel.spot_embedding`` return the sum of the normalised <cls> states
    after layers ``from_layer``..last (compute_embedding() L2-normalises it, so sum and mean are the same)."""
    original = SpGPTModel.spot_embedding

    def spot_embedding(self, genes, values, pad_mask, layer: int = -1):
        states = []
        hooks = [block.register_forward_hook(lambda _m, _i, out: states.append(out[:, 0]))
                 for block in self.layers[from_layer - 1:]]
        try:
            original(self, genes, values, pad_mask)  # runs every layer through the real encoder
        finally:
            for hook in hooks:
                hook.remove()
        return sum(F.normalize(s, dim=-1) for s in states)

    SpGPTModel.spot_embedding = spot_embedding
    try:
        yield
    finally:
        SpGPTModel.spot_embedding = original


def finetune_ablation(threads: int) -> dict:
    from spgpt_core.tl._embed import compute_embedding
    from spgpt_core.train.finetune import finetune

    torch.set_num_threads(threads)
    out: dict = {}
    for name, rel, k in quick_eval.DOMAIN_SETS[:2]:
        a = ad.read_h5ad(quick_eval.DATA / rel)
        labels = a.obs["layer"].astype(str).to_numpy()
        for variant in FINETUNE_VARIANTS:
            t0 = time.perf_counter()
            tuned = finetune(a, "default", epochs=1, seed=0, **variant)
            emb, _ = compute_embedding(a, tuned, empty="drop", seed=0, n_top_genes=3000)
            aris = quick_eval.domain_aris(emb, a, k, labels)
            label = ", ".join(f"{key} {value:g}" for key, value in variant.items())
            out.setdefault(name, {})[label] = aris
            print(f"{name} {label}: ARI {aris} best {max(aris):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["layer-mean", "finetune-ablation"])
    p.add_argument("--from-layer", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the scores here")
    args = p.parse_args(argv)
    if args.probe == "layer-mean":
        with layer_mean_embedding(args.from_layer):
            res = {"benchmark": quick_eval.main(["default", "--threads", str(args.threads)]),
                   "validation": validation_eval.main(["default", "--threads", str(args.threads)])}
    else:
        res = finetune_ablation(args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
