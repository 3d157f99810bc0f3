"""Turn a patch of corpus cells into one training mini-batch (Methods 4.2.1, 4.6).

Per cell: the expressed genes are normalised by the corpus gene means (the slide level was applied
when the corpus was built), binned over all expressed genes, and at most ``max_context`` of them are
kept (a random subset, new every epoch). A generation ratio r from ``gen_ratios`` is drawn per
batch; r of the kept expressed genes become query genes (their bins are the targets) and the rest
the context, after ``<cls>``. As many non-expressed genes of the slide's panel (target 0) join the
queries, so queries are expressed : non-expressed = 1 : 1. With ``depth_augment`` (off by default, not
in the paper) some cells take their context from a binomially thinned copy of themselves while their
targets stay at full depth.

All randomness comes from ``np.random.default_rng([seed, epoch, step, rank...])`` and the hash-keyed
tokeniser, so a batch is a pure function of its position in the run (exact resume).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .corpus import Corpus
from ..pp.modality import modality_index
from ..pp.tokenize import tokenize_rows
from .sampler import Patch


def _thinned_context(X, slide, cfg, model_cfg, div, rng):
    """Depth augmentation (not in the paper): a ``depth_augment`` share of the cells get their
    counts binomially thinned to a random 10-100% of their depth (log-uniform). Returns the thinned
    cells tokenised like the full ones, and which rows were thinned. Slides whose stored values are not
    whole counts are never thinned. Draws nothing from ``rng`` when the augmentation is off, so runs
    without it are unchanged."""
    n = X.shape[0]
    share = float(cfg.depth_augment)
    unit = slide.count_unit if share > 0 else None
    if unit is None:
        return None, np.zeros(n, dtype=bool)
    thinned = rng.random(n) < share
    frac = np.exp(rng.uniform(np.log(0.1), 0.0, size=n))
    row = np.repeat(np.arange(n), np.diff(X.indptr))
    p = np.where(thinned[row], frac[row], 1.0)
    kept = rng.binomial(np.rint(X.data / unit).astype(np.int64), p).astype(np.float32)
    # every row is tokenised (un-thinned rows unchanged) so the hash-keyed tie-breaks see the batch's own
    # row indices; the thinned rows are the only ones read
    Xt = sp.csr_matrix((kept * unit, X.indices.copy(), X.indptr.copy()), shape=X.shape)
    Xt.eliminate_zeros()
    tok = tokenize_rows(Xt, np.arange(X.shape[1]), div, first_cell=0, n_bins=model_cfg.n_bins,
                        max_genes=cfg.max_context, seed=int(rng.integers(2**31)))
    return tok, thinned


@dataclass
class Batch:
    genes: torch.Tensor  # (B, 1 + C) context with <cls> first
    values: torch.Tensor
    pad: torch.Tensor
    query_genes: torch.Tensor  # (B, Q)
    query_pad: torch.Tensor
    target: torch.Tensor  # (B, Q) bins of query genes, 0 for non-expressed
    modality: torch.Tensor  # (B,)
    coords: torch.Tensor | None  # (B, 2) or None when the slide has no coordinates
    n_tokens: int

    def to(self, device) -> "Batch":
        move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**move)


def make_batch(corpus: Corpus, patch: Patch, cfg, model_cfg, gene_means: np.ndarray, rng_key: list[int]) -> Batch:
    """``gene_means`` (vocabulary-indexed, NaN = unknown -> 1) is the second normalisation level."""
    slide = corpus.slides[patch.slide]
    rng = np.random.default_rng(rng_key)
    cells = np.asarray(patch.cells)
    rows_g, rows_v, ptr = [], [], [0]
    for c in cells:
        g, v = slide.cell(int(c))
        rows_g.append(np.asarray(g, dtype=np.int64))
        rows_v.append(np.asarray(v, dtype=np.float32))
        ptr.append(ptr[-1] + len(g))
    V = len(corpus.vocab)
    X = sp.csr_matrix((np.concatenate(rows_v), np.concatenate(rows_g), np.asarray(ptr)), shape=(len(cells), V))
    div = np.where(np.isfinite(gene_means) & (gene_means > 0), gene_means, 1.0)
    # tie-breaks and gene subsampling: a fresh seed per batch drawn from the batch's own generator
    tok = tokenize_rows(X, np.arange(V), div, first_cell=0, n_bins=model_cfg.n_bins,
                        max_genes=cfg.max_context, seed=int(rng.integers(2**31)))
    ratio = float(rng.choice(cfg.gen_ratios))
    thin_tok, thinned = _thinned_context(X, slide, cfg, model_cfg, div, rng)
    panel = np.asarray(slide.panel, dtype=np.int64)
    ctx, qry = [], []
    for r in range(len(cells)):
        a, b = tok.offsets[r], tok.offsets[r + 1]
        g, v = tok.genes[a:b], tok.values[a:b]
        E = len(g)
        n_q = int(round(ratio * E))
        n_q = min(max(n_q, 1), E - 1) if E >= 2 else 0
        perm = rng.permutation(E)
        q_idx, c_idx = perm[:n_q], perm[n_q:]
        c_genes, c_vals = g[c_idx], v[c_idx]
        if thinned[r]:
            # denoising: the context comes from the thinned cell, the targets stay the full-depth bins
            ta, tb = thin_tok.offsets[r], thin_tok.offsets[r + 1]
            tg, tv = thin_tok.genes[ta:tb], thin_tok.values[ta:tb]
            ok = np.flatnonzero(~np.isin(tg, g[q_idx]))
            if len(ok):
                ok = rng.permutation(ok)[: max(E - n_q, 1)]
                c_genes, c_vals = tg[ok], tv[ok]
        # genes of the panel this cell does not express at all (sorted, as np.setdiff1d gives them, but
        # a mask over the panel: setdiff1d's sorting was a third of the loader's time)
        unexpressed = np.ones(len(panel), dtype=bool)
        unexpressed[slide.panel_index[rows_g[r]]] = False
        zeros = panel[unexpressed]
        n_z = min(n_q if n_q else 1, len(zeros))
        z = rng.choice(zeros, size=n_z, replace=False) if n_z else np.zeros(0, np.int64)
        ctx.append((c_genes, c_vals))
        qry.append((np.concatenate([g[q_idx], z]), np.concatenate([v[q_idx], np.zeros(len(z), np.float32)])))
    B = len(cells)
    C = max(len(c[0]) for c in ctx) + 1
    Q = max(1, max(len(q[0]) for q in qry))
    genes = np.full((B, C), model_cfg.pad_token_id, dtype=np.int64)
    values = np.full((B, C), model_cfg.pad_value, dtype=np.float32)
    genes[:, 0] = model_cfg.cls_token_id
    qg = np.full((B, Q), model_cfg.pad_token_id, dtype=np.int64)
    qt = np.zeros((B, Q), dtype=np.float32)
    cpad = np.ones((B, C), dtype=bool)
    qpad = np.ones((B, Q), dtype=bool)
    cpad[:, 0] = False
    for r, ((cg, cv), (g_, t_)) in enumerate(zip(ctx, qry)):
        genes[r, 1 : 1 + len(cg)], values[r, 1 : 1 + len(cg)], cpad[r, 1 : 1 + len(cg)] = cg, cv, False
        qg[r, : len(g_)], qt[r, : len(g_)], qpad[r, : len(g_)] = g_, t_, False
    mod = modality_index(slide.modality)
    coords = None if slide.coords is None else torch.from_numpy(np.asarray(slide.coords)[cells].astype(np.float32))
    return Batch(torch.from_numpy(genes), torch.from_numpy(values), torch.from_numpy(cpad), torch.from_numpy(qg),
                 torch.from_numpy(qpad), torch.from_numpy(qt), torch.full((B,), mod, dtype=torch.long), coords,
                 int((~cpad).sum() + (~qpad).sum()))


class EpochBatches(torch.utils.data.Dataset):
    """One rank's micro-batches of one epoch: batch i is ``make_batch`` of patch i with the key
    ``[seed, epoch, i * world + rank]``. A pure function of i, so data-loader worker processes that
    build batches ahead of the model change nothing in the run."""

    def __init__(self, corpus: Corpus, patches: list[Patch], cfg, model_cfg, gene_means: np.ndarray, *, seed: int,
                 epoch: int, rank: int = 0, world: int = 1):
        self.corpus, self.patches, self.cfg, self.model_cfg, self.gene_means = corpus, patches, cfg, model_cfg, gene_means
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> Batch:
        return make_batch(self.corpus, self.patches[i], self.cfg, self.model_cfg, self.gene_means,
                          [self.seed, self.epoch, i * self.world + self.rank])


def batch_stream(batches: EpochBatches, first: int = 0, num_workers: int = 0) -> Iterator[Batch]:
    """Batches ``first..`` in order: built in this process (0 workers) or by ``num_workers`` processes
    ahead of the model (torch's DataLoader; each worker is one more CPU core feeding the GPU)."""
    if num_workers == 0:
        return (batches[i] for i in range(first, len(batches)))
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(first, len(batches)),
                                         num_workers=num_workers, prefetch_factor=4)
    return iter(loader)
