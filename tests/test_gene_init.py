"""Gene-embedding initialisation from corpus co-expression (train/gene_init.py)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from helpers.data import data_file
from spgpt_core.train.corpus import Corpus, SlideSpec, build_corpus
from spgpt_core.errors import ConfigError
from spgpt_core.checkpoint.pretrained import SpGPT
from spgpt_core.train import TrainConfig, pretrain
from spgpt_core.pp.vocab import GeneVocab
from spgpt_core.train.gene_init import coexpression_embeddings, init_gene_embeddings

MPFC = "starmap_mpfc/STARmap_mPFC_20180417_BZ5_control.h5ad"


def _planted_slide(seed: int, n_cells: int = 300) -> ad.AnnData:
    """Two cell groups, each expressing its own gene module on top of shared background genes."""
    rng = np.random.default_rng(seed)
    names = [g for g in GeneVocab.default().tokens[:2000] if g.isupper() and g.isalnum()][:60]
    group = rng.integers(0, 2, n_cells)
    rate = np.full((n_cells, 60), 1.0)
    rate[group == 0, :20] = 8.0  # module A
    rate[group == 1, 20:40] = 8.0  # module B; genes 40-59 are background
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    a = ad.AnnData(X, var=pd.DataFrame(index=names))
    a.obsm["spatial"] = rng.uniform(0, 100, (n_cells, 2))
    return a, names


def test_coexpression_loadings_recover_planted_gene_modules(tmp_path):
    a1, names = _planted_slide(0)
    a2, _ = _planted_slide(1)
    a2.X = a2.X * 5  # another technology's depth: per-slide standardisation removes it
    out = build_corpus([SlideSpec(path="s1", adata=a1, slide_id="s1", modality="merfish"),
                        SlideSpec(path="s2", adata=a2, slide_id="s2", modality="merfish")],
                       tmp_path / "c", val_fraction=0.0, seed=0)
    corpus = Corpus(out)
    ids, load = coexpression_embeddings(corpus, 8)
    assert load.shape == (len(ids), 8)
    assert len({int(corpus.vocab[g]) for g in names}) == 60  # 60 distinct vocabulary genes
    row = {int(v): k for k, v in enumerate(ids)}
    L = np.stack([load[row[int(corpus.vocab[g])]] for g in names])
    L /= np.linalg.norm(L, axis=1, keepdims=True)
    cos = L @ L.T
    within = np.r_[cos[:20, :20][np.triu_indices(20, 1)], cos[20:40, 20:40][np.triu_indices(20, 1)]]
    across = cos[:20, 20:40].ravel()
    assert within.mean() > 0.9 and across.mean() < -0.5, (within.mean(), across.mean())


@pytest.fixture(scope="module")
def mpfc_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("gi") / "c"
    return build_corpus([SlideSpec(path=str(data_file(MPFC)), modality="starmap")], out, val_fraction=0.05, seed=0)


def test_loading_similarity_follows_gene_correlation_on_real_data(mpfc_corpus):
    corpus = Corpus(mpfc_corpus)
    ids, load = coexpression_embeddings(corpus, 32)
    s = corpus.slides[0]
    X = sp.csr_matrix((np.asarray(s.values), np.asarray(s.genes), np.asarray(s.indptr)),
                      shape=(s.n_cells, len(corpus.vocab)))[:, ids].toarray()
    X = np.log1p(X / corpus.gene_stats.means[ids])
    keep = X.std(0) > 0
    corr = np.corrcoef(X[:, keep].T)
    L = load[keep]
    # with all components the loadings' inner products reproduce the correlation matrix's top part
    gram = L @ L.T / len(X)
    iu = np.triu_indices(len(L), 1)
    r = np.corrcoef(gram[iu], corr[iu])[0, 1]
    assert r > 0.8, r


def test_pretraining_with_coexpression_init_runs_and_is_recorded(mpfc_corpus, tmp_path):
    cfg = TrainConfig(corpus=str(mpfc_corpus), run_dir=str(tmp_path / "run"), init="random:tiny", patch_size=8,
                      k_neighbours=4, max_context=32, epochs=1, max_steps=4, grad_accum=2, eval_every=0,
                      checkpoint_every=2, gene_init="coexpression", seed=0)
    model = pretrain(cfg)
    assert model.metadata["gene_init"] == "coexpression"
    base = SpGPT.random("tiny", seed=0, vocab=Corpus(mpfc_corpus).vocab)
    info = init_gene_embeddings(base.module, Corpus(mpfc_corpus))
    assert info["genes"] > 100
    with pytest.raises(ConfigError, match="gene_init"):
        TrainConfig(corpus="x", gene_init="pca")
