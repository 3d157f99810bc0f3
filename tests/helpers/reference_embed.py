"""A re-creation of the reference scGPT / scGPT-spatial embedding path, for comparison only.

Written from the documented behaviour (../shared/reference/scgpt-reference-facts.md §1.5, 1.8,
2.1, 2.3, 2.5a, 4.1), not from the reference code, and kept deliberately naive in the same ways:

* the whole matrix is densified;
* each cell is normalised, binned (``np.quantile`` + ``np.digitize``, random tie-breaking from
  the global numpy RNG) and subsampled (``torch.randperm``) one by one in Python;
* every batch is padded to its longest cell;
* the encoder is ``torch.nn.TransformerEncoder`` (post-norm, ReLU) with the checkpoint's packed
  ``Wqkv`` loaded as ``in_proj_weight``: an implementation independent of ``spgpt_core.model``.

Used by ``tests/test_reference_parity.py`` (numerical parity of an imported scGPT-human directory)
and ``bench/embed.py`` (throughput baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ReferenceEncoder(nn.Module):
    def __init__(self, ntoken: int, d: int, nhead: int, d_hid: int, nlayers: int, pad_id: int):
        super().__init__()
        self.embedding = nn.Embedding(ntoken, d, padding_idx=pad_id)
        self.enc_norm = nn.LayerNorm(d)
        self.v1 = nn.Linear(1, d)
        self.v2 = nn.Linear(d, d)
        self.vnorm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(d, nhead, d_hid, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)

    def load_scgpt(self, state: dict[str, torch.Tensor]) -> None:
        m = {"embedding.weight": "encoder.embedding.weight", "enc_norm.weight": "encoder.enc_norm.weight",
             "enc_norm.bias": "encoder.enc_norm.bias", "v1.weight": "value_encoder.linear1.weight",
             "v1.bias": "value_encoder.linear1.bias", "v2.weight": "value_encoder.linear2.weight",
             "v2.bias": "value_encoder.linear2.bias", "vnorm.weight": "value_encoder.norm.weight",
             "vnorm.bias": "value_encoder.norm.bias"}
        own = {k: state[v] for k, v in m.items()}
        for i in range(len(self.encoder.layers)):
            p = f"transformer_encoder.layers.{i}."
            q = f"encoder.layers.{i}."
            own[q + "self_attn.in_proj_weight"] = state[p + "self_attn.Wqkv.weight"]
            own[q + "self_attn.in_proj_bias"] = state[p + "self_attn.Wqkv.bias"]
            for name in ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight", "linear1.bias",
                         "linear2.weight", "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
                own[q + name] = state[p + name]
        self.load_state_dict(own, strict=True)

    def forward(self, genes, values, pad):
        x = self.enc_norm(self.embedding(genes))
        v = self.vnorm(self.v2(torch.relu(self.v1(values.unsqueeze(-1).clamp(max=512)))))
        return self.encoder(x + v, src_key_padding_mask=pad)[:, 0]


def _bin_cell(values: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    return np.ceil(np.random.rand(len(values)) * (right - left) + left)


def reference_embed(X, gene_ids: np.ndarray, model_dir: Path, *, batch_size: int = 64, gene_means=None,
                    seed: int = 0) -> np.ndarray:
    """Embed the rows of X (columns = vocab ids ``gene_ids``) the way the reference does."""
    model_dir = Path(model_dir)
    args = json.loads((model_dir / "args.json").read_text())
    vocab = json.loads((model_dir / "vocab.json").read_text())
    pad_id, cls_id = vocab["<pad>"], vocab["<cls>"]
    state = torch.load(model_dir / "best_model.pt", map_location="cpu", weights_only=True)
    model = ReferenceEncoder(len(vocab), args["embsize"], args["nheads"], args["d_hid"], args["nlayers"], pad_id)
    model.load_scgpt(state)
    model.eval()
    np.random.seed(seed)
    torch.manual_seed(seed)
    dense = X.toarray() if hasattr(X, "toarray") else np.asarray(X)  # the reference densifies
    dense = dense.astype(np.float64)
    dense = dense / dense[dense > 0].mean()  # slide-level mean normalisation (rank-neutral)
    max_len = args.get("max_seq_len", 1200)
    pad_value = args.get("pad_value", -2)
    cells = []
    for row in dense:
        idx = np.flatnonzero(row)
        vals = row[idx] / (gene_means[idx] if gene_means is not None else 1.0)
        g = np.concatenate([[cls_id], gene_ids[idx]])
        v = np.concatenate([[pad_value], _bin_cell(vals, args.get("n_bins", 51))])
        if len(g) > max_len:
            keep = torch.randperm(len(g) - 1)[: max_len - 1].numpy() + 1
            g, v = np.concatenate([g[:1], g[keep]]), np.concatenate([v[:1], v[keep]])
        cells.append((g, v))
    out = []
    with torch.no_grad():
        for s in range(0, len(cells), batch_size):
            batch = cells[s : s + batch_size]
            L = max(len(g) for g, _ in batch)
            genes = torch.full((len(batch), L), pad_id, dtype=torch.long)
            values = torch.full((len(batch), L), float(pad_value))
            for i, (g, v) in enumerate(batch):
                genes[i, : len(g)] = torch.from_numpy(g)
                values[i, : len(v)] = torch.from_numpy(v).float()
            h = model(genes, values, genes == pad_id)
            out.append(torch.nn.functional.normalize(h, dim=1).numpy())
    return np.concatenate(out)
