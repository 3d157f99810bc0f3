"""``tl.domains``: spatial domains of a slide in one call, the workflow behind ``spgpt domains``, the
plugin's Embed & domains widget and the demo.

Domains are clustered from the slide's own expression (the default: on tissue the model was not
pretrained on, its embedding added nothing measurable, see ``DomainsConfig``), from the model's
embedding or from both fused, each optionally beside its spatial neighbourhood (:mod:`._features`), and
the labels are refined over each spot's spatial neighbours (a Potts prior, or a majority vote:
:mod:`._smoothing`). When the embedding is used, the slide's most variable matched genes are chosen once; the model is (optionally) fine-tuned on them and embeds
every spot with them. Every input is checked before the model is loaded; with ``features="expression"``
no model is loaded at all. Options: :class:`spgpt_core.params.DomainsConfig`.
"""

from __future__ import annotations

import numpy as np

from ..checkpoint import load_model
from ..device import choose_device
from ..errors import InputError
from ..io import check_matrix, get_coordinates
from ..params import DomainsConfig, resolve
from ..pp.counts import with_counts
from ..pp.hvg import highly_variable_mask
from ..pp.vocab import resolve_genes
from ..progress import Progress
from ..train import finetune
from ._cluster import K_METHODS, check_domains_request, cluster, consensus_cluster, write_labels
from ._embed import embed
from ._features import EXPRESSION_PCS, SMOOTHED_K, domain_features, expression_pcs, smoothed_features


def domains(adata, model="default", *, config: DomainsConfig | None = None, gene_col: str | None = None,
            modality: str | None = None, counts_layer: str | None = None, device: str | None = None,
            key_added: str = "spgpt_domain", embedding_key: str = "X_spgpt", reuse_embedding: bool = False,
            progress: Progress | None = None, **options):
    """Spatial domains of ``adata``: from its expression (default), or from the model's embedding (zero-shot,
    or after ``finetune_epochs`` of fine-tuning) alone or fused with the expression.

    Options: ``config`` (:class:`~spgpt_core.params.DomainsConfig`) or its fields as keyword arguments:
    give ``n_clusters`` (Leiden / Louvain search the resolution; k-means is exact) or ``resolution``;
    ``n_top_genes=0`` gives the model every matched gene; ``drop_empty`` leaves spots that express no
    model gene out (their domain is missing) instead of refusing the slide.

    Writes ``obsm[embedding_key]`` when the embedding is used (with its record in ``uns``), the categorical
    ``obs[key_added]``,
    its colours and ``uns[key_added]`` (every parameter of this call). ``device=None`` uses the model's
    device (CPU for a model loaded here). ``reuse_embedding=True`` takes ``obsm[embedding_key]`` as an
    earlier call with the same model, genes and seed left it and only finds domains again (the plugin
    does so when only clustering settings changed). Returns ``adata``.
    """
    cfg = resolve(DomainsConfig, config, options)
    check_domains_request(adata, n_clusters=cfg.n_clusters, resolution=cfg.resolution, method=cfg.method)
    n_top_genes = cfg.n_top_genes or None
    work = with_counts(adata, counts_layer)
    if not cfg.uses_embedding:  # tl.embed checks the matrix on the model's paths
        check_matrix(work)
    emb = None
    if cfg.uses_embedding and reuse_embedding:
        if embedding_key not in adata.obsm:
            raise InputError(f"reuse_embedding=True but the slide has no obsm['{embedding_key}']; run without it "
                             "to embed the slide")
        emb = np.asarray(adata.obsm[embedding_key])
    elif cfg.uses_embedding:
        emb = _embed_for_domains(adata, work, model, cfg, gene_col=gene_col, modality=modality,
                                 counts_layer=counts_layer, device=device, embedding_key=embedding_key,
                                 progress=progress)
    if progress is not None:
        progress.check()
        progress.start(0, "finding domains")
    pca_info: dict = {}
    ok = np.isfinite(emb).all(axis=1) if emb is not None else np.ones(adata.n_obs, dtype=bool)
    rows = slice(None) if ok.all() else ok  # a view, not a copy, when no spot was dropped (1M: 0.4 GB)
    coords = get_coordinates(adata, required=True)[rows]
    expr = None
    if cfg.features != "embedding":
        expr = expression_pcs(work, n_top_genes=n_top_genes, n_pcs=EXPRESSION_PCS, seed=cfg.seed,
                              info=pca_info)[rows]
    E = None if emb is None else emb[rows]
    if cfg.features != "embedding" or cfg.spatial_weight > 0:
        use_rep = f"{key_added}_features"
        F = domain_features(expression=expr, embedding=E, coords=coords, features=cfg.features,
                            embedding_weight=cfg.embedding_share, spatial_weight=cfg.spatial_weight,
                            spatial_k=cfg.spatial_k, n_pcs=cfg.n_pcs, seed=cfg.seed, info=pca_info)
        full = np.full((adata.n_obs, F.shape[1]), np.nan, dtype=np.float32)
        full[ok] = F
        adata.obsm[use_rep] = full
    else:
        use_rep, F = embedding_key, E
        adata.obsm.pop(f"{key_added}_features", None)  # an earlier run's, not what these domains came from
    n_consensus = cfg.consensus if cfg.method in K_METHODS else 1  # graph methods' K is searched, not given
    if n_consensus > 1:
        views = [F, smoothed_features(expression=expr, embedding=E, coords=coords, features=cfg.features,
                                      embedding_weight=cfg.embedding_share, seed=cfg.seed)]
        del expr, E
        labels, info = consensus_cluster(views, n_clusters=cfg.n_clusters, method=cfg.method, repeats=n_consensus,
                                         coords=coords, smooth_k=cfg.smooth_k, spatial_prior=cfg.spatial_prior,
                                         seed=cfg.seed, progress=progress)
        write_labels(adata, labels, ok, key_added, {"use_rep": use_rep, "n_clusters": cfg.n_clusters,
                                                    "resolution": cfg.resolution, **info,
                                                    "consensus_smoothed_k": SMOOTHED_K})
    else:
        del expr, E
        cluster(adata, use_rep=use_rep, n_clusters=cfg.n_clusters, resolution=cfg.resolution, method=cfg.method,
                smooth_k=cfg.smooth_k, spatial_prior=cfg.spatial_prior, key_added=key_added, seed=cfg.seed,
                progress=progress)
        adata.uns[key_added]["params"]["consensus"] = 1
    if progress is not None:
        progress.close()  # the CLI's bar of this stage ends here, not at the end of the program
    adata.uns[key_added]["params"].update(
        n_top_genes=n_top_genes, features=cfg.features, spatial_weight=cfg.spatial_weight,
        **({"embedding_share": cfg.embedding_share} if cfg.features == "fused" else {}),
        **({"spatial_k": cfg.spatial_k} if cfg.spatial_weight > 0 else {}),
        **({"n_pcs": cfg.n_pcs} if use_rep != embedding_key else {}),
        **({"consensus_requested": cfg.consensus} if n_consensus != cfg.consensus else {}),
        **({"expression_pca_solver": pca_info["pca_solver"]} if "pca_solver" in pca_info else {}),
        **({"features_dtype": pca_info["features_dtype"]} if "features_dtype" in pca_info else {}),
        finetune_epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len,
        drop_empty=cfg.drop_empty, counts_layer=counts_layer,
        **({"finetune_lr": cfg.finetune_lr, "max_context": cfg.max_context, "finetune_steps": cfg.finetune_steps,
            "finetune_steps_taken": adata.uns[embedding_key]["params"].get("finetune_steps_taken")}
           if cfg.finetune_epochs else {}))
    return adata


def _embed_for_domains(adata, work, model, cfg: DomainsConfig, *, gene_col, modality, counts_layer, device,
                       embedding_key: str, progress) -> np.ndarray:
    """Fine-tune (optionally) and embed on the slide's most variable matched genes, chosen once so both
    see the same ones; writes ``obsm[embedding_key]`` and its record into ``adata``."""
    n_top_genes = cfg.n_top_genes or None
    model = load_model(model, device=choose_device(device, model))
    match = resolve_genes(work, model.vocab, gene_col=gene_col)
    if n_top_genes:
        hv = highly_variable_mask(work, n_top_genes, genes=match.vocab_ids >= 0)
        if hv is not None:
            work = work[:, hv].copy()
    if cfg.finetune_epochs:
        model = finetune([work], model, epochs=cfg.finetune_epochs, max_steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                         max_context=cfg.max_context,
                         gene_col=gene_col, modality=modality, seed=cfg.seed, device=str(model.device),
                         progress=progress)
    if progress is not None:
        progress.check()
    embed(work, model, key_added=embedding_key, gene_col=gene_col, modality=modality, n_top_genes=None,
          batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len, seed=cfg.seed,
          empty="drop" if cfg.drop_empty else "error", progress=progress)
    record = work.uns[embedding_key]
    record["params"].update(n_top_genes=n_top_genes, counts_layer=counts_layer)
    if cfg.finetune_epochs:  # the budget may stop fine-tuning before the epochs asked
        record["params"]["finetune_steps_taken"] = int(model.metadata["training"]["steps"])
    record["gene_match"] = match.to_dict()  # the whole slide's genes, as tl.embed records them
    adata.obsm[embedding_key] = work.obsm[embedding_key]
    adata.uns[embedding_key] = record
    empty_key = f"{embedding_key}_empty"
    if empty_key in work.obs:
        adata.obs[empty_key] = work.obs[empty_key].to_numpy()
    elif empty_key in adata.obs:
        del adata.obs[empty_key]  # a stale mark from an earlier run
    return np.asarray(adata.obsm[embedding_key])
