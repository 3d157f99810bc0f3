"""What every result records with it: parameters, model summary and versions (``uns[key_added]``)."""

from __future__ import annotations

import numpy as np


def h5ad_safe(value):
    """uns values that h5ad can store: None -> 'None', tuples -> lists, numpy scalars -> python.

    A '/' in a dict key would become an HDF5 group separator (a cell type "L2/3" would be written as
    group "L2" holding "3"), so it is stored percent-encoded as '%2F'."""
    if isinstance(value, dict):
        return {str(k).replace("/", "%2F"): h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [h5ad_safe(v) for v in value] if value else []
    if value is None:
        return "None"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool, np.ndarray)):
        return value
    return str(value)


def run_record(params: dict, model=None, **extra) -> dict:
    """``{"params": ..., "model": ..., "versions": ..., **extra}`` in a form h5ad can store."""
    # torch, via checkpoint.pretrained: the napari plugin uses h5ad_safe on its main thread without it
    from .checkpoint.pretrained import versions

    rec = {"params": params, **extra, "versions": versions()}
    if model is not None:
        rec["model"] = model.describe()
    return h5ad_safe(rec)
