"""``tl.embed``: zero-shot spot / cell embeddings into ``obsm``, streamed over a slide with bounded memory.

Pipeline per chunk of rows (never the whole slide): CSR rows -> two-level normalisation ->
per-cell binning -> deterministic subsampling to the model's context -> length-bucketed batches
(cells of similar length together, so almost no padding is computed) -> encoder under
``torch.inference_mode`` (bf16 autocast on CUDA, fp32 on CPU) -> final-layer ``<cls>`` state,
L2-normalised, as the reference ``embed_data`` returns it.

Two passes read the data: one for the slide statistics (and input checks), one for the model.
Results are independent of ``batch_size`` and ``chunk_size`` up to float rounding, because every
random choice is keyed by (seed, cell index, gene).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checkpoint import SpGPT, load_model
from ..device import choose_device, out_of_memory, resolve_device
from ..errors import InputError
from ..io import check_matrix, iter_row_chunks
from ..pp.counts import with_counts
from ..pp.hvg import DEFAULT_N_TOP_GENES, highly_variable_mask
from ..pp.modality import Modality, resolve_modality
from ..pp.tokenize import SlideStats, gene_divisors, length_buckets, pad_batch, tokenize_rows
from ..pp.vocab import GeneMatch, resolve_genes
from ..progress import Progress, ensure_progress
from ..records import run_record

log = logging.getLogger(__name__)


@dataclass
class PreparedSlide:
    """Everything about a slide that tokenisation needs, computed in one streaming pass."""

    match: GeneMatch
    modality: Modality
    modality_reason: str
    stats: SlideStats
    divisors: np.ndarray
    norm_info: dict
    keep_cells: np.ndarray  # bool per cell: has at least one expressed matched gene
    summary: dict = field(default_factory=dict)


def prepare_slide(adata, model: SpGPT, *, gene_col=None, modality=None, chunk_size=4096, empty="error",
                  min_genes=5, check=True, n_top_genes: int | None = None) -> PreparedSlide:
    """Match genes, check values, compute slide statistics and decide what to do with empty cells.

    ``n_top_genes``: give the model only this many highly variable matched genes (see ``hvg``);
    None / 0, or a panel with no more matched genes than that, uses every matched gene."""
    if empty not in ("error", "drop"):
        raise InputError(f"empty={empty!r}; use 'error' or 'drop'")
    match = resolve_genes(adata, model.vocab, gene_col=gene_col, min_genes=min_genes)
    log.info("%s", match.report())
    if check:
        check_matrix(adata, chunk_size=chunk_size)
    n_hvg = None
    if n_top_genes:
        hv = highly_variable_mask(adata, n_top_genes, genes=match.vocab_ids >= 0, chunk_size=chunk_size)
        if hv is not None:
            match = dataclasses.replace(match, vocab_ids=np.where(hv, match.vocab_ids, -1))
            n_hvg = int(hv.sum())
            log.info("using the %d most variable of the %d matched genes", n_hvg, match.n_matched)
    mod, reason = resolve_modality(adata, modality)
    used = match.vocab_ids >= 0
    stats = SlideStats.from_chunks(iter_row_chunks(adata, chunk_size), adata.n_vars, used)
    divisors, norm_info = gene_divisors(stats, match.vocab_ids, model.gene_stats)
    keep = stats.cell_n_expressed > 0
    n_empty = int((~keep).sum())
    if n_empty and empty == "error":
        names = ", ".join(map(str, adata.obs_names[~keep][:5]))
        raise InputError(
            f"{n_empty} of {adata.n_obs} cells express none of the {int(used.sum())} genes given to the model "
            f"(e.g. {names}); "
            "an embedding of an empty cell is meaningless. Remove them first (e.g. sc.pp.filter_cells(adata, "
            "min_genes=1)) or pass --drop-empty (empty=\"drop\") to leave them out of the output"
        )
    summary = {"n_cells": int(adata.n_obs), "n_empty_dropped": n_empty,
               "n_genes_used": n_hvg if n_hvg is not None else int(match.n_matched),
               "highly_variable_genes": n_top_genes if n_hvg is not None else "all matched genes",
               "median_expressed_genes": float(np.median(stats.cell_n_expressed)) if stats.n_cells else 0.0}
    return PreparedSlide(match, mod, reason, stats, divisors, norm_info, keep, summary)


PRECISIONS = ("auto", "bf16", "fp32")


def _autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA ("auto"), or as asked: "bf16" also on the CPU (to compare), "fp32" never."""
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def context_genes(model_max_seq_len: int, max_seq_len: int | None = None) -> int:
    """Expressed genes per cell given to the model: its context (``max_seq_len`` tokens with ``<cls>``),
    or fewer when the user lowers ``max_seq_len`` to save memory (attention grows with its square)."""
    if max_seq_len is not None and max_seq_len < 2:
        raise InputError(f"max_seq_len={max_seq_len} (--max-seq-len) must be >= 2: <cls> and at least one gene")
    return min(model_max_seq_len, max_seq_len or model_max_seq_len) - 1


def embed_arrays(adata, model: SpGPT, prepared: PreparedSlide, *, batch_size: int = 64, chunk_size: int = 4096,
                 seed: int = 0, layer: int = -1, max_seq_len: int | None = None, rows: tuple[int, int] | None = None,
                 precision: str = "auto", progress: Progress | None = None) -> np.ndarray:
    """Embeddings (n_cells, d_model) float32 for every cell; rows of dropped empty cells are NaN.

    ``rows=(first, last)``: embed only those cells (one rank's share under torchrun) and return their
    ``last - first`` rows; every random choice is keyed by the cell's index in the whole slide, so the
    share's rows equal those of a whole-slide run. ``max_seq_len`` caps the tokens per cell below the
    model's context (memory). ``precision``: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16", "fp32".

    The spot embedding is the encoder's ``<cls>`` state and does not depend on the modality (Eq. 6
    concatenates the modality embedding only for the decoders). ``layer``: read it after that
    transformer layer (1-based) instead of the final one (-1, the paper's choice and the default;
    the earlier layers were measured in docs/experiments/default-model.md and are not better)."""
    cfg = model.config
    device = model.device
    progress = ensure_progress(progress)
    first, last = rows if rows is not None else (0, adata.n_obs)
    out = np.full((last - first, cfg.d_model), np.nan, dtype=np.float32)
    max_genes = context_genes(cfg.max_seq_len, max_seq_len)
    max_tokens = batch_size * (max_genes + 1)
    max_cells = 4 * batch_size  # short cells (small panels) are packed up to the same token budget
    was_training = model.module.training
    model.module.eval()
    progress.start(int(prepared.keep_cells[first:last].sum()), "embedding")
    try:
        with torch.inference_mode(), _autocast(device, precision):
            for start, stop, X in iter_row_chunks(adata, chunk_size, first, last):
                keep = prepared.keep_cells[start:stop]
                tok = tokenize_rows(X, prepared.match.vocab_ids, prepared.divisors, first_cell=start,
                                    n_bins=cfg.n_bins, max_genes=max_genes, seed=seed)
                cells = np.flatnonzero(keep)
                for idx in length_buckets(tok.lengths[cells], max_cells, max_tokens):
                    progress.check()
                    batch = cells[idx]
                    genes, values, pad = pad_batch(tok, batch, cfg.cls_token_id, cfg.pad_token_id, cfg.pad_value)
                    h = model.module.spot_embedding(
                        torch.from_numpy(genes).to(device), torch.from_numpy(values).to(device),
                        torch.from_numpy(pad).to(device), layer=layer,
                    )
                    h = torch.nn.functional.normalize(h.float(), dim=1)
                    out[start - first + batch] = h.cpu().numpy()
                    progress.update(len(batch))
    except torch.OutOfMemoryError as e:  # CUDA: name the options that make it fit instead of torch's dump
        raise out_of_memory(f"embedding batches of up to {max_tokens:,} tokens", device,
                            f"--batch-size (now {batch_size}) or --max-seq-len (now {max_genes + 1} tokens per cell)"
                            ) from e
    finally:
        progress.close()
        model.module.train(was_training)
    return out


def compute_embedding(adata, model: SpGPT, *, gene_col=None, modality=None, batch_size=64, chunk_size=4096, seed=0,
          empty="error", device=None, n_top_genes: int | None = None, layer: int = -1, max_seq_len: int | None = None,
          progress: Progress | None = None) -> tuple[np.ndarray, PreparedSlide]:
    """Prepare and embed a slide. Returns (embeddings with NaN rows for dropped cells, prepared).

    ``n_top_genes`` restricts the model's input to that many highly variable genes (None: all)."""
    if batch_size < 1 or chunk_size < 1:
        raise InputError(f"batch_size and chunk_size must be >= 1 (got {batch_size}, {chunk_size})")
    context_genes(model.config.max_seq_len, max_seq_len)  # checked before the slide is read
    try:  # checked before the slide is prepared, with the network's own rule
        model.module.layers_to_run(layer)
    except ValueError as e:
        raise InputError(str(e)) from None
    if device is not None:
        model.to(resolve_device(device))
    prepared = prepare_slide(adata, model, gene_col=gene_col, modality=modality, chunk_size=chunk_size, empty=empty,
                             n_top_genes=n_top_genes)
    emb = embed_arrays(adata, model, prepared, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                       layer=layer, max_seq_len=max_seq_len, progress=progress)
    return emb, prepared


# ------------------------------------------------------------------------ the verb


def embed(adata, model="default", *, key_added: str = "X_spgpt", gene_col: str | None = None,
          modality: str | None = None, n_top_genes: int | None = DEFAULT_N_TOP_GENES, batch_size: int = 64,
          max_seq_len: int | None = None, chunk_size: int = 4096, seed: int = 0, device: str | None = None,
          empty: str = "error", counts_layer: str | None = None, progress: Progress | None = None):
    """Zero-shot spot embeddings into ``adata.obsm[key_added]`` (L2-normalised ``<cls>`` states).

    The model sees the ``n_top_genes`` (default 3,000) most variable matched genes, as in scGPT's
    tutorials and like the PCA baseline; panels with fewer genes are used whole, and
    ``n_top_genes=None`` (CLI ``--n-top-genes 0``) gives the model every matched gene.

    ``model`` is an :class:`~spgpt_core.SpGPT` or anything :func:`~spgpt_core.load_model` takes.
    With ``empty="drop"`` cells that express no vocabulary gene get NaN rows and
    ``obs[key_added + '_empty']`` marks them. ``counts_layer`` names the layer with the raw counts
    (``'raw'``: ``adata.raw``) when ``X`` holds normalised values. Memory: ``batch_size`` cells per
    batch at full context, ``max_seq_len`` tokens per cell at most (default: the model's context).
    Returns ``adata`` (modified in place).
    """
    if adata.is_view and adata.isbacked:
        raise InputError("cannot store results in a view of a backed AnnData; embed the whole backed object, or "
                         "call .to_memory() on the subset first")
    model = load_model(model, device=choose_device(device, model))
    emb, prep = compute_embedding(with_counts(adata, counts_layer), model, gene_col=gene_col, modality=modality,
                                  batch_size=batch_size, chunk_size=chunk_size, seed=seed, empty=empty,
                                  n_top_genes=n_top_genes, max_seq_len=max_seq_len, progress=progress)
    store_embedding(adata, emb, prep, model, key_added=key_added, gene_col=gene_col, counts_layer=counts_layer,
                    n_top_genes=n_top_genes, batch_size=batch_size, max_seq_len=max_seq_len, seed=seed, empty=empty)
    return adata


def store_embedding(adata, emb: np.ndarray, prep: PreparedSlide, model: SpGPT, *, key_added: str, gene_col,
                    counts_layer, n_top_genes, batch_size: int, max_seq_len: int | None, seed: int, empty: str) -> None:
    """``obsm[key_added]``, the empty-cell flags and the run record, as :func:`embed` leaves them (also
    used by the sharded ``spgpt embed`` under torchrun, so both runs record the same)."""
    adata.obsm[key_added] = emb
    if (~prep.keep_cells).any():
        adata.obs[f"{key_added}_empty"] = ~prep.keep_cells
    adata.uns[key_added] = run_record(
        {"gene_col": gene_col, "counts_layer": counts_layer, "n_top_genes": n_top_genes, "modality": prep.modality.name,
         "modality_reason": prep.modality_reason, "batch_size": batch_size, "max_seq_len": max_seq_len,
         "seed": seed, "device": str(model.device), "empty": empty},
        model=model, gene_match=prep.match.to_dict(), normalization=prep.norm_info, summary=prep.summary)
