"""Model directories: save/load round trip, scGPT import with an explicit key map, loud failures."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers.scgpt_checkpoint import scgpt_human_state, write_scgpt_dir
from spgpt_core import SpGPT, load_model
from spgpt_core.errors import CheckpointError
from spgpt_core.pp.tokenize import GeneStats


def _same_weights(a, b):
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_and_load_round_trip(tmp_path, tiny_model):
    tiny_model.gene_stats = GeneStats.empty(len(tiny_model.vocab))
    tiny_model.gene_stats.means[[5, 17]] = [1.5, 0.25]
    d = tiny_model.save_pretrained(tmp_path / "m")
    assert {p.name for p in d.iterdir()} == {"config.json", "model.safetensors", "vocab.json", "gene_stats.csv",
                                             "metadata.json"}
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["versions"]["torch"].startswith("2.") and "spgpt" in meta["versions"]
    back = SpGPT.from_pretrained(d)
    assert _same_weights(tiny_model, back)
    assert back.config == tiny_model.config
    assert back.gene_stats.means[17] == 0.25 and back.gene_stats.n_known == 2
    with pytest.raises(CheckpointError, match="already exists"):
        tiny_model.save_pretrained(d)
    tiny_model.gene_stats = None


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path, tiny_model):
    full = tiny_model.save_pretrained(tmp_path / "fp32")
    half = tiny_model.save_pretrained(tmp_path / "fp16", storage_dtype="float16")
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    assert json.loads((half / "config.json").read_text())["storage_dtype"] == "float16"
    back = SpGPT.from_pretrained(half)
    sa, sb = tiny_model.module.state_dict(), back.module.state_dict()
    for k in sa:
        assert sb[k].dtype == sa[k].dtype
        if sa[k].is_floating_point():
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-3, atol=1e-4)
    ids = torch.tensor([[tiny_model.vocab.cls_id, 5, 9, 17]])
    vals = torch.tensor([[0.0, 3.0, 1.0, 7.0]])
    pad = torch.zeros_like(ids, dtype=torch.bool)
    with torch.no_grad():
        a = tiny_model.module.eval().spot_embedding(ids, vals, pad)
        b = back.module.eval().spot_embedding(ids, vals, pad)
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="storage_dtype"):
        tiny_model.save_pretrained(tmp_path / "bad", storage_dtype="int8")


def test_load_model_specs(tmp_path):
    m = load_model("random:tiny:3", device="cpu")
    assert m.config.d_model == 32 and m.metadata["source"] == "random:tiny:3"
    with pytest.raises(CheckpointError, match="unknown model size"):
        load_model("random:huge")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_broken_spgpt_directories_fail_loudly(tmp_path, tiny_model):
    d = tiny_model.save_pretrained(tmp_path / "m")
    bad = tmp_path / "missing"
    shutil.copytree(d, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        SpGPT.from_pretrained(bad)

    trunc = tmp_path / "trunc"
    shutil.copytree(d, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SpGPT.from_pretrained(trunc)

    vocab = tmp_path / "vocab"
    shutil.copytree(d, vocab)
    v = json.loads((vocab / "vocab.json").read_text())
    a, b = "GAD1", "GAD2"
    v[a], v[b] = v[b], v[a]
    (vocab / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(CheckpointError, match="does not match the vocabulary"):
        SpGPT.from_pretrained(vocab)

    cfg = tmp_path / "cfg"
    shutil.copytree(d, cfg)
    c = json.loads((cfg / "config.json").read_text())
    c["config"]["n_layer"] = 3
    (cfg / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        SpGPT.from_pretrained(cfg)

    layers = tmp_path / "layers"
    shutil.copytree(d, layers)
    c = json.loads((layers / "config.json").read_text())
    c["config"]["n_layers"] = 3
    (layers / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"missing weights layers\.2\."):
        SpGPT.from_pretrained(layers)


@pytest.fixture(scope="module")
def scgpt_dir(tmp_path_factory):
    return write_scgpt_dir(tmp_path_factory.mktemp("scgpt") / "scGPT_human", d=32, nheads=4, d_hid=48, nlayers=2)


def test_scgpt_human_import_is_strict_and_exact(scgpt_dir):
    m = SpGPT.from_pretrained(scgpt_dir)
    state = torch.load(scgpt_dir / "best_model.pt", weights_only=True)
    own = m.module.state_dict()
    torch.testing.assert_close(own["layers.1.attn.qkv.weight"], state["transformer_encoder.layers.1.self_attn.Wqkv.weight"])
    torch.testing.assert_close(own["gene_encoder.embedding.weight"], state["encoder.embedding.weight"])
    # experts start from the single decoder; modality columns are zero, so the decoder computes what scGPT's did
    w0 = own["moe_decoder.experts.2.fc.0.weight"]
    torch.testing.assert_close(w0[:, :32], state["decoder.fc.0.weight"])
    assert (w0[:, 32:] == 0).all()
    torch.testing.assert_close(own["geps_inter.gene2query.weight"], state["mvc_decoder.gene2query.weight"])
    assert m.gene_stats is None  # scGPT-human has no gene statistics -> no gene normalisation
    assert m.metadata["imported_from"] == "scgpt-human"
    h = torch.randn(5, m.config.d_decoder_in)
    h[:, 32:] = torch.randn(5, m.config.d_modality)  # any modality embedding
    ref = torch.nn.functional.leaky_relu(h[:, :32] @ state["decoder.fc.0.weight"].T + state["decoder.fc.0.bias"])
    ref = torch.nn.functional.leaky_relu(ref @ state["decoder.fc.2.weight"].T + state["decoder.fc.2.bias"])
    ref = (ref @ state["decoder.fc.4.weight"].T + state["decoder.fc.4.bias"]).squeeze(-1)
    with torch.no_grad():
        out, _ = m.module.moe_decoder(h)
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=0)  # experts differ only by 1e-3 noise on the last layer


def test_scgpt_import_accepts_module_prefix_and_in_proj_names(tmp_path):
    d = write_scgpt_dir(tmp_path / "ddp", d=32, nheads=4, d_hid=48, nlayers=1)
    state = torch.load(d / "best_model.pt", weights_only=True)
    renamed = {}
    for k, v in state.items():
        k = k.replace("self_attn.Wqkv.weight", "self_attn.in_proj_weight").replace("self_attn.Wqkv.bias", "self_attn.in_proj_bias")
        renamed["module." + k] = v
    renamed["module.cls_decoder.out_layer.weight"] = torch.zeros(3, 32)  # scGPT main's unused head is dropped
    torch.save(renamed, d / "best_model.pt")
    m = SpGPT.from_pretrained(d)
    torch.testing.assert_close(m.module.state_dict()["layers.0.attn.qkv.weight"],
                               state["transformer_encoder.layers.0.self_attn.Wqkv.weight"])


def test_scgpt_import_fails_loudly(tmp_path):
    d = write_scgpt_dir(tmp_path / "m", d=32, nheads=4, d_hid=48, nlayers=2)
    state = torch.load(d / "best_model.pt", weights_only=True)

    removed = dict(state)
    del removed["transformer_encoder.layers.1.linear2.weight"]
    torch.save(removed, d / "best_model.pt")
    with pytest.raises(CheckpointError, match=r"lacks weights layers\.1\.linear2\.weight"):
        SpGPT.from_pretrained(d)

    extra = dict(state, **{"batch_encoder.embedding.weight": torch.zeros(4, 32)})
    torch.save(extra, d / "best_model.pt")
    with pytest.raises(CheckpointError, match="unexpected tensors.*batch_encoder"):
        SpGPT.from_pretrained(d)

    torch.save(state, d / "best_model.pt")
    v = json.loads((d / "vocab.json").read_text())
    v["MYNEWGENE"] = len(v)
    (d / "vocab.json").write_text(json.dumps(v))
    with pytest.raises(CheckpointError, match="mismatched vocabulary"):
        SpGPT.from_pretrained(d)

    (d / "args.json").unlink()
    with pytest.raises(CheckpointError, match="missing args.json"):
        SpGPT.from_pretrained(d)

    corrupt = write_scgpt_dir(tmp_path / "c", d=32, nheads=4, d_hid=48, nlayers=1)
    (corrupt / "best_model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        SpGPT.from_pretrained(corrupt)


def test_scgpt_spatial_import_with_gene_stats(tmp_path):
    d = write_scgpt_dir(tmp_path / "spatial", d=32, nheads=4, d_hid=48, nlayers=1, spatial=True,
                        gene_means={100: 2.0, 2000: 0.5})
    m = SpGPT.from_pretrained(d)
    state = torch.load(d / "best_model.pt", weights_only=True)
    own = m.module.state_dict()
    torch.testing.assert_close(own["moe_decoder.experts.3.fc.4.weight"], state["decoder.moe.experts.3.fc.4.weight"])
    torch.testing.assert_close(own["moe_decoder.gate.weight"][:, :32], state["decoder.moe.gate.gate.weight"])
    torch.testing.assert_close(own["geps_inter.W.weight"][:32], state["impute_mvc_decoder.W.weight"])
    assert m.metadata["imported_from"] == "scgpt-spatial"
    assert m.gene_stats.means[2000] == 0.5 and m.gene_stats.n_known == 2
    # an imported model saves as an spgpt directory and loads back identically
    back = SpGPT.from_pretrained(m.save_pretrained(tmp_path / "converted"))
    assert _same_weights(m, back) and back.gene_stats.n_known == 2


def test_state_table_matches_documented_parameter_count():
    # ~53M parameters for the released scGPT-human (facts §1.4); our documented key table must agree
    s = scgpt_human_state(60697, 512, 512, 12)
    n = sum(v.numel() for v in s.values())
    assert 50e6 < n < 54e6
    m = SpGPT.random("scgpt-human")
    own = sum(p.numel() for p in m.module.parameters())
    assert own > n  # plus modality embedding, 4 experts, gate and GEPS-inter
    assert np.isclose(m.config.d_model, 512)


def test_describe_counts_the_steps_of_every_training_stage():
    m = SpGPT.random("tiny")
    m.metadata = {"training": {"steps": 5}, "init_model": {"training": {"steps": 7}, "init_model": {"size": "tiny"}}}
    assert m.describe()["training_steps"] == 12
    m.metadata = {"source": "random:tiny"}
    assert "training_steps" not in m.describe()
