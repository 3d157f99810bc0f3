"""``tl.domains``: spatial domains of a slide in one call, the workflow behind ``spgpt domains``, the
plugin's Embed & domains widget and the demo.

The slide's most variable matched genes are chosen once; the model is (optionally) fine-tuned on
them, embeds every spot with them, and the embedding is clustered into domains and smoothed over
each spot's spatial neighbours. Every input is checked before the model is loaded.
"""

from __future__ import annotations

from ..hvg import DEFAULT_N_TOP_GENES
from ..progress import Progress
from ._cluster import check_domains_request, cluster
from ._embed import embed


def domains(adata, model="default", *, n_clusters: int | None = None, resolution: float | None = None,
            method: str = "leiden", smooth_k: int = 6, n_top_genes: int | None = DEFAULT_N_TOP_GENES,
            finetune_epochs: int = 0, finetune_lr: float = 1e-3, max_context: int = 128,
            gene_col: str | None = None, modality: str | None = None, counts_layer: str | None = None,
            batch_size: int = 64, drop_empty: bool = False, seed: int = 0, device: str | None = None,
            key_added: str = "spgpt_domain", embedding_key: str = "X_spgpt", progress: Progress | None = None):
    """Embed ``adata`` (zero-shot, or after ``finetune_epochs`` of fine-tuning) and cluster it into domains.

    Writes ``obsm[embedding_key]`` (with its record in ``uns``), the categorical
    ``obs[key_added]``, its colours and ``uns[key_added]`` (every parameter of this call). Give
    ``n_clusters`` (Leiden / Louvain search the resolution; k-means is exact) or ``resolution``.
    ``n_top_genes=None`` gives the model every matched gene. ``drop_empty`` leaves spots that express
    no model gene out (their domain is missing) instead of refusing the slide. ``device=None`` uses
    the model's device (CPU for a model loaded here). Returns ``adata``.
    """
    from ..counts import with_counts
    from ..device import choose_device
    from ..hvg import highly_variable_mask
    from ..pretrained import load_model
    from ..vocab import resolve_genes

    check_domains_request(adata, n_clusters=n_clusters, resolution=resolution, method=method)
    if finetune_epochs < 0:
        from ..errors import InputError

        raise InputError(f"finetune_epochs={finetune_epochs}: pass 0 (zero-shot) or a positive number of epochs")
    model = load_model(model, device=choose_device(device, model))
    # the genes are chosen once, so fine-tuning and embedding see the same ones
    work = with_counts(adata, counts_layer)
    match = resolve_genes(work, model.vocab, gene_col=gene_col)
    if n_top_genes:
        hv = highly_variable_mask(work, n_top_genes, genes=match.vocab_ids >= 0)
        if hv is not None:
            work = work[:, hv].copy()
    if finetune_epochs:
        from ..train import finetune

        model = finetune([work], model, epochs=finetune_epochs, lr=finetune_lr, max_context=max_context,
                         gene_col=gene_col, modality=modality, seed=seed, device=str(model.device),
                         progress=progress)
    if progress is not None:
        progress.check()
    embed(work, model, key_added=embedding_key, gene_col=gene_col, modality=modality, n_top_genes=None,
          batch_size=batch_size, seed=seed, empty="drop" if drop_empty else "error", progress=progress)
    record = work.uns[embedding_key]
    record["params"].update(n_top_genes=n_top_genes, counts_layer=counts_layer)
    record["gene_match"] = match.to_dict()  # the whole slide's genes, as tl.embed records them
    adata.obsm[embedding_key] = work.obsm[embedding_key]
    adata.uns[embedding_key] = record
    empty_key = f"{embedding_key}_empty"
    if empty_key in work.obs:
        adata.obs[empty_key] = work.obs[empty_key].to_numpy()
    elif empty_key in adata.obs:
        del adata.obs[empty_key]  # a stale mark from an earlier run
    if progress is not None:
        progress.check()
        progress.start(0, "finding domains")
    cluster(adata, use_rep=embedding_key, n_clusters=n_clusters, resolution=resolution, method=method,
            smooth_k=smooth_k, key_added=key_added, seed=seed)
    adata.uns[key_added]["params"].update(
        n_top_genes=n_top_genes, finetune_epochs=finetune_epochs, batch_size=batch_size, drop_empty=drop_empty,
        **({"finetune_lr": finetune_lr, "max_context": max_context} if finetune_epochs else {}))
    return adata
