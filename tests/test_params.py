"""Options declared once (spgpt_core.params): the Python API, the CLI flags and the plugin's command text
all come from the same dataclasses, so a configuration survives the round trip through the command line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pandas as pd
import pytest

from spgpt_core.errors import InputError
from spgpt_core.params import (DeconvolveConfig, DomainsConfig, ImputeConfig, IntegrateConfig, add_options,
                               from_args, resolve, to_flags)

CHANGED = {
    DeconvolveConfig: dict(use_embeddings=False, num_epochs=50, lambda_g2=0.0, density_prior="uniform", seed=3,
                           max_cells_per_type=None, n_top_genes=200, embedding_weight=0.5, reference_gene_col="sym",
                           method="nnls", chunk_size=1000, input_scale="normalised", reference_input_scale="log1p"),
    ImputeConfig: dict(method="knn", knn_k=5, chunk_size=1000, input_scale="log1p", n_clusters=12, cluster_ratio=5,
                       density_prior="none", batch_size=8, spatial_rep="E", reference_rep="E", use_embeddings=True),
    DomainsConfig: dict(n_clusters=5, method="kmeans", smooth_k=0, n_top_genes=0, features="fused",
                        finetune_epochs=2, finetune_lr=1e-4, max_context=64, drop_empty=True, seed=7),
    IntegrateConfig: dict(features="expression", embedding_share=0.75, per_slide="scale", spatial_weight=0.0,
                          spatial_k=12, n_pcs=20, n_top_genes=None, n_clusters=4, batch_size=8, max_seq_len=100, seed=3),
}


def _parser(cls):
    p = argparse.ArgumentParser()
    add_options(p, cls)
    return p


@pytest.mark.parametrize("cls", list(CHANGED))
def test_flags_round_trip(cls):
    default_required = {"n_clusters": 3} if cls is DomainsConfig else {}
    for cfg in (cls(**default_required), cls(**CHANGED[cls])):
        args = _parser(cls).parse_args(to_flags(cfg))
        assert from_args(cls, args) == cfg


def test_integrate_verb_builds_its_flags_from_the_config():
    """`spgpt integrate` parses exactly the declared options: a config written as flags comes back equal."""
    from spgpt_core.cli import build_parser

    cfg = IntegrateConfig(**CHANGED[IntegrateConfig])
    args = build_parser().parse_args(["integrate", "a.h5ad", "b.h5ad", "--out", "o.h5ad", *to_flags(cfg)])
    assert from_args(IntegrateConfig, args) == cfg
    assert IntegrateConfig(n_top_genes=0) == IntegrateConfig(n_top_genes=None)  # one spelling of "every gene"
    with pytest.raises(InputError, match="per_slide='mean'"):
        IntegrateConfig(per_slide="mean")
    with pytest.raises(InputError, match="not both"):
        IntegrateConfig(n_clusters=3, resolution=1.0)


def test_flags_hold_only_what_changed():
    assert to_flags(DeconvolveConfig()) == []
    assert to_flags(DeconvolveConfig(num_epochs=50, use_embeddings=False)) == ["--no-embeddings", "--mapping-epochs",
                                                                                "50"]
    # imputation maps on expression alone by default: its flag turns the embeddings on
    assert to_flags(ImputeConfig()) == [] and to_flags(ImputeConfig(use_embeddings=True)) == ["--embeddings"]
    # a flag means the same in every verb that has it: --n-top-genes, --seed, --batch-size
    for name in ("seed", "batch_size"):
        flags = {f.metadata["flag"] for cls in CHANGED for f in cls.__dataclass_fields__.values() if f.name == name}
        assert len(flags) == 1, (name, flags)


def test_renamed_flag_still_works_with_a_warning(capsys):
    args = _parser(DeconvolveConfig).parse_args(["--epochs", "7", "--n-genes", "300"])
    assert from_args(DeconvolveConfig, args) == DeconvolveConfig(num_epochs=7, n_top_genes=300)
    err = capsys.readouterr().err
    assert "--epochs is deprecated" in err and "--mapping-epochs" in err and "--n-genes is deprecated" in err


def test_bad_values_and_unknown_options_are_refused():
    with pytest.raises(InputError, match="num_epochs=0"):
        DeconvolveConfig(num_epochs=0)
    with pytest.raises(InputError, match="density_prior"):
        ImputeConfig(density_prior="rna")
    with pytest.raises(InputError, match="unknown option.*epochs.*known:"):
        resolve(ImputeConfig, None, {"epochs": 3})
    with pytest.raises(InputError, match="finetune_epochs=-1"):
        DomainsConfig(n_clusters=3, finetune_epochs=-1)
    # fine-tuning changes the embedding, which the default (expression alone) does not use
    with pytest.raises(InputError, match="--features fused"):
        DomainsConfig(n_clusters=3, finetune_epochs=1)
    assert DomainsConfig(n_clusters=3, finetune_epochs=1, features="embedding").finetune_epochs == 1
    # knn imputes; it has no proportions to give
    with pytest.raises(InputError, match="method='knn'"):
        DeconvolveConfig(method="knn")
    assert ImputeConfig(method="knn").method == "knn"
    with pytest.raises(InputError, match="input_scale='z'"):
        ImputeConfig(input_scale="z")


def test_cli_refuses_a_bad_option_before_reading_anything(tmp_path):
    missing = tmp_path / "does_not_exist.h5ad"  # never read: the option is checked first
    res = subprocess.run([sys.executable, "-m", "spgpt_core.cli", "deconvolve", str(missing), "--reference",
                          str(missing), "--celltype-key", "t", "--mapping-epochs", "0", "--out",
                          str(tmp_path / "o.h5ad")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "num_epochs=0" in res.stderr and "Traceback" not in res.stderr


def test_export_verb_writes_the_results_table(tmp_path):
    from spgpt_core.cli import main
    from spgpt_core.datasets import make_sample_slide
    from spgpt_core.io import write_h5ad

    slide = make_sample_slide(n_rows=12, n_cols=12, seed=0)
    slide.obs["spgpt_domain"] = pd.Categorical([str(i % 3) for i in range(slide.n_obs)])
    slide.obsm["spgpt_proportions"] = pd.DataFrame({"A": 0.25, "B": 0.75}, index=slide.obs_names)
    src = write_h5ad(slide, tmp_path / "s.h5ad")
    out = tmp_path / "s.csv"
    assert main(["export", str(src), "--out", str(out)]) == 0
    table = pd.read_csv(out, index_col=0)
    assert len(table) == slide.n_obs and list(table.columns[:2]) == ["x", "y"]
    assert table["spgpt_domain"].tolist() == [i % 3 for i in range(slide.n_obs)]
    assert table["spgpt_proportions:B"].eq(0.75).all()
    assert main(["export", str(src), "--out", str(out)]) == 2  # exists: refused without --overwrite
    assert main(["export", str(src), "--out", str(tmp_path / "s.txt")]) == 2
    assert main(["export", str(src), "--out", str(src), "--overwrite"]) == 2  # never the input


def test_export_verb_keeps_a_stores_other_elements(tmp_path):
    import spatialdata as sd

    from spgpt_core.cli import main
    from spgpt_core.datasets import make_sample_slide
    from spgpt_core.io import to_spatialdata, write_spatialdata

    slide = make_sample_slide(n_rows=12, n_cols=12, seed=0)
    store = write_spatialdata(to_spatialdata(slide), tmp_path / "in.zarr")
    before = sd.read_zarr(store)
    out = tmp_path / "out.zarr"
    assert main(["export", str(store), "--out", str(out)]) == 0
    after = sd.read_zarr(out)
    assert set(after.images) == set(before.images) and set(after.shapes) == set(before.shapes)
    assert after.tables["table"].n_obs == slide.n_obs
