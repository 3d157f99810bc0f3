"""The last step of a clustering: labels smoothed over each spot's nearest spatial neighbours.

* ``potts_labels``: a Potts prior (a hidden Markov random field, as BayesSpace, BASS and Giotto's HMRF),
  mean-field EM on the features the domains were clustered in; the default of ``tl.domains``, chosen on
  the dev slides of bench/protocols/unseen_tissue.yaml (docs/experiments/2026-12-06-domain-potts.md);
* ``smooth_labels``: the majority vote of the spot and its neighbours (the SpaGCN / scGPT-spatial
  ``refine`` idea).

Both work on a kNN graph of the coordinates, so hexagonal, square and irregular layouts alike, and are
linear in spots.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError
from ..neighbors import knn_indices
from ..progress import Progress, ensure_progress

log = logging.getLogger(__name__)

#: Rows of the features read (and converted to float64) at a time.
CHUNK = 65_536


def smooth_labels(labels: np.ndarray, coords: np.ndarray, k: int = 6) -> np.ndarray:
    """Majority vote over each spot and its k nearest spatial neighbours (ties keep the own label)."""
    labels = np.asarray(labels)
    codes, inv = np.unique(labels, return_inverse=True)
    k = min(k, len(labels) - 1)
    idx = np.column_stack([np.arange(len(labels)), knn_indices(coords, k)])
    votes = np.zeros((len(labels), len(codes)), dtype=np.int32)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k + 1), inv[idx].ravel()), 1)
    best = votes.argmax(1)
    own_ok = votes[np.arange(len(labels)), inv] == votes.max(1)
    return codes[np.where(own_ok, inv, best)]


def potts_labels(emb: np.ndarray, labels: np.ndarray, coords: np.ndarray, *, beta: float, k: int = 6,
                 max_iter: int = 20, tol: float = 1e-3, chunk: int = CHUNK,
                 progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """Domains under a Potts spatial prior (a hidden Markov random field, as BayesSpace, BASS and Giotto's
    HMRF), refined from ``labels`` by mean-field EM: each domain a Gaussian over ``emb`` with one shared
    (tied) covariance, and the log-probability of domain c at a spot raised by ``beta`` times the summed
    probability of c over its ``k`` nearest spots. ``labels`` only start the first M-step; later updates
    are damped by half (synchronous mean-field updates can oscillate). The loop stops when the spots'
    probabilities move by less than ``tol`` on average, or after ``max_iter`` rounds.

    Deterministic (no seed) and linear in spots and in dimensions: with one shared covariance the
    quadratic term of the Gaussian is the same for every domain, so a spot's log-odds need only
    ``x' S^-1 mu_c``. ``emb`` is read in chunks of ``chunk`` rows and never copied; memory is a few
    (spots x K) arrays."""
    progress = ensure_progress(progress)
    n, d = emb.shape
    codes, inv = np.unique(labels, return_inverse=True)
    K = len(codes)
    nb = knn_indices(coords, min(k, n - 1))
    rows = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]

    def block(s, e):
        return np.asarray(emb[s:e], dtype=np.float64)

    q = np.zeros((n, K))
    q[np.arange(n), inv] = 1.0
    XtX, qX = np.zeros((d, d)), np.zeros((K, d))
    for s, e in rows:
        X = block(s, e)
        XtX += X.T @ X
        qX += q[s:e].T @ X
    current = inv
    it, changed = 0, 0.0
    for it in range(1, max_iter + 1):
        progress.check()
        Nk = q.sum(axis=0) + 1e-10
        mu = qX / Nk[:, None]
        # tied covariance: sum_k sum_i q_ik (x_i - mu_k)(x_i - mu_k)' = X'X - sum_k N_k mu_k mu_k'
        cov = (XtX - (mu.T * Nk) @ mu) / n + 1e-4 * np.eye(d)  # the mixtures' reg_covar
        W = np.linalg.solve(cov, mu.T)  # d x K
        bias = -0.5 * np.einsum("dk,kd->k", W, mu) + np.log(Nk / n)
        # one pass: E-step from the previous round's q (synchronous), the damped update, and the next
        # M-step's sums, so each chunk of features is read once a round
        nxt_q, qX, moved = np.empty_like(q), np.zeros((K, d)), 0.0
        for s, e in rows:
            X = block(s, e)
            logp = X @ W + bias + beta * q[nb[s:e]].sum(axis=1)
            logp -= logp.max(axis=1, keepdims=True)
            p = np.exp(logp)
            p /= p.sum(axis=1, keepdims=True)
            moved += float(np.abs(p - q[s:e]).sum())
            nxt_q[s:e] = p if it == 1 else 0.5 * q[s:e] + 0.5 * p
            qX += nxt_q[s:e].T @ X
        q = nxt_q
        moved /= 2 * n
        nxt = q.argmax(axis=1)
        changed = float(np.mean(nxt != current))
        current = nxt
        if it > 1 and moved < tol:
            break
    return codes[current], {"smoothing": "potts", "spatial_prior": float(beta), "potts_k": int(min(k, n - 1)),
                            "potts_iterations": it, "potts_last_change": round(changed, 5),
                            "potts_vs_start": round(float(np.mean(current != inv)), 4)}


def spatial_smoothing(labels: np.ndarray, coords: np.ndarray | None, emb: np.ndarray, *, smooth_k: int,
                      spatial_prior: float = 0.0, progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """The last step of a clustering: with ``smooth_k`` neighbours, the Potts prior of strength
    ``spatial_prior`` on ``emb`` (:func:`potts_labels`) or, at 0, the majority vote (:func:`smooth_labels`).

    The Potts prior refits one Gaussian per domain. Where the domains are not Gaussian in ``emb`` (Leiden
    communities of a high-dimensional embedding, say) the refit can absorb a whole domain into another;
    the K asked for would then be lost, so the majority vote is used instead and the record says why
    (``potts_fallback``). On the 14 labelled protocol slides no domain was lost."""
    if not smooth_k:
        return labels, {}
    progress = ensure_progress(progress)
    info: dict = {"smoothing": "majority vote", "spatial_prior": 0.0}
    if spatial_prior > 0:
        progress.start(0, f"Potts spatial prior over {smooth_k} neighbours")
        refined, potts = potts_labels(emb, labels, coords, beta=spatial_prior, k=smooth_k, progress=progress)
        before, after = len(np.unique(labels)), len(np.unique(refined))
        if after == before:
            return refined, potts
        why = f"the Potts prior merged {before} domains into {after}; the majority vote was used instead"
        log.warning("%s (pass --spatial-prior 0 to skip the prior)", why)
        info = {**potts, "smoothing": "majority vote", "potts_fallback": why}
    progress.start(0, f"smoothing labels over {smooth_k} spatial neighbours")
    return smooth_labels(labels, coords, smooth_k), info


def check_smoothing(smooth_k: int, spatial_prior: float, coords) -> None:
    if smooth_k and coords is None:
        raise InputError("spatial smoothing needs coordinates (obsm['spatial']); set smooth_k=0 or add them")
    if not spatial_prior >= 0:
        raise InputError(f"spatial_prior={spatial_prior} (--spatial-prior) must be 0 (majority vote) or positive")
