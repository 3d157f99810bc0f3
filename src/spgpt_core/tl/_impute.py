"""``tl.impute``: expression of unmeasured genes from a reference (Methods 4.5, Gene Imputation)."""

from __future__ import annotations

import numpy as np

from ..progress import Progress
from ..records import run_record


def impute(adata, reference, genes=None, model="default", *, all_missing: bool = False,
           key_added: str = "spgpt_imputed", use_embeddings: bool = True,
           use_centroids: bool = True, n_clusters: int | None = None, cluster_ratio: int = 10,
           spatial_rep: str | None = None, reference_rep: str | None = None, gene_col: str | None = None,
           reference_gene_col: str | None = None, embedding_weight: float | None = None, num_epochs: int = 1000,
           learning_rate: float = 0.1, lambda_g2: float = 1.0, density_prior: str = "uniform", seed: int = 0,
           device: str | None = None, batch_size: int = 64, counts_layer: str | None = None,
           reference_counts_layer: str | None = None, progress: Progress | None = None):
    """Impute ``genes`` (or every reference gene the slide lacks, ``all_missing=True``) for each cell.

    Writes ``obsm[key_added]``: a DataFrame cells x genes (columns named as in the reference) in units
    of log1p(counts per 10,000 training-gene counts), and ``uns[key_added]`` (parameters, model,
    versions, timings, training genes). The AnnData's genes are not changed, so measured and imputed
    values never mix. See :mod:`spgpt_core.imputation` for the method. ``counts_layer`` /
    ``reference_counts_layer`` name the layers holding raw counts (``'raw'``: ``.raw``) when ``X`` holds
    normalised values. Returns ``adata``.
    """
    from ..counts import with_counts
    from ..imputation import impute as _impute

    res = _impute(with_counts(adata, counts_layer),
                  with_counts(reference, reference_counts_layer, "reference", "--reference-counts-layer"),
                  genes=genes, all_missing=all_missing, model=model, use_embeddings=use_embeddings,
                  use_centroids=use_centroids, n_clusters=n_clusters, cluster_ratio=cluster_ratio,
                  spatial_rep=spatial_rep, reference_rep=reference_rep, gene_col=gene_col,
                  reference_gene_col=reference_gene_col, embedding_weight=embedding_weight, num_epochs=num_epochs,
                  learning_rate=learning_rate, lambda_g2=lambda_g2, density_prior=density_prior, seed=seed,
                  device=device, batch_size=batch_size, progress=progress)
    df = res.imputed.copy()
    df.index = adata.obs_names
    adata.obsm[key_added] = df
    info = dict(res.info)
    model_info = info.pop("model", None)
    keys = ("all_missing", "use_embeddings", "use_centroids", "n_clusters", "cluster_ratio", "spatial_rep",
            "reference_rep", "embedding_weight", "density_prior", "seed", "num_epochs", "learning_rate", "lambda_g1",
            "lambda_d", "lambda_g2", "lambda_r")
    params = {"counts_layer": counts_layer, "reference_counts_layer": reference_counts_layer,
              **{k: info[k] for k in keys}}
    rec = run_record(params, genes=np.array([str(g) for g in df.columns], dtype=object),
                     training_genes=np.array(info.pop("training_genes"), dtype=object),
                     summary={k: v for k, v in info.items() if k != "genes"})
    if model_info is not None:
        rec["model"] = model_info
    adata.uns[key_added] = rec
    return adata
