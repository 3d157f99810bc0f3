"""Spatial technologies ("modalities") the model knows, and how a slide's modality is decided.

Each modality has a learned embedding (paper Eq. 5, 6) and a quality-control rule (Methods 4.1:
imaging cells need >= 10 expressed genes, sequencing spots >= 50). The order of ``MODALITIES``
fixes the embedding row of each name: append new names, never reorder.

Rule when the user does not say (documented in the README):
1. ``adata.uns['spgpt']['modality']``, ``adata.uns['modality']`` or a single-valued
   ``obs['modality']`` if present and known;
2. otherwise the size of the gene panel: more than 1,000 genes means a whole-transcriptome
   sequencing assay and gives ``visium``; a targeted panel of at most 1,000 genes gives
   ``xenium`` (imaging). The choice is logged with how to override it (``--modality``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Modality:
    name: str
    kind: str  # "sequencing" (spots, whole transcriptome) or "imaging" (cells, targeted panel)
    min_genes_per_cell: int
    description: str


_ALL = [
    Modality("visium", "sequencing", 50, "10x Visium, 55 um spots"),
    Modality("visium_hd", "sequencing", 50, "10x Visium HD, 2-16 um bins"),
    Modality("xenium", "imaging", 10, "10x Xenium in situ"),
    Modality("merfish", "imaging", 10, "MERFISH / Vizgen MERSCOPE"),
    Modality("cosmx", "imaging", 10, "NanoString CosMx SMI"),
    Modality("starmap", "imaging", 10, "STARmap (2D or 3D)"),
    Modality("osmfish", "imaging", 10, "osmFISH"),
    Modality("seqfish", "imaging", 10, "seqFISH / seqFISH+"),
    Modality("smfish", "imaging", 10, "multiplexed smFISH"),
    Modality("verafish", "imaging", 10, "VeraFISH"),
    Modality("slideseq", "sequencing", 10, "Slide-seq / Slide-seqV2 10 um beads (sparse: 10-gene threshold)"),
    Modality("st", "sequencing", 50, "legacy Spatial Transcriptomics, 100 um spots"),
    Modality("stereoseq", "sequencing", 50, "Stereo-seq bins"),
    Modality("scrna", "sequencing", 50, "dissociated single-cell / single-nucleus RNA-seq (references)"),
]

MODALITIES: tuple[str, ...] = tuple(m.name for m in _ALL)
_BY_NAME = {m.name: m for m in _ALL}
_ALIASES = {"visiumhd": "visium_hd", "merscope": "merfish", "slide-seq": "slideseq", "slideseqv2": "slideseq",
            "stereo-seq": "stereoseq", "seqfishplus": "seqfish", "seqfish+": "seqfish", "snrna": "scrna",
            "scrnaseq": "scrna", "scrna-seq": "scrna", "sc": "scrna", "legacy_st": "st"}


def get_modality(name: str) -> Modality:
    key = str(name).strip().lower().replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in _BY_NAME:
        raise InputError(f"unknown modality {name!r}; choose one of: {', '.join(MODALITIES)}")
    return _BY_NAME[key]


def modality_index(name: str) -> int:
    return MODALITIES.index(get_modality(name).name)


def infer_modality(adata) -> tuple[Modality, str]:
    """Return (modality, reason) following the documented rule above."""
    for where, value in (("uns['spgpt']['modality']", (adata.uns.get("spgpt") or {}).get("modality")
                          if isinstance(adata.uns.get("spgpt"), dict) else None),
                         ("uns['modality']", adata.uns.get("modality"))):
        if isinstance(value, str):
            return get_modality(value), f"from {where}"
    if "modality" in adata.obs:
        values = adata.obs["modality"].astype(str).unique()
        if len(values) == 1:
            return get_modality(values[0]), "from obs['modality']"
    n = adata.n_vars
    if n > 1000:
        return _BY_NAME["visium"], f"inferred: {n} genes (>1,000) looks like a whole-transcriptome sequencing assay"
    return _BY_NAME["xenium"], f"inferred: {n} genes (<=1,000) looks like a targeted imaging panel"


def resolve_modality(adata, modality: str | None) -> tuple[Modality, str]:
    """The user's choice if given, else :func:`infer_modality`; logs the decision."""
    if modality:
        return get_modality(modality), "given"
    mod, reason = infer_modality(adata)
    log.info("modality %s (%s); pass --modality to override", mod.name, reason)
    return mod, reason
