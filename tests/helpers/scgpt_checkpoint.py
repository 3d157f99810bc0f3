"""Write a scGPT-human-format checkpoint directory with random weights and the released key names.

The key table is taken from the reference facts (§3.2), independently of spgpt's import map, so
the import is tested against the documented layout rather than against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def scgpt_human_state(ntoken: int, d: int, d_hid: int, nlayers: int, seed: int = 0, spatial: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / (shape[-1] ** 0.5)
        return torch.randn(*shape, generator=g) * scale

    s = {
        "encoder.embedding.weight": r(ntoken, d, scale=0.1),
        "encoder.enc_norm.weight": 1 + 0.1 * r(d, scale=1), "encoder.enc_norm.bias": 0.1 * r(d, scale=1),
        "flag_encoder.weight": r(2, d),
        "value_encoder.linear1.weight": r(d, 1, scale=1.0), "value_encoder.linear1.bias": r(d, scale=0.1),
        "value_encoder.linear2.weight": r(d, d), "value_encoder.linear2.bias": r(d, scale=0.1),
        "value_encoder.norm.weight": 1 + 0.1 * r(d, scale=1), "value_encoder.norm.bias": 0.1 * r(d, scale=1),
        "mvc_decoder.gene2query.weight": r(d, d), "mvc_decoder.gene2query.bias": r(d, scale=0.1),
        "mvc_decoder.W.weight": r(d, d),
    }
    for i in range(nlayers):
        p = f"transformer_encoder.layers.{i}."
        s.update({
            p + "self_attn.Wqkv.weight": r(3 * d, d), p + "self_attn.Wqkv.bias": r(3 * d, scale=0.1),
            p + "self_attn.out_proj.weight": r(d, d), p + "self_attn.out_proj.bias": r(d, scale=0.1),
            p + "linear1.weight": r(d_hid, d), p + "linear1.bias": r(d_hid, scale=0.1),
            p + "linear2.weight": r(d, d_hid), p + "linear2.bias": r(d, scale=0.1),
            p + "norm1.weight": 1 + 0.1 * r(d, scale=1), p + "norm1.bias": 0.1 * r(d, scale=1),
            p + "norm2.weight": 1 + 0.1 * r(d, scale=1), p + "norm2.bias": 0.1 * r(d, scale=1),
        })
    if spatial:
        for e in range(4):
            p = f"decoder.moe.experts.{e}.fc."
            s.update({p + "0.weight": r(d, d), p + "0.bias": r(d, scale=0.1), p + "2.weight": r(d, d),
                      p + "2.bias": r(d, scale=0.1), p + "4.weight": r(1, d), p + "4.bias": r(1, scale=0.1)})
        s.update({"decoder.moe.gate.gate.weight": r(4, d), "decoder.moe.gate.gate.bias": r(4, scale=0.1),
                  "impute_mvc_decoder.gene2query.weight": r(d, d), "impute_mvc_decoder.gene2query.bias": r(d, scale=0.1),
                  "impute_mvc_decoder.W.weight": r(d, d)})
    else:
        s.update({"decoder.fc.0.weight": r(d, d), "decoder.fc.0.bias": r(d, scale=0.1),
                  "decoder.fc.2.weight": r(d, d), "decoder.fc.2.bias": r(d, scale=0.1),
                  "decoder.fc.4.weight": r(1, d), "decoder.fc.4.bias": r(1, scale=0.1)})
    return s


def write_scgpt_dir(path: Path, *, d: int = 32, nheads: int = 4, d_hid: int = 48, nlayers: int = 2,
                    max_seq_len: int = 1200, seed: int = 0, spatial: bool = False, gene_means: dict | None = None) -> Path:
    """A released-style folder: best_model.pt (plain state dict), args.json, vocab.json [+ all_dict_mean_std.csv]."""
    from spgpt_core.pp.vocab import GeneVocab

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = GeneVocab.default()
    vocab.save(path / "vocab.json")
    torch.save(scgpt_human_state(len(vocab), d, d_hid, nlayers, seed, spatial), path / "best_model.pt")
    args = {"embsize": d, "nheads": nheads, "d_hid": d_hid, "nlayers": nlayers, "n_layers_cls": 3, "dropout": 0.2,
            "pad_token": "<pad>", "pad_value": -2, "mask_value": -1, "n_bins": 51, "max_seq_len": max_seq_len,
            "input_emb_style": "continuous", "fast_transformer": True, "USE_GENERATIVE_TRAINING": True}
    (path / "args.json").write_text(json.dumps(args))
    if gene_means is not None:
        import pandas as pd

        pd.DataFrame({"mean": list(gene_means.values())}, index=list(gene_means.keys())).to_csv(
            path / "all_dict_mean_std.csv")
    return path
