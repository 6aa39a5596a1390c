"""Attentive probes (jepa/probe.py): the factored attention is standard attention, heads learn
separable tasks, are independent and the best on val is the one reported; pixel tokens line up
with the encoder's token grid."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa.probe import (
    AttentiveProbe,
    ProbeBank,
    ProbeTask,
    evaluate,
    pixel_features,
    r2_score,
    token_positions,
    train_probes,
)
from jepa.vit import PatchEmbed3D

CLASSIFY = ProbeTask("cls", "classification", num_classes=3)
REGRESS = ProbeTask("reg", "regression", dim=2)


def separable(n: int, seed: int, tokens: int = 16, dim: int = 32):
    """Random tokens plus a per-example latent along fixed directions on every token: class =
    argmax of the latent, regression target = an affine map of it (known units: offset 5, scale 3)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(3, dim, generator=torch.Generator().manual_seed(123))  # shared by all splits
    z = torch.randn(n, 3, generator=g)
    x = torch.randn(n, tokens, dim, generator=g) + (z @ directions)[:, None, :]  # (n, N, D)
    y_cls = z.argmax(1)
    y_reg = 5.0 + 3.0 * z[:, :2]
    return x, y_cls, y_reg


def reference_forward(probe: AttentiveProbe, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The textbook block: keys and values of every token, scaled dot-product attention."""
    B, N, _ = x.shape
    h, width = probe.num_heads, probe.query.shape[0]
    d = width // h
    tokens = F.layer_norm(x, x.shape[-1:], eps=1e-6)
    if positions is not None:
        tokens = torch.cat([tokens, positions.expand(B, -1, -1)], dim=-1)
    kv = tokens * probe.norm_kv.weight + probe.norm_kv.bias
    q = probe.q_proj(probe.query).view(1, h, 1, d).expand(B, -1, -1, -1)
    k = probe.k_proj(kv).view(B, N, h, d).transpose(1, 2)
    v = probe.v_proj(kv).view(B, N, h, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, width)
    y = probe.query + probe.o_proj(out)
    y = y + probe.mlp(probe.norm_mlp(y))
    return probe.head(probe.norm_out(y))


@pytest.mark.parametrize("grid", [None, (2, 1, 5)])
def test_factored_attention_equals_standard_attention(grid):
    torch.manual_seed(0)
    probe = AttentiveProbe(in_dim=48, out_dim=3, width=32, num_heads=4, token_grid=grid)
    with torch.no_grad():  # a non-trivial norm affine, as after training
        probe.norm_kv.weight.normal_()
        probe.norm_kv.bias.normal_()
        probe.query.normal_()
    x = torch.randn(5, 10, 48) * 3 + 1
    positions = token_positions(grid) if grid else None
    torch.testing.assert_close(probe(x), reference_forward(probe, x, positions), atol=1e-5, rtol=1e-5)
    bank = ProbeBank(48, 3, 2, width=32, num_heads=4, token_grid=grid)
    bank.probes[0].load_state_dict(probe.state_dict())
    torch.testing.assert_close(bank(x)[0], reference_forward(probe, x, positions), atol=1e-5, rtol=1e-5)
    if grid:
        with pytest.raises(ValueError, match="token grid"):
            probe(torch.randn(5, 11, 48))


def test_token_positions_follow_the_token_order():
    pos = token_positions((2, 3, 4), freqs=(1.0,))
    assert pos.shape == (24, 3 + 6)
    # token n = (t * 3 + h) * 4 + w, as the encoder and pixel_features order them; centres in [0, 1]
    assert pos[0, :3].tolist() == pytest.approx([0.25, 1 / 6, 0.125])
    assert pos[(1 * 3 + 2) * 4 + 3, :3].tolist() == pytest.approx([0.75, 5 / 6, 0.875])
    torch.testing.assert_close(pos[:, 3:6], torch.sin(torch.pi * pos[:, :3]))


def where_is_the_blob(n: int, seed: int):
    """The same content at every token but one "blob" token at a random (h, w) cell of a (2, 4, 4)
    grid (both time steps); the target is the blob's (y, x). Content alone cannot say where it is."""
    g = torch.Generator().manual_seed(seed)
    background, blob = torch.randn(2, 16, generator=torch.Generator().manual_seed(9))
    x = background.repeat(n, 32, 1)  # (n, N, D)
    cell = torch.randint(0, 16, (n,), generator=g)
    for t in range(2):
        x[torch.arange(n), t * 16 + cell] = blob
    y = torch.stack([(cell // 4 + 0.5) / 4, (cell % 4 + 0.5) / 4], dim=1)  # (n, 2)
    return x, y


def test_positions_let_a_probe_say_where():
    (train_x, train_y), (val_x, val_y) = where_is_the_blob(256, 1), where_is_the_blob(64, 2)
    grid = [(1e-2, 0.01)]
    blind = train_probes(train_x, train_y, val_x, val_y, REGRESS, grid, epochs=15, seed=0)
    seeing = train_probes(train_x, train_y, val_x, val_y, REGRESS, grid, epochs=15, seed=0, token_grid=(2, 4, 4))
    assert blind.best_val < 0.2 and seeing.best_val > 0.8


def test_pixel_features_follow_the_encoders_token_grid():
    clips = torch.randn(2, 3, 4, 32, 48)  # (B, C, T, H, W)
    feats = pixel_features(clips, patch_size=16, tubelet_size=2)
    assert feats.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3)  # (B, T'H'W', t*p*p*C)
    # token 0 is the first cube, flattened (t, p, p, C)
    torch.testing.assert_close(feats[:, 0], clips[:, :, :2, :16, :16].permute(0, 2, 3, 4, 1).reshape(2, -1))
    # the encoder's patch embedding is a linear map of exactly these tokens, in the same order
    embed = PatchEmbed3D(patch_size=16, tubelet_size=2, in_chans=3, embed_dim=8)
    w = torch.randn(8, 2 * 16 * 16 * 3)
    with torch.no_grad():
        embed.proj.weight.copy_(w.view(8, 2, 16, 16, 3).permute(0, 4, 1, 2, 3))  # (D, C, t, p, p)
        embed.proj.bias.zero_()
        torch.testing.assert_close(embed(clips), feats @ w.T, atol=1e-3, rtol=1e-4)
    image = pixel_features(torch.randn(2, 3, 32, 32), patch_size=16, tubelet_size=2)  # repeated over a tubelet
    assert image.shape == (2, 4, 1536)
    with pytest.raises(ValueError, match="not divisible"):
        pixel_features(torch.randn(1, 3, 3, 32, 32), patch_size=16, tubelet_size=2)


def test_classification_probe_learns_and_the_best_val_head_is_reported():
    train_x, train_y, _ = separable(240, seed=1)
    val_x, val_y, _ = separable(80, seed=2)
    test_x, test_y, _ = separable(120, seed=3)
    grid = [(0.0, 0.0), (3e-3, 0.01), (1e-3, 0.1)]  # lr 0 never leaves its initialisation
    fit = train_probes(train_x, train_y, val_x, val_y, CLASSIFY, grid, epochs=15, batch_size=32, seed=0)
    assert len(fit.val_scores) == 3 and fit.best == int(np.argmax(fit.val_scores))
    assert fit.best != 0 and fit.val_scores[0] < 0.6
    assert fit.best_setting == grid[fit.best] and fit.best_val == max(fit.val_scores)
    # each head kept its best validation epoch, and the scores are those of the kept weights
    assert all(1 <= e <= 15 for e in fit.best_epochs) and len(fit.train_loss) == 15
    assert [np.mean(p == val_y.numpy()) for p in fit.predict_all(val_x)] == fit.val_scores
    last = train_probes(train_x, train_y, val_x, val_y, CLASSIFY, grid[1:2], epochs=3, keep_best_epoch=False)
    assert last.best_epochs == [3]
    ev = evaluate(fit, test_x, test_y)
    assert ev.metric == "accuracy" and ev.test.n == 120
    assert ev.test.value > 0.85  # chance is 1/3
    assert ev.test.low <= ev.test.value <= ev.test.high
    json.dumps(ev.as_dict())


def test_regression_probe_reaches_high_r2_in_target_units():
    train_x, _, train_y = separable(240, seed=1)
    val_x, _, val_y = separable(80, seed=2)
    test_x, _, test_y = separable(120, seed=3)
    fit = train_probes(train_x, train_y, val_x, val_y, REGRESS, [(3e-3, 0.01), (1e-3, 0.01)], epochs=15, seed=0)
    torch.testing.assert_close(fit.y_mean, train_y.mean(0))  # standardised by the train split
    pred = fit.predict(test_x)
    assert pred.shape == (120, 2) and abs(pred.mean() - 5.0) < 1.0  # back in the targets' units
    ev = evaluate(fit, test_x, test_y)
    assert ev.metric == "r2" and ev.test.value > 0.8
    assert ev.test.low <= ev.test.value <= ev.test.high
    mae = ev.extra["mae"]
    assert mae.low <= mae.value <= mae.high and mae.value < 0.5 * test_y.std().item()
    smooth = train_probes(train_x, train_y, val_x, val_y, ProbeTask("reg", "regression", dim=2, loss="smooth_l1"),
                          [(3e-3, 0.01)], epochs=15, seed=0)
    assert evaluate(smooth, test_x, test_y).test.value > 0.8


def test_heads_are_independent():
    train_x, train_y, _ = separable(64, seed=1)
    val_x, val_y, _ = separable(32, seed=2)
    both = train_probes(train_x, train_y, val_x, val_y, CLASSIFY, [(1e-3, 0.05), (1e-2, 0.05)], epochs=3, seed=7)
    alone = train_probes(train_x, train_y, val_x, val_y, CLASSIFY, [(1e-2, 0.05)], epochs=3, seed=7)
    a, b = (dict(p.named_parameters()) for p in both.bank.probes)
    assert all(not torch.allclose(a[k], b[k]) for k in ("k_proj.weight", "v_proj.weight", "head.weight"))
    # the lr-1e-2 head trains as it does with no other head beside it (up to float rounding:
    # the bank batches all heads' attention into one matmul)
    for name, p in alone.bank.probes[0].named_parameters():
        torch.testing.assert_close(p, b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_r2_and_task_checks():
    y = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    assert r2_score(y, y) == pytest.approx(0.5)  # the constant column explains nothing: 0
    assert r2_score(y[:, :1], y[:, :1]) == 1.0
    assert r2_score(np.full((3, 1), 2.0), y[:, :1]) == 0.0
    with pytest.raises(ValueError, match="num_classes"):
        ProbeTask("x", "classification")
    with pytest.raises(ValueError, match="kind"):
        ProbeTask("x", "ranking")
    x, _, _ = separable(8, seed=0)
    with pytest.raises(ValueError, match="labels outside"):
        train_probes(x, torch.full((8,), 3), x, torch.zeros(8), CLASSIFY, [(1e-3, 0.0)], epochs=1)
