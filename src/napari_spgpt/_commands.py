"""The ``spgpt`` command line equivalent to what a widget runs (shown in every widget, recorded
with the results), so a GUI analysis can be repeated in a script or on a cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

# = spgpt_core.hvg.DEFAULT_N_TOP_GENES, not imported from there: spgpt_core loads torch, and the plugin
# imports heavy code only inside its workers (tests/gui keeps the two equal)
DEFAULT_N_TOP_GENES = 3000


def join(parts: list) -> str:
    return shlex.join(str(p) for p in parts if p is not None)


def input_args(slide) -> list[str]:
    """The slide's input as the CLI reads it (an in-memory slide must be exported first)."""
    if slide is None:
        return ["SLIDE.h5ad"]
    if slide.source is None or slide.kind == "memory":
        return [f"{slide.name}.h5ad"]  # export it with the Export widget first
    args = [slide.source]
    if slide.kind in ("zarr", "vendor") and slide.table:  # vendor: a Visium HD bin size
        args += ["--table", slide.table]
    return args


def stem(slide) -> str:
    if slide is None:
        return "slide"
    return Path(slide.source).stem if slide.source else slide.name


def model_args(spec: str, device: str) -> list[str]:
    args = ["--model", spec]
    if device and device != "auto":
        args += ["--device", device]
    return args


def counts_args(slide) -> list[str]:
    return ["--counts-layer", slide.counts_layer] if slide is not None and slide.counts_layer else []


def slide_args(slide) -> list[str]:
    """The slide's gene-name column and counts layer, when chosen."""
    return (["--gene-col", slide.gene_col] if slide is not None and slide.gene_col else []) + counts_args(slide)


def domains(slide, spec: str, device: str, *, batch_size: int, seed: int, drop_empty: bool,
            n_clusters: int | None, resolution: float | None, method: str, smooth_k: int,
            finetune_epochs: int | None = None, n_top_genes: int = DEFAULT_N_TOP_GENES) -> str:
    """``spgpt domains ...``: the Embed & domains widget's run, as one command (tl.domains behind both)."""
    args = ["spgpt", "domains", *input_args(slide), *model_args(spec, device), *slide_args(slide)]
    args += ["--n-clusters", n_clusters] if n_clusters is not None else ["--resolution", resolution]
    args += ["--method", method, "--smooth-k", smooth_k, "--batch-size", batch_size, "--seed", seed]
    if n_top_genes != DEFAULT_N_TOP_GENES:
        args += ["--n-top-genes", n_top_genes]
    if finetune_epochs:
        args += ["--finetune-epochs", finetune_epochs]
    if drop_empty:
        args.append("--drop-empty")
    return join([*args, "--out", f"{stem(slide)}_domains.h5ad"])


def _mapping_args(epochs: int, seed: int) -> list:
    return (["--mapping-epochs", epochs] if epochs != 1000 else []) + (["--seed", seed] if seed else [])


def deconvolve(slide, spec: str, device: str, *, reference: str | None, celltype_key: str | None,
               epochs: int = 1000, seed: int = 0) -> str:
    return join(["spgpt", "deconvolve", *input_args(slide), "--reference", reference or "REFERENCE.h5ad",
                 "--celltype-key", celltype_key or "KEY", *model_args(spec, device), *slide_args(slide),
                 *_mapping_args(epochs, seed), "--out", f"{stem(slide)}_deconvolved.h5ad"])


def imputation_qc(slide, spec: str, device: str, *, reference: str | None, genes: list[str], epochs: int,
                  seed: int, key_added: str) -> str:
    """Imputation QC: impute measured genes (each is left out of the mapping), then compare with spgpt evaluate."""
    out = f"{stem(slide)}_qc.h5ad"
    evaluate = ["spgpt", "evaluate", out, "--task", "imputation", "--pred", key_added, *slide_args(slide)]
    return "\n".join([impute(slide, spec, device, reference=reference, genes=genes, epochs=epochs, seed=seed,
                             out_suffix="qc", key_added=key_added), join(evaluate)])


def impute(slide, spec: str, device: str, *, reference: str | None, genes: list[str], epochs: int = 1000,
           seed: int = 0, out_suffix: str = "imputed", key_added: str | None = None) -> str:
    return join(["spgpt", "impute", *input_args(slide), "--reference", reference or "REFERENCE.h5ad",
                 "--genes", ",".join(genes) if genes else "G1,G2", *model_args(spec, device),
                 *slide_args(slide), *_mapping_args(epochs, seed),
                 *(["--key-added", key_added] if key_added else []), "--out", f"{stem(slide)}_{out_suffix}.h5ad"])
