"""The output heads of the scGPT-spatial network: the mixture-of-experts GEP decoder (Eq. 7, 8) and the
GEPS spot decoders (Eq. 10-12) with the neighbourhood mean GEPS-inter reads. Parts of
:class:`spgpt_core.model.SpGPTModel`, kept in their own file so the encoder reads on one screen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .model import SpGPTConfig


class Expert(nn.Module):
    """One MoE expert: the 3-layer MLP of scGPT's expression decoder."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.LeakyReLU(), nn.Linear(d_hidden, d_hidden), nn.LeakyReLU(),
            nn.Linear(d_hidden, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h).squeeze(-1)


class MoEDecoder(nn.Module):
    """Top-k mixture of experts per gene token (Eq. 7, 8).

    All experts run on every token (dense: 4 small MLPs, simpler and as fast as dispatch at this
    size); the gate's top-k probabilities are renormalised to sum to 1 and weight the experts.
    ``balance_loss`` is the Switch-Transformer load-balancing term (E * sum_e f_e P_e); the paper
    and the reference use none, so training weights it 0 by default.
    """

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.top_k = cfg.top_k
        self.experts = nn.ModuleList(Expert(cfg.d_decoder_in, cfg.d_model) for _ in range(cfg.n_experts))
        self.gate = nn.Linear(cfg.d_decoder_in, cfg.n_experts)

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (gate probabilities, renormalised top-k weights), both (..., E)."""
        probs = self.gate(h).softmax(dim=-1)
        top = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
        return probs, weights / weights.sum(dim=-1, keepdim=True)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h (..., d_in) -> (prediction (...), balance loss scalar). ``mask`` marks real tokens."""
        probs, weights = self.route(h)
        preds = torch.stack([e(h) for e in self.experts], dim=-1)
        out = (weights * preds).sum(-1)
        m = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device) if mask is None else mask.to(h.dtype)
        denom = m.sum().clamp(min=1.0)
        frac_routed = ((weights > 0).to(h.dtype) * m.unsqueeze(-1)).sum(dim=tuple(range(m.dim()))) / denom
        mean_prob = (probs * m.unsqueeze(-1)).sum(dim=tuple(range(m.dim()))) / denom
        balance = probs.shape[-1] * (frac_routed / self.top_k * mean_prob).sum()
        return out, balance


class SpotDecoder(nn.Module):
    """GEPS head: predict gene values from a spot(-neighbourhood) embedding (Eq. 10, 12)."""

    def __init__(self, cfg: SpGPTConfig):
        super().__init__()
        self.gene2query = nn.Linear(cfg.d_model, cfg.d_model)
        self.W = nn.Linear(cfg.d_model, cfg.d_decoder_in, bias=False)

    def forward(self, spot: torch.Tensor, gene_emb: torch.Tensor) -> torch.Tensor:
        """spot (B, d_in), gene_emb (B, Q, d) -> (B, Q)."""
        q = torch.sigmoid(self.gene2query(gene_emb))
        return torch.einsum("bqd,bd->bq", self.W(q), spot)


def neighbour_mean(spot: torch.Tensor, coords: torch.Tensor, k: int) -> torch.Tensor:
    """Mean spot embedding of each spot's k nearest spatial neighbours within the batch (Eq. 11).

    Gradients flow into the neighbours' embeddings. ``k`` is capped at batch size - 1.
    """
    B = spot.shape[0]
    k = min(k, B - 1)
    if k < 1:
        raise ValueError("GEPS-inter needs at least 2 spots per patch")
    d = torch.cdist(coords.float(), coords.float())
    d.fill_diagonal_(float("inf"))
    nbr = d.topk(k, dim=1, largest=False).indices  # (B, k)
    return spot[nbr].mean(dim=1)
