"""Which matrix holds a slide's counts, and a check that it does not look log-normalised.

The model's preprocessing (two-level mean normalisation, per-cell binning) and the Tangram-style
mapping (``log1p`` of counts per 10,000) expect raw counts, or at least non-negative values on a
linear scale. Many AnnData files users bring keep ``log1p``-normalised values in ``X`` and the
counts in a layer (``layers['counts']``) or in ``.raw``. On such input the results degrade
quietly (STARmap mPFC BZ5, default model, best of the four clusterings of ``bench/tasks.py``:
0.437 ARI from counts, 0.345 from log-normalised X), so:

* :func:`with_counts` gives an AnnData whose ``X`` is the chosen layer (``'raw'``: ``adata.raw``),
  sharing ``obs`` / ``obsm`` with the original; tools compute on it and store results on the
  original, whose ``X`` is never replaced;
* :func:`log_scale_warning` says when ``X`` looks log-normalised and which layer to pass instead.
  It is a warning, not an error: normalised imaging data are legitimately non-integer.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..errors import InputError

log = logging.getLogger(__name__)

#: layer names that usually hold raw counts, in order of preference (matched case-insensitively)
COUNT_LAYER_NAMES = ("counts", "raw_counts", "count", "umi", "umis", "raw")

_SAMPLE_ROWS = 2000


def _sample(matrix, n_obs: int) -> np.ndarray:
    """The stored (non-zero) values of the first rows of a dense, sparse or backed matrix."""
    block = matrix[: min(n_obs, _SAMPLE_ROWS)]
    if sp.issparse(block):
        return np.asarray(block.data, dtype=np.float64)
    if hasattr(block, "to_memory"):  # backed sparse dataset
        return np.asarray(block.to_memory().data, dtype=np.float64)
    block = np.asarray(block, dtype=np.float64)
    return block[block != 0]


def _looks_like_counts(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return v.size > 0 and bool(np.all(v >= 0)) and float(np.mean(v == np.round(v))) > 0.99


def count_layers(adata) -> list[str]:
    """Layers (and ``'raw'``) that look like raw counts, conventional names first."""
    candidates = [(name, lambda name=name: adata.layers[name]) for name in adata.layers.keys()]
    if adata.raw is not None:
        candidates.append(("raw", lambda: adata.raw.X))
    found = []
    for name, matrix in candidates:
        try:
            if _looks_like_counts(_sample(matrix(), adata.n_obs)):
                found.append(str(name))
        except Exception:  # noqa: BLE001 - an unreadable layer is not a candidate
            continue
    rank = {n: i for i, n in enumerate(COUNT_LAYER_NAMES)}
    return sorted(found, key=lambda n: rank.get(n.lower(), len(rank)))


def log_normalised_reason(adata, source: str = "X") -> str | None:
    """Why ``adata.X`` looks log-normalised (not integer counts, and ``uns['log1p']`` set, for ``source``
    X, or mostly non-integer values all below 30); None when it looks like counts or normalised values."""
    X = adata.X
    if X is None or adata.n_obs == 0:
        return None
    values = _sample(X, adata.n_obs)
    if values.size == 0 or _looks_like_counts(values):  # counts put back into X keep scanpy's uns['log1p']
        return None
    if source == "X" and "log1p" in adata.uns:  # scanpy's mark; it says nothing about the layers
        return "uns['log1p'] is set"
    non_integer = float(np.mean(values != np.round(values)))
    if non_integer > 0.5 and float(values.max()) < 30:
        return f"{non_integer:.0%} of its values are non-integer, the largest {values.max():.1f}"
    return None


def log_scale_warning(adata, what: str = "slide", option: str = "--counts-layer", source: str = "X") -> str | None:
    """A message when ``adata.X`` looks log-normalised (:func:`log_normalised_reason`), naming the layer
    to use instead; None when it does not."""
    why = log_normalised_reason(adata, source)
    if why is None:
        return None
    layers = count_layers(adata)
    py = option.lstrip("-").replace("-", "_")
    how = (lambda v: f"{option} {v} (Python: {py}={v!r})") if option.startswith("--") else (lambda v: f"{py}={v!r}")
    fix = (f"pass {how(layers[0])}; count-like: {', '.join(layers)}" if layers
           else f"pass the raw counts (in X, or in a layer named with {how('NAME')})")
    return (f"the {what}'s {source} looks log-normalised ({why}); spgpt expects raw counts and its results on "
            f"log-normalised values are worse. {fix}")


def _warn_if_log_normalised(adata, what: str, option: str, source: str = "X") -> None:
    msg = log_scale_warning(adata, what, option, source)
    if msg:
        log.warning("%s", msg)


def with_counts(adata, layer: str | None, what: str = "slide", option: str = "--counts-layer"):
    """``adata`` itself (layer None) or a new AnnData whose ``X`` is ``adata.layers[layer]`` (``'raw'``:
    ``adata.raw``, with its genes), sharing ``obs``, ``obsm`` and ``uns``. Warns (logging) when the
    matrix used looks log-normalised."""
    if layer is None:
        _warn_if_log_normalised(adata, what, option)
        return adata
    if layer == "raw" and "raw" not in adata.layers:
        if adata.raw is None:
            raise InputError(f"{option} raw: the {what} has no .raw; layers: {', '.join(adata.layers.keys()) or 'none'}")
        X, var = adata.raw.X, adata.raw.var
    elif layer in adata.layers:
        X, var = adata.layers[layer], adata.var
    else:
        have = list(adata.layers.keys()) + (["raw"] if adata.raw is not None else [])
        raise InputError(f"{option} {layer!r}: the {what} has no such layer (it has: {', '.join(have) or 'none'}); "
                         f"leave {option} out to use X")
    if hasattr(X, "to_memory"):
        X = X.to_memory()
    uns = {k: v for k, v in adata.uns.items() if k != "log1p"}  # scanpy's mark describes X, not these counts
    counts = ad.AnnData(X=X, obs=adata.obs, var=var, obsm=dict(adata.obsm), uns=uns)
    _warn_if_log_normalised(counts, what, option, source="raw.X" if layer == "raw" else f"layer {layer!r}")
    return counts
