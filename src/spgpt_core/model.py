"""The scGPT-spatial network as one readable pure-torch module.

Architecture (paper Methods 4.2, reference facts §1.5-1.8):

* token input = LayerNorm(gene embedding) + value encoder(binned value); ``<cls>`` first with value
  ``pad_value``; no positional encoding (a cell is a set of genes).
* post-norm transformer encoder (ReLU FFN) with *generative masked attention*: context tokens
  (``<cls>`` + expressed genes) attend to context only; query tokens attend to the context and to
  themselves, never to other query tokens. Query tokens carry no value: gene embedding + a learned
  "query" flag embedding.
* a modality embedding concatenated to every gene-wise output and to the spot embedding (Eq. 5, 6).
* GEP: a mixture-of-experts decoder (4 three-layer MLP experts, linear softmax gate, top-2
  renormalised; Eq. 7, 8) predicts query-gene values from ``concat(h_query, emb_m)``.
* GEPS-intra / GEPS-inter: ``x_j = q_j . W h`` with ``q_j = sigmoid(Linear(emb_g(gene_j)))`` and
  ``h`` the spot embedding (intra) or the mean spot embedding of the spot's k nearest spatial
  neighbours in the patch (inter; Eq. 10-12).
* ECS (elastic cell similarity) for fine-tuning.

The decoder heads (MoE, GEPS) are in :mod:`spgpt_core.heads`; this module builds the network from them.

Deviations from the reference code (the paper is silent on both): the reference skips the attention
output projection for query tokens; here every token goes through ``out_proj``. Dropout is applied
to embeddings, residual branches and the FFN but not to attention probabilities by default
(``attn_dropout=0``), which keeps torch's fused attention kernels (5x faster on CPU in training).
The spot embedding users get is the final-layer ``<cls>`` state (D dims, L2-normalised by the
caller), exactly as the reference ``embed_data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .heads import MoEDecoder, SpotDecoder, neighbour_mean

from .pp.modality import MODALITIES


@dataclass
class SpGPTConfig:
    """Shape and token conventions of a model. Saved as ``config.json`` in a model directory."""

    vocab_size: int = 60697
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ffn: int = 512
    dropout: float = 0.2  # on embeddings, residual branches and the FFN
    attn_dropout: float = 0.0  # on attention probabilities; >0 forces torch's slow unfused attention
    pad_token_id: int = 60694
    cls_token_id: int = 60695
    pad_value: float = -2.0
    mask_value: float = -1.0
    n_bins: int = 51
    max_value: float = 512.0  # value-encoder input clamp, as in scGPT
    max_seq_len: int = 1200  # tokens per cell at embedding time, <cls> included
    n_modalities: int = len(MODALITIES)
    d_modality: int = 512
    n_experts: int = 4
    top_k: int = 2
    ecs_threshold: float = 0.8
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be in 1..n_experts={self.n_experts}")

    @property
    def d_decoder_in(self) -> int:
        return self.d_model + self.d_modality

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpGPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# Named sizes. "scgpt-human" matches the released checkpoint (about 53M parameters, 31M of them the
# gene embedding table). The small sizes keep the full vocabulary so token ids stay compatible.
PRESETS: dict[str, dict] = {
    "scgpt-human": dict(d_model=512, n_layers=12, n_heads=8, d_ffn=512, d_modality=512, dropout=0.2),
    # the shipped default model: sized for CPUs (checkpoint < 25 MB, a 4,000-spot slide in < 1 min)
    "base-cpu": dict(d_model=64, n_layers=4, n_heads=2, d_ffn=128, d_modality=32, dropout=0.1, max_seq_len=384),
    "small": dict(d_model=128, n_layers=4, n_heads=4, d_ffn=256, d_modality=64, dropout=0.1, max_seq_len=600),
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, d_ffn=64, d_modality=16, dropout=0.0, max_seq_len=256),
}


def preset_config(name: str, **overrides) -> SpGPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; choose one of {sorted(PRESETS)}")
    return SpGPTConfig(**{**PRESETS[name], **overrides})


class GeneEncoder(nn.Module):
    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(genes))


class ValueEncoder(nn.Module):
    """Continuous value encoder: an MLP on the scalar bin value (incl. -1 mask / -2 pad)."""

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.max_value = cfg.max_value
        self.linear1 = nn.Linear(1, cfg.d_model)
        self.linear2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.unsqueeze(-1).clamp(max=self.max_value)
        x = self.linear2(F.relu(self.linear1(x)))
        return self.dropout(self.norm(x))


class Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (scGPT's ``Wqkv`` layout).

    Generative masked attention without materialising an L x L mask: the first ``n_ctx`` tokens
    (context) attend to the context through SDPA; each query token attends to the context and to
    itself, computed as a softmax over [query.context keys, query.own key]. That is the paper's mask
    (Methods 4.2.1) at the cost of P^2 + Q.P scores instead of (P + Q)^2.
    """

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.attn_dropout

    def forward(self, x: torch.Tensor, n_ctx: int, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, d); ctx_mask: None or (B, 1, 1, n_ctx) bool, True = a real (non-padded) context key."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        p_drop = self.dropout if self.training else 0.0
        qc, kc, vc = q[:, :, :n_ctx], k[:, :, :n_ctx], v[:, :, :n_ctx]
        y = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=ctx_mask, dropout_p=p_drop)
        if L > n_ctx:
            qq, kq, vq = q[:, :, n_ctx:], k[:, :, n_ctx:], v[:, :, n_ctx:]
            scale = qq.shape[-1] ** -0.5
            s_ctx = (qq @ kc.transpose(-1, -2)) * scale  # (B, H, Q, P)
            if ctx_mask is not None:
                s_ctx = s_ctx.masked_fill(~ctx_mask, float("-inf"))
            s_self = (qq * kq).sum(-1, keepdim=True) * scale  # (B, H, Q, 1)
            p = torch.cat([s_ctx, s_self], dim=-1).softmax(dim=-1)
            p = F.dropout(p, p_drop, self.training)
            yq = p[..., :n_ctx] @ vc + p[..., n_ctx:] * vq
            y = torch.cat([y, yq], dim=2)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, D))

    def forward_first(self, x: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        """Output of token 0 alone (B, 1, d), every token a context token: keys and values for all,
        the query for token 0 only. What the ``<cls>`` state needs from the last layer."""
        B, L, D = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:D], b[:D]).view(B, 1, self.n_heads, D // self.n_heads).transpose(1, 2)
        k, v = F.linear(x, w[D:], b[D:]).view(B, L, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, 1, D))


class Block(nn.Module):
    """Post-norm transformer layer, as in the released scGPT checkpoints."""

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_ffn)
        self.linear2 = nn.Linear(cfg.d_ffn, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, n_ctx: int, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        return self._feed_forward(self.norm1(x + self.dropout(self.attn(x, n_ctx, ctx_mask))))

    def forward_first(self, x: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        """``forward(x)[:, :1]`` without query tokens: the rest of the sequence is computed only as keys
        and values, everything else for token 0 alone."""
        return self._feed_forward(self.norm1(x[:, :1] + self.dropout(self.attn.forward_first(x, ctx_mask))))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


def context_mask(pad_mask: torch.Tensor) -> torch.Tensor | None:
    """(B, 1, 1, P) True for real context keys, or None when nothing is padded (SDPA's fast path).
    Padded query rows need no mask: they see the context and themselves, and nothing reads them."""
    return (~pad_mask)[:, None, None, :] if bool(pad_mask.any()) else None


class SpGPTModel(nn.Module):
    """The scGPT-spatial network. Pure torch: no data handling, no I/O."""

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.gene_encoder = GeneEncoder(cfg)
        self.value_encoder = ValueEncoder(cfg)
        self.flag_embedding = nn.Embedding(2, cfg.d_model)  # row 1 marks query (to-generate) tokens
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.modality_embedding = nn.Embedding(cfg.n_modalities, cfg.d_modality)
        self.moe_decoder = MoEDecoder(cfg)
        self.geps_intra = SpotDecoder(cfg)
        self.geps_inter = SpotDecoder(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # scGPT initialises only the gene embedding specially (uniform +-0.1); torch defaults elsewhere.
        nn.init.uniform_(self.gene_encoder.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.gene_encoder.embedding.weight[self.cfg.pad_token_id].zero_()
        nn.init.normal_(self.modality_embedding.weight, std=0.02)

    def encode(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        pad_mask: torch.Tensor,
        query_genes: torch.Tensor | None = None,
        n_layers: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the encoder.

        genes/values/pad_mask: (B, P) context tokens with ``<cls>`` at position 0 (pad_mask True =
        padding). query_genes: (B, Q) genes to generate (padded positions may hold any id; their
        outputs are ignored by the losses), or None for pure embedding. ``n_layers``: run only the
        first n transformer layers (None: all). Returns (context states (B, P, d), query states
        (B, Q, d) or None).
        """
        x = self.gene_encoder(genes) + self.value_encoder(values)
        P = x.shape[1]
        if query_genes is not None and query_genes.shape[1] == 0:
            query_genes = None
        if query_genes is not None:
            xq = self.gene_encoder(query_genes) + self.flag_embedding.weight[1]
            x = torch.cat([x, xq], dim=1)
        ctx_mask = context_mask(pad_mask)
        for layer in self.layers[:n_layers]:
            x = layer(x, P, ctx_mask)
        return x[:, :P], (x[:, P:] if query_genes is not None else None)

    def spot_embedding(self, genes, values, pad_mask, layer: int = -1) -> torch.Tensor:
        """``<cls>`` state (B, d), not normalised, after transformer layer ``layer`` (1-based;
        -1, the default and the paper's choice: the final layer)."""
        n = self.layers_to_run(layer) or len(self.layers)
        x = self.encode(genes, values, pad_mask, n_layers=n - 1)[0]
        return self.layers[n - 1].forward_first(x, context_mask(pad_mask))[:, 0]

    def layers_to_run(self, layer: int) -> int | None:
        """``encode``'s ``n_layers`` for a 1-based ``layer`` (-1: all); ValueError when out of range."""
        n = len(self.layers)
        if layer != -1 and not 1 <= layer <= n:
            raise ValueError(f"layer must be -1 (the final layer) or 1..{n} for this model (got {layer})")
        return None if layer == -1 else layer

    def with_modality(self, h: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Concatenate the modality embedding to (B, d) or (B, Q, d) states (Eq. 5, 6)."""
        m = self.modality_embedding(modality)
        if h.dim() == 3:
            m = m.unsqueeze(1).expand(-1, h.shape[1], -1)
        return torch.cat([h, m], dim=-1)

    def forward(
        self,
        genes: torch.Tensor,
        values: torch.Tensor,
        pad_mask: torch.Tensor,
        query_genes: torch.Tensor,
        query_pad_mask: torch.Tensor,
        modality: torch.Tensor,
        coords: torch.Tensor | None = None,
        k_neighbours: int = 6,
    ) -> dict[str, torch.Tensor]:
        """Training forward pass over one patch: predictions for every objective.

        Returns ``spot`` (B, d), ``gep`` (B, Q) from the MoE decoder, ``geps_intra`` (B, Q) and,
        when ``coords`` (B, 2) are given, ``geps_inter`` (B, Q); plus ``moe_balance``.
        """
        ctx, qry = self.encode(genes, values, pad_mask, query_genes)
        spot = ctx[:, 0]
        spot_m = self.with_modality(spot, modality)
        gep, balance = self.moe_decoder(self.with_modality(qry, modality), ~query_pad_mask)
        gene_emb = self.gene_encoder(query_genes)
        out = {"spot": spot, "gep": gep, "geps_intra": self.geps_intra(spot_m, gene_emb), "moe_balance": balance}
        if coords is not None:
            out["geps_inter"] = self.geps_inter(neighbour_mean(spot_m, coords, k_neighbours), gene_emb)
        return out


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over positions where ``mask`` is True (Eq. 9, 10, 12)."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1.0)


def ecs_loss(spot: torch.Tensor, threshold: float) -> torch.Tensor:
    """Elastic cell similarity (scGPT): push cosine similarities away from ``threshold``."""
    e = F.normalize(spot, dim=1)
    cos = e @ e.T
    cos = cos.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0.0).relu()
    return (1 - (cos - threshold) ** 2).mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_flops_per_token(cfg: SpGPTConfig, seq_len: int, embedding: bool = False) -> float:
    """Forward FLOPs per token of the encoder (2 per multiply-add), used by the benchmarks.

    ``embedding``: as :meth:`SpGPTModel.spot_embedding` computes it, the last layer only as keys and
    values (its ``<cls>`` row, one token in ``seq_len``, is left out)."""
    d, f = cfg.d_model, cfg.d_ffn
    per_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * seq_len * d  # projections + FFN + QK^T and AV
    if embedding:
        return (cfg.n_layers - 1) * per_layer + 2 * 2 * d * d + 2 * d * d
    return cfg.n_layers * per_layer + 2 * d * d  # + value encoder's d x d layer


__all__ = [
    "SpGPTConfig", "SpGPTModel", "PRESETS", "preset_config", "masked_mse", "ecs_loss",
    "neighbour_mean", "count_parameters", "matmul_flops_per_token",
]
