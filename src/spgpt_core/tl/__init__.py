"""Scanpy-style tools: each verb writes its result into the AnnData under ``key_added`` and records
its parameters, the model and the versions in ``adata.uns[key_added]``."""

from ._cluster import cluster
from ._deconvolve import deconvolve
from ._domains import domains
from ._embed import embed
from ._impute import impute
from ._integrate import integrate

__all__ = ["embed", "cluster", "domains", "deconvolve", "impute", "integrate"]
