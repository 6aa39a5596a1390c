import pytest
import torch

from jepa.ac_ensemble import PredictorEnsemble
from jepa.ac_predictor import ACPredictor, layer_normed
from jepa.planner import latent_energy

E, GRID, S = 16, (2, 3), 4


def make(seed: int, grid=GRID) -> ACPredictor:
    torch.manual_seed(seed)
    model = ACPredictor(E, grid, [-1.0, -2.0], [1.0, 2.0], state_dim=S, dim=24, depth=2, num_heads=2)
    for p in model.parameters():  # the init predicts "nothing moves": make every member differ
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def context(B: int = 3, C: int = 2, H: int = 3):
    g = torch.Generator().manual_seed(7)
    z = layer_normed(torch.randn(1, C, GRID[0] * GRID[1], E, generator=g))
    actions = torch.rand(B, C + H - 1, 2, generator=g) * 2 - 1
    actions[:, : C - 1] = actions[0, : C - 1]  # the context's actions are shared by every sample
    return z, actions, torch.randn(1, C, S, generator=g)


@torch.no_grad()
def test_rollout_is_the_members_mean_step_by_step():
    members = [make(0), make(1), make(2)]
    z, a, s = context()
    outs = [m.rollout(z, a, s, steps=3) for m in members]
    assert not torch.allclose(outs[0].frames, outs[1].frames)
    got = PredictorEnsemble(members).rollout(z, a, s, steps=3)
    torch.testing.assert_close(got.frames, sum(o.frames for o in outs) / 3)
    torch.testing.assert_close(got.states, sum(o.states for o in outs) / 3)


@torch.no_grad()
def test_copies_of_one_predictor_plan_as_it_does():
    z, a, s = context(B=5)
    goal = layer_normed(torch.randn(GRID[0] * GRID[1], E))
    one = latent_energy(make(0), z, goal, history=a[0, :1], states=s)(a[:, 1:])
    two = latent_energy(PredictorEnsemble([make(0), make(0)]), z, goal, history=a[0, :1], states=s)(a[:, 1:])
    torch.testing.assert_close(one, two)


def test_members_must_read_the_same_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        PredictorEnsemble([make(0)])
    with pytest.raises(ValueError, match=r"predictor 1 reads a \(3, 2\) grid"):
        PredictorEnsemble([make(0), make(1, grid=(3, 2))])
    other = make(1)
    other.action_high.fill_(3.0)
    with pytest.raises(ValueError, match="action bounds"):
        PredictorEnsemble([make(0), other])
    ens = PredictorEnsemble([make(0), make(1)])
    assert (len(ens), ens.action_dim, ens.grid, ens.state_dim) == (2, 2, GRID, S)
