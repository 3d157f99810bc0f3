"""``tl.embed``: zero-shot spot embeddings into ``obsm``."""

from __future__ import annotations

from ..hvg import DEFAULT_N_TOP_GENES
from ..progress import Progress
from ..records import run_record


def embed(adata, model="default", *, key_added: str = "X_spgpt", gene_col: str | None = None,
          modality: str | None = None, n_top_genes: int | None = DEFAULT_N_TOP_GENES, batch_size: int = 64,
          chunk_size: int = 4096, seed: int = 0, device: str | None = None, empty: str = "error",
          counts_layer: str | None = None, progress: Progress | None = None):
    """Zero-shot spot embeddings into ``adata.obsm[key_added]`` (L2-normalised ``<cls>`` states).

    The model sees the ``n_top_genes`` (default 3,000) most variable matched genes, as in scGPT's
    tutorials and like the PCA baseline; panels with fewer genes are used whole, and
    ``n_top_genes=None`` (CLI ``--n-top-genes 0``) gives the model every matched gene.

    ``model`` is an :class:`~spgpt_core.SpGPT` or anything :func:`~spgpt_core.load_model` takes.
    With ``empty="drop"`` cells that express no vocabulary gene get NaN rows and
    ``obs[key_added + '_empty']`` marks them. ``counts_layer`` names the layer with the raw counts
    (``'raw'``: ``adata.raw``) when ``X`` holds normalised values. Returns ``adata`` (modified in place).
    """
    from ..counts import with_counts
    from ..device import choose_device
    from ..embed import embed as _embed
    from ..pretrained import load_model

    if adata.is_view and adata.isbacked:
        from ..errors import InputError

        raise InputError("cannot store results in a view of a backed AnnData; embed the whole backed object, or "
                         "call .to_memory() on the subset first")
    model = load_model(model, device=choose_device(device, model))
    emb, prep = _embed(with_counts(adata, counts_layer), model, gene_col=gene_col, modality=modality, batch_size=batch_size,
                       chunk_size=chunk_size, seed=seed, empty=empty, n_top_genes=n_top_genes, progress=progress)
    adata.obsm[key_added] = emb
    if (~prep.keep_cells).any():
        adata.obs[f"{key_added}_empty"] = ~prep.keep_cells
    adata.uns[key_added] = run_record(
        {"gene_col": gene_col, "counts_layer": counts_layer, "n_top_genes": n_top_genes, "modality": prep.modality.name,
         "modality_reason": prep.modality_reason,
         "batch_size": batch_size, "seed": seed, "device": str(model.device), "empty": empty},
        model=model, gene_match=prep.match.to_dict(), normalization=prep.norm_info, summary=prep.summary)
    return adata

