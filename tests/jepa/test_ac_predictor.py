import pytest
import torch

from jepa.ac_predictor import ACPredictor, ac_losses, block_causal_mask, layer_normed

E, GRID, A, S = 16, (2, 3), 2, 4


def make(state_dim: int = S, seed: int = 0) -> ACPredictor:
    torch.manual_seed(seed)
    model = ACPredictor(E, GRID, [-1.0, -2.0], [1.0, 2.0], state_dim=state_dim, dim=24, depth=2, num_heads=2)
    for p in model.parameters():  # init leaves zero biases and type embeddings: make every path count
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def inputs(B: int = 2, T: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = layer_normed(torch.randn(B, T, GRID[0] * GRID[1], E, generator=g))
    return z, torch.rand(B, T, A, generator=g) * 2 - 1, torch.randn(B, T, S, generator=g)


def test_mask_is_block_causal():
    m = block_causal_mask(3, 2)
    assert m.tolist()[0] == [True, True, False, False, False, False]
    assert m.tolist()[3] == [True, True, True, True, False, False]
    assert m.all(-1)[4:].all()


@pytest.mark.parametrize("changed", ["frame", "action", "state"])
def test_no_token_sees_a_later_step(changed):
    model, (z, a, s) = make(), inputs()
    before = model(z, a, s)
    t = 2
    z2, a2, s2 = z.clone(), a.clone(), s.clone()
    {"frame": z2, "action": a2, "state": s2}[changed][:, t] += 1.0
    after = model(z2, a2, s2)
    assert torch.equal(before.frames[:, :t], after.frames[:, :t])
    assert torch.equal(before.states[:, :t], after.states[:, :t])
    assert not torch.allclose(before.frames[:, t], after.frames[:, t])  # step t itself reads it


def test_incremental_steps_match_one_pass():
    model, (z, a, s) = make(), inputs()
    full = model(z, a, s)
    cache, frames = None, []
    for t in range(z.shape[1]):
        pred, cache = model.step(z[:, t : t + 1], a[:, t : t + 1], s[:, t : t + 1], t, cache)
        frames.append(pred.frames)
    torch.testing.assert_close(torch.cat(frames, 1), full.frames, atol=1e-5, rtol=1e-5)


def test_rollout_feeds_back_predictions_and_shares_history():
    model, (z, a, s) = make(), inputs(B=1)
    C, steps = 2, 3
    samples = torch.rand(4, C + steps - 1, A) * 2 - 1
    samples[:, : C - 1] = a[:, : C - 1]  # shared history
    out = model.rollout(z[:, :C], samples, s[:, :C], steps=steps)
    assert out.frames.shape == (4, steps, GRID[0] * GRID[1], E) and out.states.shape == (4, steps, S)
    # the same, one sample at a time and step by step through forward()
    for i in range(4):
        zs, ss = z[:, :C], s[:, :C]
        for k in range(steps):
            pred = model(zs, samples[i : i + 1, : C + k], ss)
            zs = torch.cat((zs, pred.frames[:, -1:]), 1)
            ss = torch.cat((ss, pred.states[:, -1:]), 1)
        torch.testing.assert_close(out.frames[i], zs[0, C:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("loss", ["l1", "change_mse"])
def test_losses_train_toward_a_simple_world(loss):
    """Frames show a point that each action moves: teacher forcing and rollout both fall, and the
    predictor beats "nothing moves" in L1 whichever loss trains it."""
    torch.manual_seed(0)
    model = ACPredictor(E, GRID, [-1.0, -1.0], [1.0, 1.0], dim=32, depth=2, num_heads=2)
    proj = 0.5 * torch.randn(A, GRID[0] * GRID[1] * E)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch():
        a = torch.rand(16, 4, A) * 2 - 1
        z = layer_normed(torch.tanh((torch.cumsum(a, 1) - a) @ proj).unflatten(-1, (GRID[0] * GRID[1], E)))
        return z, a

    z, _ = batch()
    model.set_change_stats((z[:, 1:] - z[:, :-1]).square().mean((0, 1, 2)).sqrt())
    first = None
    for _ in range(400):
        z, a = batch()
        losses = ac_losses(model, z, a, rollout_steps=2, loss=loss)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first or {k: v.item() for k, v in losses.items()}
    z, a = batch()
    with torch.no_grad():
        last = ac_losses(model, z, a, rollout_steps=2, loss=loss)
    copy = (z[:, 1:] - z[:, :-1]).abs().mean()  # "nothing moves": what an action-blind model can do
    assert last["teacher"] < 0.6 * first["teacher"]
    assert last["teacher_l1"] < min(0.6 * first["teacher_l1"], 0.8 * copy)
    assert last["rollout"] < 0.7 * first["rollout"]


def test_change_mse_weighs_errors_by_the_change_spread():
    model, (z, a, s) = make(), inputs()
    model.set_change_stats(torch.full((E,), 0.5))
    half = ac_losses(model, z, a, s, rollout_steps=2, loss="change_mse")
    model.set_change_stats(torch.full((E,), 1.0))
    one = ac_losses(model, z, a, s, rollout_steps=2, loss="change_mse")
    torch.testing.assert_close(half["teacher"], 4 * one["teacher"])
    torch.testing.assert_close(half["teacher_l1"], one["teacher_l1"])
    with pytest.raises(ValueError, match="l1 or change_mse"):
        ac_losses(model, z, a, s, rollout_steps=2, loss="l2")


def test_bad_shapes_are_clear():
    model, (z, a, s) = make(), inputs()
    with pytest.raises(ValueError, match="3-D actions|2-D actions"):
        model(z, torch.zeros(2, 5, 3), s)
    with pytest.raises(ValueError, match="reads a state"):
        model(z, a)
    with pytest.raises(ValueError, match="take 3 actions"):
        model.rollout(z[:, :2], a[:, :4], s[:, :2], steps=2)
