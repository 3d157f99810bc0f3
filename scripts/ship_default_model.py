"""Copy a trained model directory into the package as the shipped default model.

    .venv/bin/python scripts/ship_default_model.py runs/default-model/model [--storage float16]

Checks the size budget (<= 25 MB of weights) and that the copy loads; the package then serves it as
``--model default`` (spgpt_core/data/default_model). ``--storage float16`` re-saves the weights at half
precision (they load back as float32) for models whose float32 file is over budget.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "spgpt_core" / "data" / "default_model"
FILES = ("config.json", "model.safetensors", "vocab.json", "gene_stats.csv", "metadata.json")


def main(src: str, storage: str) -> None:
    from spgpt_core import SpGPT

    model = SpGPT.from_pretrained(Path(src))  # refuses broken directories
    with tempfile.TemporaryDirectory() as tmp:
        staged = model.save_pretrained(Path(tmp) / "model", storage_dtype=storage)
        size = (staged / "model.safetensors").stat().st_size / 1e6
        if size > 25:
            sys.exit(f"weights are {size:.1f} MB with {storage} storage; the shipped model must stay <= 25 MB")
        if DEST.exists():
            shutil.rmtree(DEST)
        DEST.mkdir(parents=True)
        for name in FILES:  # the training record (metadata.json, with every stage's) is kept as the run wrote it
            shutil.copy2((Path(src) if name == "metadata.json" else staged) / name, DEST / name)
    back = SpGPT.from_pretrained(DEST)
    assert back.config == model.config
    print(f"shipped {src} -> {DEST} ({size:.1f} MB {storage} weights, {back.describe()['n_parameters']:,} parameters)")


if __name__ == "__main__":
    from spgpt_core.checkpoint.pretrained import STORAGE_DTYPES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--storage", choices=tuple(STORAGE_DTYPES), default="float32")
    args = ap.parse_args()
    main(args.model_dir, args.storage)
