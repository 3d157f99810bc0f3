"""A generated Xenium-like slide as an ``.h5ad``: cells on a jittered grid (15 um apart), planted
domains (wavy bands and a nodule, :func:`spgpt_core.vendors.synthetic.make_cells`), 300 genes of
Poisson counts (median ~150 expressed per cell), ``obsm['spatial']`` in micrometres, no image.
Memory stays near the sparse matrix's size (the counts are drawn in 20,000-cell blocks), so a
1M-cell slide is made in about a minute on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path


def xenium_like_path(n_cells: int, workdir: Path, seed: int = 0) -> Path:
    """The slide's path under ``workdir``, written first if it is not there yet (atomically)."""
    import anndata as ad
    import pandas as pd

    from spgpt_core.vendors.synthetic import make_cells

    path = Path(workdir) / f"xenium_like_{n_cells}_s{seed}.h5ad"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = make_cells(n_cells, n_genes=300, n_domains=5, seed=seed)
    names = [f"d{k + 1}" for k in range(5)]
    obs = pd.DataFrame({"domain": pd.Categorical.from_codes(cells.domain, categories=names)},
                       index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]))
    adata = ad.AnnData(X=cells.counts.astype("float32"), obs=obs, var=pd.DataFrame(index=pd.Index(cells.genes)))
    adata.obsm["spatial"] = cells.xy
    adata.uns["modality"] = "xenium"
    tmp = path.with_suffix(f".tmp{os.getpid()}.h5ad")
    adata.write_h5ad(tmp)
    tmp.replace(path)
    return path
