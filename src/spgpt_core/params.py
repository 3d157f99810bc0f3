"""Analysis options declared once.

Each configuration dataclass below is the single declaration of a workflow's options: its
defaults, checks, CLI flag and help text. The Python API takes it (``config=`` or the same names as
keyword arguments), the CLI builds its flags from it (:func:`add_options`, :func:`from_args`) and
the plugin writes its equivalent command from it (:func:`to_flags`), so the three cannot drift.

This module imports nothing heavy: the CLI reads it to build ``--help`` and the plugin at start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field, fields

from .errors import InputError

#: Highly variable genes given to the model by default (scanpy's usual 3,000; the PCA baseline uses the same).
DEFAULT_N_TOP_GENES = 3000
#: Fewer genes shared by slide and reference than this is an error: no mapping can be trusted on so few.
MIN_SHARED_GENES = 5
DENSITY_PRIORS = ("rna_count_based", "uniform", "none")
CLUSTER_METHODS = ("leiden", "louvain", "kmeans", "gmm", "gmm-tied")
#: Fine-tuning step budget (patches of 16 neighbouring cells, one per optimizer step): about 9 minutes on
#: 2 cores with the default model (~0.5 s a step). A 3,600-spot Visium slide's epoch is 225 steps, so
#: the usual 1-4 epochs there are unchanged; a 1M-cell slide's epoch (62,500 steps, ~9 h) is cut to
#: 1,000 spatial patches drawn at random over the whole slide.
DEFAULT_FINETUNE_STEPS = 1000
#: How a reference maps onto a slide (tl._mapping): ``auto`` picks per size (see AUTO_* below); ``tangram_cells``
#: maps every reference cell (Tangram cells mode); ``tangram_clusters`` maps reference classes / centroids
#: (Tangram cluster mode, weighted by class size); ``nnls`` fits each spot as a non-negative mix of class means.
MAPPING_METHODS = ("auto", "tangram_cells", "tangram_clusters", "nnls")
#: Deconvolution adds ``consensus``: the mean of the tangram_clusters and nnls proportions. The two fail in
#: different ways (Tangram distributes each class's mass over the spots under a density prior; NNLS explains
#: each spot alone as a linear mix), so their mean is not far below the better of the two on any slide.
DECONVOLVE_METHODS = MAPPING_METHODS + ("consensus",)
#: Imputation adds a baseline: the mean of each cell's k nearest reference cells in shared-gene space.
IMPUTE_METHODS = MAPPING_METHODS + ("knn",)
#: How the values in X are scaled: detected by default (tl._expression.detect_scale).
INPUT_SCALES = ("auto", "counts", "normalised", "log1p")
#: ``auto`` below the size limits: the method each verb's dev benchmark chose
#: (bench/_mapping_families.py, bench/results/generalize_{deconvolution,imputation}_dev.md).
#: Deconvolution, dev mean macro-F1 over 2 cases x 5 seeds: consensus (tangram_clusters with the
#: embeddings and nnls, weighted by their fit to the slide) 0.620 (JSD 0.274, per-type r 0.683; with equal
#: weights 0.614), tangram_clusters with the embeddings
#: 0.581 (JSD 0.295, per-type r 0.653; the default before consensus existed), NNLS 0.570, Tangram clusters on
#: expression 0.569, tangram_cells with the embeddings (the paper's) 0.548, Tangram cells on expression 0.521.
#: Re-checked with a model pretrained without the dev slides (bench/protocols/unseen_tissue.yaml,
#: dev_held_out_model): consensus with the embeddings 0.630, without them 0.622, so deconvolution keeps them.
#: Imputation, dev median r per gene (2 cases, 5 seeds, 5 gene folds): tangram_clusters, 0.237 on expression
#: alone against 0.225 with the dev-held-out model's embeddings (the shipped model, which saw the dev
#: slides, had read 0.248 with them), so imputation maps on expression by default (ImputeConfig);
#: NNLS on centroids 0.169, kNN 0.147.
AUTO_METHOD = {"deconvolve": "consensus", "impute": "tangram_clusters"}
#: ``auto`` at or above this many spots uses a method that is separable by spot (chunked, memory set by
#: --chunk-size), whatever the small-slide choice. The small-slide choices embed every spot and run Tangram's
#: 1,000 epochs over all of them, ~25 ms a spot on one core (bench/scale.py, 5 types: deconvolve 191 s at 10k
#: spots, 1,201 s at 50k; Tangram's epochs 91% of it); here they take ~7 min, so no slide waits much longer
#: than that for ``auto``, while NNLS maps 100k spots in ~12 s. Every benchmark pair is far below it.
AUTO_SEPARABLE_FROM_SPOTS = 20_000
#: ``auto``'s separable method. Deconvolution: nnls. On dev it scored 0.570 macro-F1 against 0.620 for
#: consensus (0.581 for its Tangram part), the price of a mapping that needs no model and no optimiser:
#: 100k spots in 12 s and 1.26 GB, 1M in 48 s (bench/scale.py). Imputation: nnls, the best
#: dev method (0.164) of those that run at 100k cells (kNN 0.148); tangram_clusters maps |reference|/10
#: centroids (300 for a 3,000-cell reference), which at 100k cells costs hours.
AUTO_SEPARABLE_METHOD = {"deconvolve": "nnls", "impute": "nnls"}
#: Tangram cells mode holds a (reference cells x spots) float32 matrix with Adam state (~6 copies, 24 bytes
#: per entry) and costs time in proportion to it (11,406 spots x 900 cells took 452 s on 2 cores): above
#: this many entries (2.4 GB, ~1 h) it is refused before any work starts.
MAX_CELLS_MODE_PAIRS = 100_000_000
DOMAIN_FEATURES = ("embedding", "expression", "fused")


def option(default, flag: str, help: str, *, type=None, choices=None, metavar=None, negate: bool = False,
           renamed: str | None = None, group: str | None = None, required_group: bool = False, none_as=None):
    """A dataclass field with its CLI declaration.

    ``negate``: a boolean option that defaults to True and whose flag (``--no-...``) turns it off.
    ``renamed``: the flag's previous name, accepted for one release with a warning. ``group``: flags in
    one group are mutually exclusive (``required_group``: one of them must be given). ``none_as``: the
    flag value that stands for None where None is not the default (e.g. 0 = every cell)."""
    meta = {"flag": flag, "help": help, "type": type, "choices": choices, "metavar": metavar, "negate": negate,
            "renamed": renamed, "group": group, "required_group": required_group, "none_as": none_as}
    return field(default=default, metadata=meta)


def finetune_steps_option():
    """The fine-tuning step budget, declared once for ``spgpt finetune`` and ``spgpt domains``."""
    return option(DEFAULT_FINETUNE_STEPS, "--finetune-steps", "stop fine-tuning after this many steps (one "
                  "spatial patch each), however many epochs were asked; a big slide then costs what a small one "
                  "does (0 = every patch of every epoch)", type=int, metavar="STEPS", none_as=0)


class Config:
    """Shared behaviour of the configuration dataclasses."""

    def replace(self, **changes):
        """A copy with ``changes`` (checked as the constructor checks)."""
        return resolve(type(self), self, changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve(cls, config=None, options: dict | None = None):
    """``config`` (or the defaults) with ``options`` applied; unknown names are refused with the known ones."""
    options = dict(options or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; known: {', '.join(sorted(known))}")
    if config is None:
        return cls(**options)
    if not isinstance(config, cls):
        raise InputError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


# ---------------------------------------------------------------------------------- checks


def _at_least(name: str, value, low, hint: str = "") -> None:
    if value is not None and value < low:
        raise InputError(f"{name}={value} must be >= {low}{hint}")


# ------------------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class MappingConfig(Config):
    """How a reference is mapped onto a slide: Tangram's optimiser with the paper's Eq. 15 objective on
    expression stacked with the model's embeddings (Methods 4.4.1, 4.5). Shared by deconvolution and imputation."""

    use_embeddings: bool = option(True, "--no-embeddings", "map on expression alone (plain Tangram features; no "
                                  "model needed)", negate=True)
    spatial_rep: str | None = option(None, "--spatial-rep", "use this obsm embedding of the slide instead of "
                                     "embedding it")
    reference_rep: str | None = option(None, "--reference-rep", "use this obsm embedding of the reference instead "
                                       "of embedding it")
    reference_gene_col: str | None = option(None, "--reference-gene-col", "var column of the reference holding "
                                            "gene names (default: automatic)")
    embedding_weight: float | None = option(None, "--embedding-weight", "centre the embeddings and scale their "
                                            "block to this multiple of the expression block's norm (default: stack "
                                            "them as the model returns them, as the paper does)", type=float)
    num_epochs: int = option(1000, "--mapping-epochs", "Tangram optimisation epochs", type=int, metavar="EPOCHS",
                             renamed="--epochs")  # --epochs means fine-tuning epochs elsewhere
    learning_rate: float = option(0.1, "--learning-rate", "Tangram learning rate", type=float)
    lambda_g2: float = option(1.0, "--lambda-g2", "weight of the per-spot cosine term (paper Eq. 15: 1; Tangram "
                              "default: 0)", type=float)
    density_prior: str = option("rna_count_based", "--density-prior", "Tangram density prior of the spots",
                                choices=DENSITY_PRIORS)
    seed: int = option(0, "--seed", "seed of the mapping's start and every subsample", type=int)
    method: str = option("auto", "--method", "how the reference maps: tangram_cells (every reference cell), "
                         "tangram_clusters (reference classes / centroids, weighted by size), nnls (each spot a "
                         "non-negative mix of class means; separable by spot); auto = the benchmark's choice, a "
                         f"separable method from {AUTO_SEPARABLE_FROM_SPOTS:,} spots", choices=MAPPING_METHODS)
    chunk_size: int = option(50_000, "--chunk-size", "spots per chunk of the separable methods (nnls, "
                             "tangram_clusters); memory grows with it", type=int, metavar="SPOTS")
    input_scale: str = option("auto", "--input-scale", "what the slide's X holds: raw counts, normalised linear "
                              "values (e.g. volume-normalised) or log1p values (default: detected)",
                              choices=INPUT_SCALES)
    reference_input_scale: str = option("auto", "--reference-input-scale", "what the reference's X holds "
                                        "(default: detected)", choices=INPUT_SCALES)
    batch_size: int = option(64, "--batch-size", "embedding batch size (cells); lower it on a GPU out-of-memory "
                             "error", type=int)
    max_seq_len: int | None = option(None, "--max-seq-len", "at most this many tokens (<cls> + genes) per cell "
                                     "when embedding, below the model's context; lower it on a GPU out-of-memory "
                                     "error (default: the model's)", type=int, metavar="TOKENS")

    def __post_init__(self):
        _at_least("embedding_weight", self.embedding_weight, 0)
        _at_least("max_seq_len", self.max_seq_len, 2)
        _at_least("num_epochs", self.num_epochs, 1, ": the mapping needs at least 1 epoch")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("chunk_size", self.chunk_size, 1)
        if self.method not in self._methods:
            raise InputError(f"method={self.method!r}: use one of {', '.join(self._methods)}")
        for name in ("input_scale", "reference_input_scale"):
            if getattr(self, name) not in INPUT_SCALES:
                raise InputError(f"{name}={getattr(self, name)!r}: use one of {', '.join(INPUT_SCALES)}")
        if self.density_prior not in DENSITY_PRIORS:
            raise InputError(f"density_prior={self.density_prior!r}: use 'rna_count_based', 'uniform' or 'none'")

    _methods = MAPPING_METHODS

    @property
    def may_use_embeddings(self) -> bool:
        """Whether the mapping may need the model: embeddings asked for and a method that stacks them
        (``auto`` may still pick NNLS on a large slide, which does not)."""
        return self.use_embeddings and self.method != "nnls"

    @property
    def embedding_block(self) -> str:
        """How the embeddings entered the features, for the run record."""
        if not self.use_embeddings:
            return "none"
        return "as returned (paper)" if self.embedding_weight is None else "centred and scaled"


@dataclass(frozen=True)
class DeconvolveConfig(MappingConfig):
    """Deconvolution: the mapping options plus which reference cells and genes map."""

    max_cells_per_type: int | None = option(1000, "--max-cells-per-type", "reference subsample per type (0 = every "
                                            "cell)", type=int, none_as=0)
    n_top_genes: int = option(1000, "--n-top-genes", "the N most variable shared genes map the reference", type=int,
                              metavar="N", renamed="--n-genes")
    method: str = option("auto", "--method", "how the reference maps: tangram_cells (every reference cell), "
                         "tangram_clusters (reference classes / centroids, weighted by size), nnls (each spot a "
                         "non-negative mix of class means; separable by spot), consensus (the mean of the "
                         "tangram_clusters and nnls proportions); auto = the benchmark's choice, a separable "
                         f"method from {AUTO_SEPARABLE_FROM_SPOTS:,} spots", choices=DECONVOLVE_METHODS)

    def __post_init__(self):
        super().__post_init__()
        _at_least("max_cells_per_type", self.max_cells_per_type, 1, " (or None for all cells)")
        _at_least("n_top_genes", self.n_top_genes, MIN_SHARED_GENES)

    _methods = DECONVOLVE_METHODS


@dataclass(frozen=True)
class ImputeConfig(MappingConfig):
    """Imputation: the mapping options plus the reference centroids that map (Tangram cluster mode).

    The density prior defaults to uniform: each row of an imaging slide is one cell, and an RNA-count
    prior would ask cells with more transcripts to receive more reference cells."""

    # expression alone by default: with a model that had not seen the dev tissue, its embeddings lowered
    # the dev score (0.225 vs 0.237, AUTO_METHOD's note); --embeddings stacks them as the paper does
    use_embeddings: bool = option(False, "--embeddings", "map on expression stacked with the model's embeddings "
                                  "(the paper's features; loads the model)")
    density_prior: str = option("uniform", "--density-prior", "Tangram density prior of the slide's cells",
                                choices=DENSITY_PRIORS)
    method: str = option("auto", "--method", "how the reference maps: tangram_cells (every reference cell), "
                         "tangram_clusters (k-means centroids of the reference, weighted by size), nnls (each cell a "
                         "non-negative mix of centroid means; separable by cell), knn (mean of the k nearest "
                         "reference cells); auto = the benchmark's choice, a separable method from "
                         f"{AUTO_SEPARABLE_FROM_SPOTS:,} cells", choices=IMPUTE_METHODS)
    knn_k: int = option(10, "--knn-k", "reference cells averaged by --method knn", type=int, metavar="K")
    n_clusters: int | None = option(None, "--n-clusters", "number of reference centroids K (default: reference "
                                    "cells / cluster ratio)", type=int, metavar="K")
    cluster_ratio: int = option(10, "--cluster-ratio", "reference cells per centroid when K is not given", type=int)
    # every shared gene by default: on the dev set's one transcriptome-wide pair (HER2ST B1 from A1) mapping
    # on the 2,000 / 1,000 highest-variance genes cost 0.020 / 0.028 median r (0.063 / 0.055 vs 0.083) for a
    # ~6x / ~11x faster mapping there, which would put the default below plain Tangram on every gene (protocol:
    # imputation_training_genes, _b). A speed option for big transcriptome-wide pairs.
    n_top_genes: int | None = option(None, "--n-top-genes", "Tangram and kNN map on the N training genes of highest "
                                     "variance in the reference (faster on transcriptome-wide pairs, a little less "
                                     "accurate; 0 = every shared gene; NNLS always uses every one)",
                                     type=int, metavar="N", none_as=0)

    def __post_init__(self):
        super().__post_init__()
        _at_least("cluster_ratio", self.cluster_ratio, 1)
        _at_least("knn_k", self.knn_k, 1)
        if self.n_top_genes == 0:  # 0 and None both mean every shared gene; one spelling keeps records comparable
            object.__setattr__(self, "n_top_genes", None)
        _at_least("n_top_genes", self.n_top_genes, MIN_SHARED_GENES, " (or 0 for every shared gene)")
        _at_least("n_clusters", self.n_clusters, 2, " (or --method tangram_cells)")

    _methods = IMPUTE_METHODS


# ----------------------------------------------------------------------------- fine-tuning


@dataclass(frozen=True)
class FinetuneBudget(Config):
    """How much of a slide fine-tuning sees (``spgpt finetune``; ``spgpt domains`` has the same field)."""

    finetune_steps: int | None = finetune_steps_option()

    def __post_init__(self):
        _at_least("finetune_steps", self.finetune_steps, 1, " (or 0 / None for every patch of every epoch)")


# ------------------------------------------------------------------------------ domains


@dataclass(frozen=True)
class DomainsConfig(Config):
    """Spatial domains (``tl.domains``): genes, optional fine-tuning, embedding and clustering."""

    n_clusters: int | None = option(None, "--n-clusters", "number of domains K", type=int, metavar="K", group="k",
                                    required_group=True)
    resolution: float | None = option(None, "--resolution", "Leiden / Louvain resolution instead of a K",
                                      type=float, metavar="R", group="k")
    # The defaults below were chosen on the dev slides of bench/protocols/unseen_tissue.yaml only (mean
    # ARI over 7 slides x 5 seeds, bench/generalize.py; BENCHMARKS.md "Spatial domains on unseen tissue").
    # The features: with a model pretrained without the dev (and test) slides, the slide's expression alone
    # scored 0.457 against 0.442 / 0.433 / 0.368 with the embedding at a share of 0.25 / 0.5 / 0.75. The
    # shipped model, which saw the dev slides, had put fused ahead (0.477): pretraining on the tissue, not
    # the embedding, made that lead. --features fused puts the model back in.
    method: str = option("gmm-tied", "--method", "clustering (leiden and louvain search the resolution for K; "
                         "kmeans, gmm and gmm-tied (one covariance shared by the domains, mclust EEE) give "
                         "exactly K)", choices=CLUSTER_METHODS)
    features: str = option("expression", "--features", "what domains are found from: the slide's own "
                           "expression (PCA; no model needed), the model's embedding or both fused",
                           choices=DOMAIN_FEATURES)
    embedding_share: float = option(0.25, "--embedding-share", "share of the fused features' variance given to "
                                     "the embedding (with --features fused)", type=float, metavar="W")
    spatial_weight: float = option(0.8, "--spatial-weight", "share of the features' variance given to the mean of "
                                   "each spot's spatial neighbours (BANKSY-style; 0 = off)", type=float,
                                   metavar="LAMBDA")
    spatial_k: int = option(12, "--spatial-k", "spatial neighbours averaged for --spatial-weight", type=int,
                            metavar="K")
    n_pcs: int = option(10, "--n-pcs", "principal components of the combined features the domains are "
                        "clustered on (the expression block itself is 30 PCs)",
                        type=int)
    smooth_k: int = option(6, "--smooth-k", "spatial neighbours of the last smoothing step, the Potts prior's or "
                           "the majority vote's (0 = off)", type=int, metavar="K")
    # Chosen on dev by the rule pre-registered in the protocol (domains_spatial_prior): 0.512 mean ARI over 7
    # slides x 5 seeds against 0.479 for the majority vote, the best of beta 0.5 / 1 / 2 / 4
    # (docs/experiments/2026-12-06-domain-potts.md). On the test set it scored 0.267 against the vote's 0.289:
    # reported, not acted on (defaults move on dev numbers only).
    spatial_prior: float = option(0.5, "--spatial-prior", "strength (beta) of the Potts spatial prior that refines "
                                  "the domains over --smooth-k neighbours (a hidden Markov random field, as "
                                  "BayesSpace); 0 = a majority vote instead", type=float, metavar="BETA")
    # Chosen on dev by the rule pre-registered in the protocol (domains_consensus): 0.463 mean ARI against
    # 0.457 for one clustering, and a seed spread of the 7-slide mean of 0.004 against 0.031 (with the
    # PCs' later library-size fix 0.479 vs 0.476, 0.033 vs 0.036; test 0.289 vs 0.297, 0.007 vs 0.018).
    consensus: int = option(5, "--consensus", "cluster N times (seeds) each of two views of the slide - the "
                            "domain features and the same features averaged over each spot's 6 nearest spots - "
                            "and keep their consensus, which moves less with the seed (1 = one clustering of "
                            "the domain features; Leiden / Louvain always cluster once)", type=int, metavar="N")
    n_top_genes: int = option(DEFAULT_N_TOP_GENES, "--n-top-genes", "give the model the N most variable "
                                     "matched genes (0 = every matched gene)", type=int, metavar="N")
    # zero-shot by default: with the shipped model it scored higher on average than one epoch of the
    # paper's fine-tuning over 7 labelled slides x 2 seeds, in 40% of the time (BENCHMARKS.md)
    finetune_epochs: int = option(0, "--finetune-epochs", "fine-tune the model on the slide for this many epochs "
                                  "first, as the paper does (0 = zero-shot)", type=int, metavar="EPOCHS")
    finetune_steps: int | None = finetune_steps_option()
    finetune_lr: float = option(1e-3, "--lr", "fine-tuning learning rate", type=float)
    max_context: int = option(128, "--max-context", "expressed genes per cell while fine-tuning", type=int)
    batch_size: int = option(64, "--batch-size", "cells per embedding batch; lower it on a GPU out-of-memory error",
                             type=int)
    max_seq_len: int | None = option(None, "--max-seq-len", "at most this many tokens (<cls> + genes) per cell "
                                     "when embedding, below the model's context; lower it on a GPU out-of-memory "
                                     "error (default: the model's)", type=int, metavar="TOKENS")
    drop_empty: bool = option(False, "--drop-empty", "leave out spots that express no model gene (no domain) "
                              "instead of refusing the slide")
    seed: int = option(0, "--seed", "seed of binning ties, fine-tuning and clustering", type=int)

    def __post_init__(self):
        if self.method not in CLUSTER_METHODS:
            raise InputError(f"unknown clustering method {self.method!r}; use one of {', '.join(CLUSTER_METHODS)}")
        if self.features not in DOMAIN_FEATURES:
            raise InputError(f"features={self.features!r}: use one of {', '.join(DOMAIN_FEATURES)}")
        for name in ("embedding_share", "spatial_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name}={getattr(self, name)} must be between 0 and 1")
        _at_least("spatial_k", self.spatial_k, 1)
        _at_least("n_pcs", self.n_pcs, 2)
        _at_least("consensus", self.consensus, 1)
        _at_least("n_clusters", self.n_clusters, 1)
        if self.resolution is not None and not self.resolution > 0:
            raise InputError(f"resolution={self.resolution} (--resolution) must be a positive number (1.0 is a "
                             "usual start)")
        _at_least("smooth_k", self.smooth_k, 0)
        if not self.spatial_prior >= 0:
            raise InputError(f"spatial_prior={self.spatial_prior} (--spatial-prior) must be 0 (majority vote) or "
                             "positive (0.5 is the default)")
        _at_least("n_top_genes", self.n_top_genes, 0, " (0 = every matched gene)")
        _at_least("finetune_epochs", self.finetune_epochs, 0, ": pass 0 (zero-shot) or a positive number of epochs")
        if self.finetune_epochs and not self.uses_embedding:
            raise InputError(f"finetune_epochs={self.finetune_epochs} (--finetune-epochs) fine-tunes the model, but "
                             "domains from the expression alone (--features expression, the default) use no model; "
                             "add --features fused (or embedding) to find domains in the fine-tuned embedding")
        _at_least("finetune_steps", self.finetune_steps, 1, " (or 0 / None for every patch of every epoch)")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("max_context", self.max_context, 1)
        _at_least("max_seq_len", self.max_seq_len, 2)

    @property
    def uses_embedding(self) -> bool:
        """Whether the domains need the model (its embedding); the expression alone loads none."""
        return self.features != "expression"


# ---------------------------------------------------------------------------- integration

#: How each slide's features are corrected before they are joined: as they are, centred on the slide's own
#: mean, or centred and scaled to the slide's own unit total variance.
PER_SLIDE = ("none", "centre", "scale")


@dataclass(frozen=True)
class IntegrateConfig(Config):
    """Multi-slide integration (``tl.integrate``): genes, embedding, the joint features and optional clusters.

    The model embeds every slide zero-shot on the shared genes; the joint representation is built from that
    embedding, the slides' expression PCs (computed on all slides together) or both fused, each slide
    corrected on its own (``per_slide``), optionally beside each spot's own-slide neighbourhood, and reduced
    to ``n_pcs`` components."""

    n_clusters: int | None = option(None, "--n-clusters", "also cluster the joint representation into K clusters "
                                    "(Leiden)", type=int, metavar="K", group="k")
    resolution: float | None = option(None, "--resolution", "also cluster at this Leiden resolution", type=float,
                                      metavar="R", group="k")
    # defaults chosen on the dev group of bench/protocols/unseen_tissue.yaml (HER2ST A1 + B1 + C1, 5 seeds): the
    # highest mean AvgBIO (0.394; PCA 0.317, slide-centred PCA 0.253) among candidates with mean AvgBATCH >= 0.9
    # (0.901). bench/results/generalize_integration_dev.md
    features: str = option("fused", "--features", "what the slides are joined on: the model's embedding, the "
                           "expression PCs of the shared genes (computed on all slides together) or both fused",
                           choices=DOMAIN_FEATURES)
    embedding_share: float = option(0.25, "--embedding-share", "share of the fused features' variance given to "
                                     "the embedding (with --features fused)", type=float, metavar="W")
    per_slide: str = option("centre", "--per-slide", "correct each slide's features on their own: none, centre "
                            "(subtract the slide's mean) or scale (centre and scale the slide to unit total "
                            "variance)", choices=PER_SLIDE)
    spatial_weight: float = option(0.5, "--spatial-weight", "share of the features' variance given to the mean of "
                                   "each spot's spatial neighbours on its own slide (BANKSY-style; 0 = off, e.g. "
                                   "for inputs without coordinates)",
                                   type=float, metavar="LAMBDA")
    spatial_k: int = option(6, "--spatial-k", "spatial neighbours averaged for --spatial-weight", type=int,
                            metavar="K")
    n_pcs: int = option(30, "--n-pcs", "principal components of the expression and of the joint features",
                        type=int)
    n_top_genes: int | None = option(DEFAULT_N_TOP_GENES, "--n-top-genes", "embed every slide on the N most "
                                     "variable shared genes, chosen on all slides together (0 = every shared "
                                     "gene)", type=int, metavar="N", none_as=0)
    batch_size: int = option(64, "--batch-size", "cells per embedding batch; lower it on a GPU out-of-memory error",
                             type=int)
    max_seq_len: int | None = option(None, "--max-seq-len", "at most this many tokens (<cls> + genes) per cell "
                                     "when embedding, below the model's context; lower it on a GPU out-of-memory "
                                     "error (default: the model's)", type=int, metavar="TOKENS")
    seed: int = option(0, "--seed", "seed of binning ties, the PCAs and the clustering", type=int)

    def __post_init__(self):
        if self.features not in DOMAIN_FEATURES:
            raise InputError(f"features={self.features!r}: use one of {', '.join(DOMAIN_FEATURES)}")
        if self.per_slide not in PER_SLIDE:
            raise InputError(f"per_slide={self.per_slide!r}: use one of {', '.join(PER_SLIDE)}")
        for name in ("embedding_share", "spatial_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name}={getattr(self, name)} must be between 0 and 1")
        if self.n_clusters is not None and self.resolution is not None:
            raise InputError("give n_clusters or resolution, not both")
        if self.resolution is not None and not self.resolution > 0:
            raise InputError(f"resolution={self.resolution} (--resolution) must be a positive number")
        if self.n_top_genes == 0:  # 0 and None both mean every shared gene; one spelling keeps configs comparable
            object.__setattr__(self, "n_top_genes", None)
        _at_least("n_clusters", self.n_clusters, 1)
        _at_least("spatial_k", self.spatial_k, 1)
        _at_least("n_pcs", self.n_pcs, 2)
        _at_least("n_top_genes", self.n_top_genes, 1, " (0 = every shared gene)")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("max_seq_len", self.max_seq_len, 2)

    @property
    def uses_embedding(self) -> bool:
        return self.features != "expression"

    @property
    def is_raw_embedding(self) -> bool:
        """True when the joint representation is the model's embedding as returned (the paper's zero-shot path)."""
        return self.features == "embedding" and self.per_slide == "none" and self.spatial_weight <= 0


# -------------------------------------------------------------------------------- the CLI


def _renamed_action(old: str, new: str, dest: str):
    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"warning: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)
            setattr(namespace, dest, values)

    return Renamed


def add_options(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` (its declaration's name, help, type, choices and default)."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        m = f.metadata
        target = parser
        if m["group"]:
            if m["group"] not in groups:
                groups[m["group"]] = parser.add_mutually_exclusive_group(required=m["required_group"])
            target = groups[m["group"]]
        if isinstance(f.default, bool):
            action = "store_false" if m["negate"] else "store_true"
            target.add_argument(m["flag"], dest=f.name, action=action, help=m["help"])
            continue
        help_text = m["help"] + ("" if f.default is None else " (default: %(default)s)")
        target.add_argument(m["flag"], dest=f.name, type=m["type"], default=f.default, choices=m["choices"],
                            metavar=m["metavar"], help=help_text)
        if m["renamed"]:
            parser.add_argument(m["renamed"], dest=f.name, type=m["type"], default=argparse.SUPPRESS,
                                action=_renamed_action(m["renamed"], m["flag"], f.name), help=argparse.SUPPRESS)


def from_args(cls, args: argparse.Namespace, **extra):
    """The configuration the parsed flags describe (fields not on the command line keep their defaults)."""
    values = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            none_as = f.metadata["none_as"]
            values[f.name] = None if none_as is not None and value == none_as else value
    return cls(**{**values, **extra})


def to_flags(config, *, skip: tuple[str, ...] = (), always: tuple[str, ...] = ()) -> list[str]:
    """The CLI flags that reproduce ``config``: every field that differs from its default, and those in ``always``."""
    out: list[str] = []
    for f in fields(config):
        if f.name in skip:
            continue
        value = getattr(config, f.name)
        if value == f.default and f.name not in always:
            continue
        m = f.metadata
        if isinstance(f.default, bool):
            out.append(m["flag"])  # the flag flips the default
            continue
        if value is None:
            if m["none_as"] is not None:
                out += [m["flag"], str(m["none_as"])]
            continue
        out += [m["flag"], str(value)]
    return out
