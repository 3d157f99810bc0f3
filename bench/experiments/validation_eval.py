"""Zero-shot domain clustering on the labelled slides that bench/tasks.py does *not* score: a
validation set for choosing recipes and defaults without tuning on the benchmark rows.

    python bench/experiments/validation_eval.py MODEL_DIR|default|pca [--threads 1] [--layer -1] \
        [--json out.json]

Slides: STARmap VISp (``domain``, K = 7), Allen MERFISH VISp (``layer``, 'unannotated' dropped),
osmFISH somatosensory cortex (``Region``), the six labelled HER2ST sections A1-F1 (``label``,
'undetermined' dropped). K = the number of labelled classes. Protocol as quick_eval.py: the
embedding of the 3,000 most variable genes (small panels whole), ARI of k-means / k-means +
smoothing / Leiden / Leiden + smoothing, seed 0; ``pca`` scores the PCA baseline of bench/tasks.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the PCA baseline of tasks.py
from quick_eval import DATA, domain_aris  # noqa: E402
from tasks import pca_embedding  # noqa: E402

SLIDES = [
    ("STARmap_VISp", "starmap_visp/STARmap_VISp_1207.h5ad", "domain", ()),
    ("MERFISH_VISp", "merfish_visp_allen/Allen_MERFISH_VISp_2150cells_253genes.h5ad", "layer", ("unannotated",)),
    ("osmFISH", "osmfish/osmFISH_SScortex_valid_4839cells.h5ad", "Region", ()),
] + [(f"HER2ST_{c}1", f"her2st/HER2ST_{c}1.h5ad", "label", ("undetermined",)) for c in "ABCDEF"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model directory, 'default', or 'pca' for the baseline")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--json")
    p.add_argument("--layer", type=int, default=-1,
                   help="embed with the <cls> state after this transformer layer (1-based; -1: the final one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = None
    if args.model != "pca":
        from spgpt_core.tl._embed import compute_embedding
        from spgpt_core.checkpoint.pretrained import load_model

        model = load_model(args.model)
    t0 = time.perf_counter()
    res: dict = {"model": args.model, "layer": args.layer, "domains": {}}
    for name, rel, key, drop in SLIDES:
        a = ad.read_h5ad(Path(args.data) / rel)
        labels = a.obs[key].astype(str).to_numpy().astype(object)
        labels[np.isin(labels, drop)] = None
        k = len(set(labels[labels != None]))  # noqa: E711 - object array
        if model is None:
            emb = pca_embedding(a).astype(np.float32)
        else:
            emb, _ = compute_embedding(a, model, empty="drop", seed=0, n_top_genes=3000, layer=args.layer)
        aris = domain_aris(emb, a, k, labels)
        res["domains"][name] = aris
        print(f"{name:14s} K={k:2d} ARI {aris}  best {max(aris):.3f}", flush=True)
    res["mean_best"] = round(float(np.mean([max(v) for v in res["domains"].values()])), 3)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"mean of best ARIs {res['mean_best']:.3f}  ({res['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
