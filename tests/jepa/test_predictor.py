import pytest
import torch

from jepa.predictor import Predictor, latest_context_at_place


def _predictor():
    torch.manual_seed(0)
    return Predictor(embed_dim=48, pred_embed_dim=32, depth=2, num_heads=4, num_mask_tokens=2)


GRID = (2, 4, 4)


def _inputs():
    ctx_ids = torch.tensor([[0, 2, 5, 9, 17], [1, 4, 6, 20, 30]])
    tgt_ids = torch.tensor([[3, 10, 31], [0, 7, 8]])
    return torch.randn(2, 5, 48), ctx_ids, tgt_ids


def test_returns_only_target_positions_at_encoder_width():
    ctx, ctx_ids, tgt_ids = _inputs()
    out = _predictor()(ctx, ctx_ids, tgt_ids, GRID)
    assert out.shape == (2, 3, 48)


def test_mask_tokens_zero_init_and_reference_names():
    pred = _predictor()
    assert all(torch.equal(t, torch.zeros(1, 1, 32)) for t in pred.mask_tokens)
    assert {"embed.weight", "mask_tokens.1", "blocks.1.attn.qkv.weight", "norm.bias", "proj.weight"} <= set(
        pred.state_dict()
    )


def test_outputs_follow_target_order():
    # No sorting is needed: each prediction belongs to its target index whatever the order.
    pred = _predictor()
    ctx, ctx_ids, tgt_ids = _inputs()
    out = pred(ctx, ctx_ids, tgt_ids, GRID)
    perm = torch.tensor([2, 0, 1])
    assert torch.allclose(pred(ctx, ctx_ids, tgt_ids[:, perm], GRID), out[:, perm], atol=1e-5)
    ctx_perm = torch.tensor([4, 1, 3, 0, 2])
    assert torch.allclose(pred(ctx[:, ctx_perm], ctx_ids[:, ctx_perm], tgt_ids, GRID), out, atol=1e-5)


def test_mask_index_selects_token_and_positions_matter():
    pred = _predictor()
    with torch.no_grad():
        pred.mask_tokens[1].normal_()
    ctx, ctx_ids, tgt_ids = _inputs()
    out0 = pred(ctx, ctx_ids, tgt_ids, GRID, mask_index=0)
    assert not torch.allclose(out0, pred(ctx, ctx_ids, tgt_ids, GRID, mask_index=1))
    assert not torch.allclose(out0, pred(ctx, ctx_ids, tgt_ids + 1, GRID, mask_index=0))


def test_latest_context_at_place():
    # grid of 3 steps x 2x2 places: context at (t0, p0), (t0, p1), (t1, p1)
    ctx_ids = torch.tensor([[0, 1, 5]])
    tgt_ids = torch.tensor([[8, 9, 10, 4]])  # (t2, p0), (t2, p1), (t2, p2), (t1, p0)
    source, found = latest_context_at_place(ctx_ids, tgt_ids, (3, 2, 2))
    assert found.tolist() == [[True, True, False, True]]
    assert source[found].tolist() == [0, 2, 0]


def test_copy_context_starts_as_nothing_moves_and_learns_the_change():
    torch.manual_seed(0)
    pred = Predictor(embed_dim=48, pred_embed_dim=32, depth=2, num_heads=4, copy_context=True)
    ctx, ctx_ids, _ = _inputs()
    tgt_ids = torch.tensor([[18, 25, 31], [17, 22, 8]])  # places of context tokens a step later, and none
    out = pred(ctx, ctx_ids, tgt_ids, GRID)
    source, found = latest_context_at_place(ctx_ids, tgt_ids, GRID)
    assert found.tolist() == [[True, True, False], [True, True, False]]
    normed = torch.nn.functional.layer_norm(ctx, (48,))
    for b in range(2):
        for j in range(3):
            expected = normed[b, source[b, j]] if found[b, j] else torch.zeros(48)
            assert torch.allclose(out[b, j], expected, atol=1e-6)
    (out - torch.randn_like(out)).abs().mean().backward()
    assert pred.proj.weight.grad.abs().sum() > 0


def test_error_scale_head_starts_at_scale_one_and_is_optional():
    ctx, ctx_ids, tgt_ids = _inputs()
    torch.manual_seed(0)
    pred = Predictor(embed_dim=48, pred_embed_dim=32, depth=2, num_heads=4, error_scale=True)
    out, log_scale = pred(ctx, ctx_ids, tgt_ids, GRID, with_log_scale=True)
    assert torch.equal(log_scale, torch.zeros(2, 3, 48))
    assert torch.equal(out, pred(ctx, ctx_ids, tgt_ids, GRID))
    with pytest.raises(ValueError, match="no error scale head"):
        _predictor()(ctx, ctx_ids, tgt_ids, GRID, with_log_scale=True)
