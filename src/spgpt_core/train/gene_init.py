"""Gene-embedding initialisation from the corpus' gene co-expression (for pretraining from scratch).

The paper continues pretraining scGPT-human, whose gene embeddings already place co-expressed genes
near each other (learned from 33M cells). Started from random weights, a small CPU model spends most
of its budget rediscovering that structure. ``coexpression_embeddings`` gives it a head start: the
top singular vectors of the corpus' standardised expression matrix, i.e. each gene's loadings on
the corpus' principal components, the same structure a PCA of a slide uses.

Matrix: for every training cell, log1p of the two-level normalised value (slide-normalised value /
corpus gene mean, what the model bins), standardised per gene *within each slide* (so technology and
slide offsets do not dominate, and genes outside a slide's panel contribute nothing there). The
centring and scaling are applied implicitly, so the matrix stays sparse; a truncated SVD (ARPACK)
gives the loadings. Rows are then ``loadings x singular values``, scaled so that a typical corpus
gene's co-expression part is ``signal_ratio`` times the norm of the random part it is added to.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, svds

from ..progress import Progress, ensure_progress

log = logging.getLogger(__name__)


def _slide_block(slide, gene_index: np.ndarray, means: np.ndarray):
    """(X / sigma as CSR, mu / sigma) for the training cells of one slide, on the compact gene index."""
    cells = np.flatnonzero(np.asarray(slide.split) == 0)
    if len(cells) < 2:
        return None
    indptr = np.asarray(slide.indptr)
    genes = np.asarray(slide.genes)
    values = np.asarray(slide.values, dtype=np.float64)
    X = sp.csr_matrix((values, genes, indptr), shape=(len(indptr) - 1, len(means)))[cells]
    X = X[:, gene_index].tocsr()
    X.data = np.log1p(X.data / means[gene_index][X.indices])
    mu = np.asarray(X.mean(axis=0)).ravel()
    sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(sq - mu**2, 0.0))
    inv = np.where(sd > 1e-8, 1.0 / np.maximum(sd, 1e-8), 0.0)
    X = (X @ sp.diags(inv)).tocsr()
    return X, mu * inv


def coexpression_embeddings(corpus, d_model: int, *, progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary ids, loadings (n, d_model)) for the corpus genes with a finite corpus mean."""
    progress = ensure_progress(progress)
    means = np.asarray(corpus.gene_stats.means, dtype=np.float64)
    gene_ids = np.flatnonzero(np.isfinite(means) & (means > 0))
    n_genes = len(gene_ids)
    blocks = []
    progress.start(len(corpus.slides), "gene co-expression")
    try:
        for slide in corpus.slides:
            b = _slide_block(slide, gene_ids, means)
            if b is not None:
                blocks.append(b)
            progress.update(1)
    finally:
        progress.close()
    X = sp.vstack([b[0] for b in blocks]).tocsr()
    offsets = np.vstack([b[1] for b in blocks])  # (n_slides, n_genes)
    sizes = np.array([b[0].shape[0] for b in blocks])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    XT = X.T.tocsr()

    def matvec(v):
        v = np.asarray(v).reshape(n_genes, -1)
        out = X @ v
        shift = offsets @ v  # (n_slides, k)
        return out - np.repeat(shift, sizes, axis=0)

    def rmatvec(u):
        u = np.asarray(u).reshape(X.shape[0], -1)
        sums = np.add.reduceat(u, bounds[:-1], axis=0)  # (n_slides, k)
        return XT @ u - offsets.T @ sums

    op = LinearOperator((X.shape[0], n_genes), matvec=matvec, rmatvec=rmatvec,
                        matmat=matvec, rmatmat=rmatvec, dtype=np.float64)
    k = min(d_model, n_genes - 1, X.shape[0] - 1)
    log.info("co-expression SVD: %d cells x %d genes, %d components", X.shape[0], n_genes, k)
    _, s, vt = svds(op, k=k, random_state=0)
    order = np.argsort(s)[::-1]
    load = (vt[order].T * s[order]).astype(np.float64)
    if k < d_model:
        load = np.hstack([load, np.zeros((n_genes, d_model - k))])
    return gene_ids, load


def init_gene_embeddings(net, corpus, *, signal_ratio: float = 2.0, progress: Progress | None = None) -> dict:
    """Add co-expression loadings to ``net``'s (randomly initialised) gene-embedding rows in place."""
    weight = net.gene_encoder.embedding.weight
    ids, load = coexpression_embeddings(corpus, weight.shape[1], progress=progress)
    with torch.no_grad():
        rand_norm = float(weight[torch.as_tensor(ids)].norm(dim=1).median())
        norms = np.linalg.norm(load, axis=1)
        scale = signal_ratio * rand_norm / max(float(np.median(norms[norms > 0])), 1e-12)
        weight[torch.as_tensor(ids)] += torch.as_tensor(load * scale, dtype=weight.dtype)
    return {"gene_init": "coexpression", "genes": int(len(ids)), "signal_ratio": signal_ratio}
