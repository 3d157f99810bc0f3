"""The memory knobs: --max-seq-len caps the tokens per cell, and a GPU out-of-memory error names the options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spgpt_core import SpGPT, tl
from spgpt_core.cli import main
from spgpt_core.datasets import make_sample_slide
from spgpt_core.errors import InputError


@pytest.fixture(scope="module")
def slide():
    return make_sample_slide(n_rows=10, n_cols=12, n_domains=3, seed=0)


def _record_lengths(monkeypatch, model):
    seen = []
    original = model.module.spot_embedding

    def spy(genes, *args, **kw):
        seen.append(genes.shape[1])
        return original(genes, *args, **kw)

    monkeypatch.setattr(model.module, "spot_embedding", spy)
    return seen


def test_max_seq_len_caps_tokens_per_cell(slide, monkeypatch):
    model = SpGPT.random("tiny", seed=0)
    seen = _record_lengths(monkeypatch, model)
    full = tl.embed(slide.copy(), model, n_top_genes=None).obsm["X_spgpt"]
    assert max(seen) > 40  # the slide's cells are longer than the cap below
    seen.clear()
    capped = tl.embed(slide.copy(), model, n_top_genes=None, max_seq_len=40)
    assert max(seen) == 40
    assert capped.uns["X_spgpt"]["params"]["max_seq_len"] == 40
    assert not np.allclose(capped.obsm["X_spgpt"], full)
    with pytest.raises(InputError, match="max_seq_len=1"):
        tl.embed(slide.copy(), model, max_seq_len=1)


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_while_embedding_names_the_options(slide, monkeypatch, tmp_path, capsys):
    model = SpGPT.random("tiny", seed=0)
    monkeypatch.setattr(model.module, "spot_embedding", _oom)
    with pytest.raises(InputError, match=r"ran out of memory.*--batch-size \(now 16\).*--max-seq-len \(now 30"):
        tl.embed(slide.copy(), model, batch_size=16, max_seq_len=30)
    # the command line prints it as one error line (exit code 2), not torch's traceback
    path = tmp_path / "s.h5ad"
    slide.write_h5ad(path)
    from spgpt_core import model as network

    monkeypatch.setattr(network.SpGPTModel, "spot_embedding", _oom)  # the network the command loads
    assert main(["-q", "embed", str(path), "--model", "random:tiny", "--device", "cpu", "--out",
                 str(tmp_path / "e.h5ad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the cpu device ran out of memory") and "--batch-size (now 64)" in err
    assert not (tmp_path / "e.h5ad").exists()


def test_out_of_memory_while_training_names_the_options(slide, monkeypatch):
    from spgpt_core.train import finetune, loop

    monkeypatch.setattr(loop, "compute_losses", _oom)
    with pytest.raises(InputError, match=r"max_context \(now 32.*--max-context.*patch_size \(now 16"):
        finetune([slide.copy()], SpGPT.random("tiny", seed=0), epochs=1, max_context=32)


def test_domains_and_mapping_take_max_seq_len(slide):
    from spgpt_core.params import DeconvolveConfig, DomainsConfig, ImputeConfig

    out = tl.domains(slide.copy(), SpGPT.random("tiny", seed=0), n_clusters=3, max_seq_len=24, smooth_k=0,
                     features="fused")
    assert out.uns["X_spgpt"]["params"]["max_seq_len"] == 24
    assert out.uns["spgpt_domain"]["params"]["max_seq_len"] == 24
    for cls in (DeconvolveConfig, ImputeConfig):
        assert cls(max_seq_len=50).max_seq_len == 50
        with pytest.raises(InputError, match="max_seq_len"):
            cls(max_seq_len=1)
    with pytest.raises(InputError, match="max_seq_len"):
        DomainsConfig(n_clusters=3, max_seq_len=0)
