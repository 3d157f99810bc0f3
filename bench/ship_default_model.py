"""Copy a trained model directory into the package as the shipped default model.

    .venv/bin/python bench/ship_default_model.py runs/default-model/model

Checks the size budget (<= 25 MB of weights) and that the copy loads; the package then serves it as
``--model default`` (spgpt_core/data/default_model).
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "spgpt_core" / "data" / "default_model"


def main(src: str) -> None:
    from spgpt_core import SpGPT

    src_dir = Path(src)
    model = SpGPT.from_pretrained(src_dir)  # refuses broken directories
    size = (src_dir / "model.safetensors").stat().st_size / 1e6
    if size > 25:
        sys.exit(f"weights are {size:.1f} MB; the shipped model must stay <= 25 MB")
    if DEST.exists():
        shutil.rmtree(DEST)
    DEST.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "vocab.json", "gene_stats.csv", "metadata.json"):
        shutil.copy2(src_dir / name, DEST / name)
    back = SpGPT.from_pretrained(DEST)
    assert back.config == model.config
    print(f"shipped {src_dir} -> {DEST} ({size:.1f} MB weights, {back.describe()['n_parameters']:,} parameters)")


if __name__ == "__main__":
    main(sys.argv[1])
