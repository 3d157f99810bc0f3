"""The spgpt_core calls behind the Deconvolve, Impute and QC widgets (run inside workers).

Thin wrappers over ``spgpt_core.tl.deconvolve`` / ``tl.impute`` (results written into the AnnData
under ``key_added`` with their run record, exactly as ``spgpt deconvolve`` / ``spgpt impute``); they
only resolve the device choice ('auto') the way the rest of spgpt does.
"""

from __future__ import annotations


def _device(device: str) -> str:
    from spgpt_core.pretrained import resolve_device

    return str(resolve_device(device))


def deconvolve(adata, reference, *, celltype_key: str, model, key_added: str, dominant_key: str, gene_col,
               num_epochs: int, seed: int, device: str, progress, counts_layer: str | None = None):
    from spgpt_core import tl

    return tl.deconvolve(adata, reference, celltype_key=celltype_key, model=model, key_added=key_added,
                         dominant_key=dominant_key, gene_col=gene_col, num_epochs=num_epochs, seed=seed,
                         device=_device(device), counts_layer=counts_layer, progress=progress)


def impute(adata, reference, *, genes: list[str], model, key_added: str, gene_col, num_epochs: int, seed: int,
           device: str, progress, counts_layer: str | None = None):
    from spgpt_core import tl

    return tl.impute(adata, reference, genes=genes, model=model, key_added=key_added, gene_col=gene_col,
                     num_epochs=num_epochs, seed=seed, device=_device(device), counts_layer=counts_layer,
                     progress=progress)


def call_supported(func, *args, **kwargs):
    """Call ``func`` with the keyword arguments its signature accepts."""
    import inspect

    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return func(*args, **kwargs)
    return func(*args, **{k: v for k, v in kwargs.items() if k in params})
