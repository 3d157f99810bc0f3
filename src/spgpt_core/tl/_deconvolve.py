"""``tl.deconvolve``: cell-type proportions per spot from a labelled reference (Methods 4.4.1)."""

from __future__ import annotations

import pandas as pd

from ..progress import Progress
from ..records import run_record


def deconvolve(adata, reference, celltype_key: str, model="default", *, key_added: str = "spgpt_proportions",
               dominant_key: str = "spgpt_dominant_type", use_embeddings: bool = True, spatial_rep: str | None = None,
               reference_rep: str | None = None, gene_col: str | None = None, reference_gene_col: str | None = None,
               max_cells_per_type: int | None = 1000, n_top_genes: int = 1000, embedding_weight: float | None = None,
               num_epochs: int = 1000, learning_rate: float = 0.1, lambda_g2: float = 1.0,
               density_prior: str = "rna_count_based", seed: int = 0, device: str | None = None, batch_size: int = 64,
               counts_layer: str | None = None, reference_counts_layer: str | None = None,
               progress: Progress | None = None):
    """Deconvolve every spot of ``adata`` with ``reference`` (AnnData with ``obs[celltype_key]``).

    Writes ``obsm[key_added]`` (DataFrame spots x cell types, rows sum to 1), ``obs[dominant_key]``
    (categorical arg-max type, with ``uns[dominant_key + '_colors']``) and ``uns[key_added]`` (parameters,
    model, versions, timings). ``use_embeddings=False`` is Tangram on expression alone. See
    :mod:`spgpt_core.deconvolution` for the method. ``counts_layer`` / ``reference_counts_layer`` name
    the layers holding raw counts (``'raw'``: ``.raw``) when ``X`` holds normalised values. Returns ``adata``.
    """
    from ..counts import with_counts
    from ..deconvolution import deconvolve as _deconvolve
    from ..plotting import category_colors

    res = _deconvolve(with_counts(adata, counts_layer),
                      with_counts(reference, reference_counts_layer, "reference", "--reference-counts-layer"),
                      celltype_key=celltype_key, model=model, use_embeddings=use_embeddings,
                      spatial_rep=spatial_rep, reference_rep=reference_rep, gene_col=gene_col,
                      reference_gene_col=reference_gene_col, max_cells_per_type=max_cells_per_type,
                      n_top_genes=n_top_genes, embedding_weight=embedding_weight, num_epochs=num_epochs,
                      learning_rate=learning_rate, lambda_g2=lambda_g2, density_prior=density_prior, seed=seed,
                      device=device, batch_size=batch_size, progress=progress)
    props = res.proportions.copy()
    props.index = adata.obs_names
    adata.obsm[key_added] = props
    adata.obs[dominant_key] = pd.Categorical(res.dominant.to_numpy(), categories=list(res.dominant.cat.categories))
    adata.uns[f"{dominant_key}_colors"] = category_colors(len(res.dominant.cat.categories))
    info = dict(res.info)
    model_info = info.pop("model", None)
    keys = ("celltype_key", "use_embeddings", "spatial_rep", "reference_rep", "max_cells_per_type", "n_top_genes",
            "embedding_weight", "density_prior", "seed", "num_epochs", "learning_rate", "lambda_g1", "lambda_d",
            "lambda_g2", "lambda_r")
    params = {"counts_layer": counts_layer, "reference_counts_layer": reference_counts_layer,
              **{k: info[k] for k in keys}}
    rec = run_record(params,
                     cell_types=list(props.columns), dominant_key=dominant_key,
                     summary={k: v for k, v in info.items() if k not in ("celltype_key",)})
    if model_info is not None:
        rec["model"] = model_info
    adata.uns[key_added] = rec
    return adata
