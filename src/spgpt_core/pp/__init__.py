"""Preprocessing (paper Methods 4.1): gene names to the vocabulary (``vocab``), where the raw counts are
(``counts``), highly variable genes (``hvg``), the technology of a slide (``modality``) and the
two-level normalisation, binning and tokens the model reads (``tokenize``)."""

from .counts import count_layers, with_counts
from .hvg import DEFAULT_N_TOP_GENES, highly_variable_mask
from .modality import get_modality, resolve_modality
from .tokenize import GeneStats, SlideStats, tokenize_rows
from .vocab import GeneMatch, GeneVocab, resolve_genes

__all__ = ["count_layers", "with_counts", "DEFAULT_N_TOP_GENES", "highly_variable_mask", "get_modality",
           "resolve_modality", "GeneStats", "SlideStats", "tokenize_rows", "GeneMatch", "GeneVocab", "resolve_genes"]
