"""An imported scGPT-human directory reproduces the reference embedding path numerically.

The reference path (tests/helpers/reference_embed.py) is an independent, deliberately naive
re-creation of ``scgpt.tasks.embed_data``: dense matrix, per-cell numpy binning, torch.nn.TransformerEncoder with
the checkpoint's Wqkv loaded as in_proj. On inputs without binning ties and within the context
length, both must give the same L2-normalised <cls> embeddings (cosine >= 0.999 per cell).
"""

import numpy as np
import scipy.sparse as sp

from helpers.data import data_file
from helpers.reference_embed import reference_embed
from helpers.scgpt_checkpoint import write_scgpt_dir
from spgpt_core import SpGPT, tl
from spgpt_core.pp.vocab import resolve_genes


def test_imported_scgpt_human_matches_reference_embed_data(tmp_path):
    import anndata as ad

    a = ad.read_h5ad(data_file("dlpfc/DLPFC_151673.h5ad"), backed="r")[:150].to_memory()
    model_dir = write_scgpt_dir(tmp_path / "scGPT_human", d=64, nheads=4, d_hid=64, nlayers=3, max_seq_len=1200)
    model = SpGPT.from_pretrained(model_dir)
    match = resolve_genes(a, model.vocab)
    used = match.vocab_ids >= 0
    X = sp.csr_matrix(a.X[:, used], dtype=np.float64)
    rng = np.random.default_rng(0)
    X.data = X.data + rng.uniform(0.01, 0.5, X.nnz)  # continuous values: no binning ties
    keep = np.diff(X.indptr) < 1199  # within the context: no random subsampling on either side
    X = X[keep]
    assert X.shape[0] > 80

    sub = ad.AnnData(X.astype(np.float32), var=a.var[used].copy())
    tl.embed(sub, model, batch_size=16, n_top_genes=None)  # the reference embeds every gene it is given
    ours = sub.obsm["X_spgpt"]
    ref = reference_embed(X, match.vocab_ids[used], model_dir, batch_size=16)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f}"
    # the agreement is far tighter than the differences between cells (random weights make cells similar)
    assert np.abs(ours - ref).max() < 0.01 * np.abs(ours - ours.mean(0)).max()
