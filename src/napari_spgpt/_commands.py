"""The ``spgpt`` command line equivalent to what a widget runs (shown in every widget, recorded
with the results), so a GUI analysis can be repeated in a script or on a cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

# spgpt_core.params is light (no torch): the flags come from the same declarations as the CLI's
from spgpt_core.params import DeconvolveConfig, DomainsConfig, ImputeConfig, to_flags


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


def domains(slide, spec: str, device: str, config: DomainsConfig) -> str:
    """``spgpt domains ...``: the Embed & domains widget's run, as one command (tl.domains behind both)."""
    flags = to_flags(config, always=("n_clusters", "resolution", "method", "smooth_k", "batch_size", "seed"))
    model = model_args(spec, device) if config.uses_embedding else []  # the expression alone: no model
    return join(["spgpt", "domains", *input_args(slide), *model, *slide_args(slide), *flags,
                 "--out", f"{stem(slide)}_domains.h5ad"])


def cluster(slide, config: DomainsConfig, key_added: str) -> str:
    """``spgpt cluster ...``: a re-run that changed only clustering settings clusters the embedding the
    previous run made (the ``spgpt domains`` output) again."""
    how = ["--n-clusters", config.n_clusters] if config.n_clusters is not None else ["--resolution", config.resolution]
    return join(["spgpt", "cluster", f"{stem(slide)}_domains.h5ad", *how, "--method", config.method, "--smooth-k",
                 config.smooth_k, "--spatial-prior", config.spatial_prior, "--seed", config.seed,
                 "--key-added", key_added,
                 "--out", f"{stem(slide)}_domains_reclustered.h5ad"])


def deconvolve(slide, spec: str, device: str, *, reference: str | None, celltype_key: str | None,
               config: DeconvolveConfig) -> str:
    return join(["spgpt", "deconvolve", *input_args(slide), "--reference", reference or "REFERENCE.h5ad",
                 "--celltype-key", celltype_key or "KEY", *model_args(spec, device), *slide_args(slide),
                 *to_flags(config), "--out", f"{stem(slide)}_deconvolved.h5ad"])


def imputation_qc(slide, spec: str, device: str, *, reference: str | None, genes: list[str], config: ImputeConfig,
                  key_added: str) -> str:
    """Imputation QC: impute measured genes (each is left out of the mapping), then compare with spgpt evaluate."""
    out = f"{stem(slide)}_qc.h5ad"
    evaluate = ["spgpt", "evaluate", out, "--task", "imputation", "--pred", key_added, *slide_args(slide)]
    return "\n".join([impute(slide, spec, device, reference=reference, genes=genes, config=config, out_suffix="qc",
                             key_added=key_added), join(evaluate)])


def impute(slide, spec: str, device: str, *, reference: str | None, genes: list[str], config: ImputeConfig,
           out_suffix: str = "imputed", key_added: str | None = None) -> str:
    return join(["spgpt", "impute", *input_args(slide), "--reference", reference or "REFERENCE.h5ad",
                 "--genes", ",".join(genes) if genes else "G1,G2", *model_args(spec, device), *slide_args(slide),
                 *to_flags(config), *(["--key-added", key_added] if key_added else []),
                 "--out", f"{stem(slide)}_{out_suffix}.h5ad"])
