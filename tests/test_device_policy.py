"""One device policy: with a GPU present, `--device cpu` keeps every module and tensor on the CPU.

A GPU is simulated (``torch.cuda.is_available`` patched to True) and every ``Module.to``,
``Tensor.to`` and ``torch.tensor(..., device=)``-style call that targets CUDA is recorded and
stopped. ``--device auto`` is the positive control: there the recorder must fire.
"""

from __future__ import annotations

import anndata as ad
import pytest
from helpers.device_guard import WentToCuda, install

from spgpt_core import tl
from spgpt_core.cli import main
from spgpt_core.datasets import make_sample_reference, make_sample_slide


@pytest.fixture
def fake_gpu(monkeypatch):
    return install(monkeypatch)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("device")
    ref = make_sample_reference(seed=0)
    slide = make_sample_slide(n_rows=14, n_cols=16, n_domains=3, seed=0, reference=ref)
    other = make_sample_slide(n_rows=14, n_cols=16, n_domains=3, seed=1, reference=ref)
    paths = {"slide": d / "slide.h5ad", "other": d / "other.h5ad", "ref": d / "ref.h5ad"}
    slide.write_h5ad(paths["slide"])
    other.write_h5ad(paths["other"])
    ref[::4].copy().write_h5ad(paths["ref"])
    genes = ",".join(list(slide.var_names[:3]))
    return paths, genes, d


def _commands(files, device):
    paths, genes, d = files
    model = ["--model", "random:tiny", "--device", device]
    s, o, r = str(paths["slide"]), str(paths["other"]), str(paths["ref"])
    return {
        "embed": ["embed", s, *model, "--out", str(d / f"e_{device}.h5ad"), "--overwrite"],
        # the model's path: the default (the expression alone) loads no model
        "domains": ["domains", s, "--n-clusters", "3", "--features", "fused", *model, "--out", str(d / f"d_{device}.h5ad"), "--overwrite"],
        "integrate": ["integrate", s, o, *model, "--out", str(d / f"i_{device}.h5ad"), "--overwrite"],
        "deconvolve": ["deconvolve", s, "--reference", r, "--celltype-key", "cell_type", *model, "--mapping-epochs", "5",
                       "--out", str(d / f"dc_{device}.h5ad"), "--overwrite"],
        "impute": ["impute", s, "--reference", r, "--genes", genes, *model, "--mapping-epochs", "5",
                   "--out", str(d / f"im_{device}.h5ad"), "--overwrite"],
    }


@pytest.mark.parametrize("verb", ["embed", "domains", "integrate", "deconvolve", "impute"])
def test_device_cpu_never_touches_cuda(fake_gpu, files, verb):
    assert main(["-q", *_commands(files, "cpu")[verb]]) == 0
    assert fake_gpu == []


@pytest.mark.parametrize("verb", ["embed", "domains", "deconvolve"])
def test_device_auto_uses_the_gpu_when_present(fake_gpu, files, verb):
    """The positive control: the recorder sees the move when a GPU is (said to be) there."""
    with pytest.raises(WentToCuda):
        main(["-q", *_commands(files, "auto")[verb]])
    assert fake_gpu and "cuda" in fake_gpu[0]


def test_python_api_default_is_the_models_device(fake_gpu, files):
    """device=None: the model's device, the CPU for a model loaded from a spec; explicit devices honoured."""
    from spgpt_core import load_model

    paths, _, _ = files
    assert str(load_model("random:tiny").device) == "cpu"
    slide = ad.read_h5ad(paths["slide"])
    tl.embed(slide, "random:tiny")
    assert slide.uns["X_spgpt"]["params"]["device"] == "cpu"
    tl.domains(slide, "random:tiny", n_clusters=3, features="fused")
    assert fake_gpu == []
    with pytest.raises(WentToCuda):
        tl.embed(slide, "random:tiny", device="cuda")
