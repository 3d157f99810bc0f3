"""Fine-tuning on one or several slides (Methods 4.3): the pretraining objectives plus ECS.

The slides become a temporary corpus (same preprocessing as pretraining, normalised with the
model's own gene statistics where it has them), the model is trained on spatial patches with
GEP, GEPS-intra, GEPS-inter and ECS, and a fine-tuned copy is returned; the input model is not
modified.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from pathlib import Path

from ..checkpoint.pretrained import load_model
from ..device import choose_device
from ..errors import InputError
from ..params import DEFAULT_FINETUNE_STEPS
from ..progress import Progress
from .config import TrainConfig
from .corpus import SlideSpec, build_corpus
from .loop import Trainer

log = logging.getLogger(__name__)


def finetune(adatas, model="default", *, epochs: int = 1, max_steps: int | None = DEFAULT_FINETUNE_STEPS,
             lr: float = 1e-3, patch_size: int = 16,
             k_neighbours: int = 6, max_context: int = 128, grad_accum: int = 1, w_gep: float = 1.0,
             w_geps_intra: float = 1.0, w_geps_inter: float = 1.0, w_ecs: float = 1.0, gene_col: str | None = None,
             modality: str | None = None, counts_layer: str | None = None, seed: int = 0, device: str | None = None, run_dir: str | Path | None = None,
             progress: Progress | None = None):
    """Fine-tune ``model`` on slides (AnnData objects or paths); returns a new :class:`SpGPT`.

    Defaults are sized for a CPU: one epoch over a 3,600-spot Visium slide takes about 2 minutes on
    2 cores with the default model (measured on DLPFC 151673). ``max_steps``: stop after this many
    optimizer steps (spatial patches drawn at random over all slides) even if ``epochs`` are not done,
    so a 1M-cell slide costs what a small one does (None: every patch of every epoch); the model's
    ``metadata['training']`` records the budget and the steps taken. ``counts_layer`` names the layer with
    the raw counts (``'raw'``: ``.raw``) when the slides' ``X`` is normalised. ``run_dir`` keeps the checkpoints and ``metrics.jsonl`` (a temporary folder otherwise).
    """
    if max_steps is not None and max_steps < 1:
        raise InputError(f"max_steps={max_steps}: give a positive step budget, or None for full epochs")
    device = str(choose_device(device, model))  # before the copy below moves it to the CPU
    base = load_model(model, device="cpu")
    tuned = copy.deepcopy(base)
    tuned.metadata = {**base.metadata, "finetuned_from": base.metadata.get("source", "in-memory")}
    if not isinstance(adatas, (list, tuple)):
        adatas = [adatas]
    specs = []
    for i, a in enumerate(adatas):
        if isinstance(a, (str, Path)):
            specs.append(SlideSpec(path=str(a), modality=modality, gene_col=gene_col, counts_layer=counts_layer))
        else:
            specs.append(SlideSpec(path=f"slide_{i}", modality=modality, gene_col=gene_col, counts_layer=counts_layer,
                                   adata=a, slide_id=f"slide_{i}"))
    tmp = Path(tempfile.mkdtemp(prefix="spgpt_finetune_"))
    try:
        corpus_dir = build_corpus(specs, tmp / "corpus", vocab=tuned.vocab, val_fraction=0.0, patch_size=patch_size,
                                  seed=seed, progress=progress)  # a 1M-cell slide takes minutes: say so
        cfg = TrainConfig(corpus=str(corpus_dir), run_dir=str(run_dir or tmp / "run"), init="finetune",
                          patch_size=patch_size, k_neighbours=k_neighbours, max_context=max_context, epochs=epochs,
                          max_steps=max_steps or 0, lr=lr, lr_decay=0.9, grad_accum=grad_accum, w_gep=w_gep,
                          w_geps_intra=w_geps_intra,
                          w_geps_inter=w_geps_inter, w_ecs=w_ecs, seed=seed, device=device, eval_every=0,
                          log_every=10, checkpoint_every=10**9)
        trainer = Trainer(cfg, model=tuned, progress=progress)
        if max_steps:
            full = sum(len(trainer.train_sampler.rank_patches(e)) for e in range(epochs))
            if full > max_steps:
                log.info("fine-tuning on %d of the %d spatial patches of %d epoch(s) (the step budget, "
                         "--finetune-steps)", max_steps, full, epochs)
        return trainer.train()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
