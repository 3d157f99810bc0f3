"""The network: masked attention semantics, padding invariance, MoE routing, GEPS heads, ECS."""

import pytest
import torch

from spgpt_core.model import SpGPTConfig, SpGPTModel, ecs_loss, masked_mse, neighbour_mean, preset_config


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    cfg = preset_config("tiny", vocab_size=100, pad_token_id=98, cls_token_id=99, dropout=0.0)
    return SpGPTModel(cfg).eval()


def _cells(B=3, P=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    genes = torch.randint(0, 90, (B, P), generator=g)
    genes[:, 0] = 99
    values = torch.randint(1, 51, (B, P), generator=g).float()
    values[:, 0] = -2
    return genes, values, torch.zeros(B, P, dtype=torch.bool)


def test_query_token_output_ignores_other_query_tokens(net):
    genes, values, pad = _cells()
    q = torch.randint(0, 90, (3, 5))
    ctx1, out1 = net.encode(genes, values, pad, q)
    q2 = q.clone()
    q2[:, 1:] = torch.randint(0, 90, (3, 4))  # change every query token except the first
    ctx2, out2 = net.encode(genes, values, pad, q2)
    torch.testing.assert_close(out1[:, 0], out2[:, 0])
    torch.testing.assert_close(ctx1, ctx2)  # context never sees query tokens
    assert not torch.allclose(out1[:, 1], out2[:, 1])


def test_context_changes_reach_query_tokens(net):
    genes, values, pad = _cells()
    q = torch.randint(0, 90, (3, 4))
    _, out1 = net.encode(genes, values, pad, q)
    values2 = values.clone()
    values2[:, 3] = values2[:, 3] % 50 + 1
    _, out2 = net.encode(genes, values2, pad, q)
    assert not torch.allclose(out1, out2)


def test_query_free_pass_equals_context_part_of_generative_pass(net):
    genes, values, pad = _cells()
    emb = net.spot_embedding(genes, values, pad)
    ctx, _ = net.encode(genes, values, pad, torch.randint(0, 90, (3, 6)))
    torch.testing.assert_close(emb, ctx[:, 0])


def test_cls_only_last_layer_equals_the_full_pass_with_ragged_padding(net):
    """spot_embedding computes the last layer for <cls> alone; with padded cells of different
    lengths in one batch it must equal the <cls> row of the full layer stack."""
    genes, values, pad = _cells(B=4, P=9, seed=3)
    pad[1, -3:] = True
    pad[2, -1:] = True
    genes[pad], values[pad] = 98, -2.0
    for layer in range(1, len(net.layers) + 1):
        x = net.gene_encoder(genes) + net.value_encoder(values)
        for block in net.layers[:layer]:
            x = block(x, x.shape[1], (~pad)[:, None, None, :])
        torch.testing.assert_close(net.spot_embedding(genes, values, pad, layer=layer), x[:, 0])


def test_spot_embedding_layer_reads_the_cls_state_after_that_layer(net):
    genes, values, pad = _cells()
    n = len(net.layers)
    torch.testing.assert_close(net.spot_embedding(genes, values, pad, layer=n), net.spot_embedding(genes, values, pad))
    x = net.gene_encoder(genes) + net.value_encoder(values)
    x = net.layers[0](x, x.shape[1], None)
    torch.testing.assert_close(net.spot_embedding(genes, values, pad, layer=1), x[:, 0])
    assert not torch.allclose(net.spot_embedding(genes, values, pad, layer=1), net.spot_embedding(genes, values, pad))
    with pytest.raises(ValueError, match="layer must be"):
        net.spot_embedding(genes, values, pad, layer=n + 1)


def test_padding_does_not_change_embeddings(net):
    genes, values, pad = _cells(B=2, P=6)
    emb = net.spot_embedding(genes, values, pad)
    genes_p = torch.cat([genes, torch.full((2, 5), 98)], 1)
    values_p = torch.cat([values, torch.full((2, 5), -2.0)], 1)
    pad_p = torch.cat([pad, torch.ones(2, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(net.spot_embedding(genes_p, values_p, pad_p), emb, atol=1e-5, rtol=1e-5)


def test_attention_equals_full_masked_attention(net):
    """The split context/query attention is the paper's mask applied to full (P + Q)^2 attention."""
    attn = net.layers[0].attn
    B, P, Q, d = 3, 6, 4, net.cfg.d_model
    x = torch.randn(B, P + Q, d)
    pad = torch.zeros(B, P, dtype=torch.bool)
    pad[1, -2:] = True
    got = attn(x, P, (~pad)[:, None, None, :])
    allowed = torch.zeros(B, P + Q, P + Q, dtype=torch.bool)
    allowed[:, :, :P] = ~pad[:, None, :]  # everyone sees the non-padded context
    allowed[:, torch.arange(P, P + Q), torch.arange(P, P + Q)] = True  # queries see themselves only
    q, k, v = attn.qkv(x).view(B, P + Q, 3, attn.n_heads, -1).permute(2, 0, 3, 1, 4)
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    y = s.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
    expected = attn.out_proj(y.transpose(1, 2).reshape(B, P + Q, d))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_moe_top2_routing_renormalised(net):
    moe = net.moe_decoder
    h = torch.randn(4, 7, net.cfg.d_decoder_in)
    probs, w = moe.route(h)
    assert ((w > 0).sum(-1) == 2).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 7))
    top2 = probs.topk(2, dim=-1).indices
    chosen = torch.zeros_like(w, dtype=torch.bool).scatter(-1, top2, True)
    assert torch.equal(w > 0, chosen)
    out, balance = moe(h)
    manual = sum(w[..., e] * moe.experts[e](h) for e in range(4))
    torch.testing.assert_close(out, manual)
    assert balance.item() > 0


def test_moe_balance_is_one_for_uniform_gate():
    cfg = preset_config("tiny", vocab_size=10, pad_token_id=8, cls_token_id=9)
    m = SpGPTModel(cfg).moe_decoder
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.zero_()
    _, balance = m(torch.randn(3, 5, cfg.d_decoder_in))
    assert balance.item() == pytest.approx(1.0, abs=1e-5)


def test_neighbour_mean_uses_k_nearest_and_passes_gradients():
    spot = torch.randn(5, 3, requires_grad=True)
    coords = torch.tensor([[0.0, 0], [1, 0], [2, 0], [10, 0], [11, 0]])
    nm = neighbour_mean(spot, coords, k=1)
    torch.testing.assert_close(nm[0], spot[1])
    torch.testing.assert_close(nm[3], spot[4])
    nm[0].sum().backward()
    assert spot.grad[1].abs().sum() > 0 and spot.grad[0].abs().sum() == 0


def test_forward_all_objectives_and_backward(net):
    net.train()
    genes, values, pad = _cells(B=4)
    q = torch.randint(0, 90, (4, 6))
    qpad = torch.zeros(4, 6, dtype=torch.bool)
    qpad[0, -2:] = True
    out = net(genes, values, pad, q, qpad, torch.tensor([0, 0, 1, 1]), coords=torch.randn(4, 2), k_neighbours=2)
    assert out["gep"].shape == out["geps_intra"].shape == out["geps_inter"].shape == (4, 6)
    target = torch.rand(4, 6) * 50
    loss = sum(masked_mse(out[k], target, ~qpad) for k in ("gep", "geps_intra", "geps_inter"))
    loss = loss + ecs_loss(out["spot"], 0.8)
    loss.backward()
    assert net.modality_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in net.named_parameters() if n.startswith("layers."))
    net.zero_grad()
    net.eval()


def test_masked_mse_ignores_masked_positions():
    pred = torch.tensor([[1.0, 100.0]])
    assert masked_mse(pred, torch.tensor([[0.0, 0.0]]), torch.tensor([[True, False]])).item() == 1.0


def test_ecs_loss_values():
    same = torch.ones(3, 4)
    # off-diagonal cos = 1 -> 1 - 0.2^2 (6 entries); zeroed diagonal -> 1 - 0.8^2 (3 entries); mean over all 9
    assert ecs_loss(same, 0.8).item() == pytest.approx((6 * 0.96 + 3 * 0.36) / 9, abs=1e-6)


def test_config_rejects_unknown_keys_and_bad_heads():
    with pytest.raises(ValueError, match="unknown model config keys"):
        SpGPTConfig.from_dict({"d_model": 64, "n_head": 4})
    with pytest.raises(ValueError, match="divisible"):
        SpGPTConfig(d_model=30, n_heads=4)
