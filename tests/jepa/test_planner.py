import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa.ac_predictor import ACPredictor, layer_normed
from jepa.config import ConfigError, PlannerConfig
from jepa.planner import cem, latent_energy


def test_cem_finds_the_minimum_of_a_known_energy():
    target = torch.tensor([[0.3, -0.6], [0.9, 0.1], [-0.4, 0.5]])
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    cfg = PlannerConfig(samples=200, elites=20, iterations=12, horizon=3, replan_every=1)
    plan = cem(lambda s: (s - target).abs().sum((1, 2)), low, high, cfg, generator=torch.Generator().manual_seed(0))
    assert plan.energy[-1] < 0.1 * plan.energy[0]
    assert all(b <= a + 1e-6 for a, b in zip(plan.energy, plan.energy[1:]))  # the mean is kept: never worse
    torch.testing.assert_close(plan.actions, target, atol=0.05, rtol=0)


def test_cem_respects_the_bounds():
    low, high = torch.tensor([-0.5]), torch.tensor([0.2])
    seen = []

    def energy(s):
        seen.append(s)
        return -s.sum((1, 2))  # pushes toward +inf

    plan = cem(energy, low, high, PlannerConfig(samples=50, elites=5, iterations=5, horizon=2, replan_every=1))
    assert all(((s >= low) & (s <= high)).all() for s in seen)
    torch.testing.assert_close(plan.actions, torch.full((2, 1), 0.2), atol=0.02, rtol=0)


def test_cem_lowers_the_latent_energy_of_a_toy_world_model():
    """A predictor whose imagined frame depends on the actions: CEM drives its energy down, and the
    plan reaches a goal that the random start does not."""
    torch.manual_seed(0)
    model = ACPredictor(8, (2, 2), [-1.0, -1.0], [1.0, 1.0], dim=16, depth=1, num_heads=2).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    context = layer_normed(torch.randn(1, 2, 4, 8))
    history = torch.rand(1, 2) * 2 - 1
    goal_actions = torch.rand(3, 2) * 2 - 1
    with torch.no_grad():
        goal = model.rollout(context, torch.cat((history, goal_actions))[None], steps=3).frames[0, -1]
    energy = latent_energy(model, context, goal, history=history)
    plan = cem(energy, -torch.ones(2), torch.ones(2), PlannerConfig(samples=100, elites=10, iterations=8, horizon=3, replan_every=1),
               generator=torch.Generator().manual_seed(1))
    start = energy(torch.zeros(1, 3, 2)).item()
    assert plan.energy[-1] < 0.3 * start
    assert energy(plan.actions[None]).item() < 0.3 * start


def test_the_plan_is_the_best_sequence_scored_or_the_final_mean():
    """``select=best`` returns the lowest-energy sequence CEM scored, whose energy ends the trace;
    ``select=mean`` the final Gaussian's mean. On an energy with two equally good minima the mean
    of elites split between them lands between the two, where the energy is high."""
    minima = torch.tensor([[[0.8]], [[-0.8]]])

    def energy(s):
        return (s[None] - minima[:, None]).abs().sum((2, 3)).min(0).values

    seen = []

    def recording(s):
        seen.append(s.clone())
        return energy(s)

    low, high = -torch.ones(1), torch.ones(1)
    for select in ("best", "mean"):
        cfg = PlannerConfig(samples=40, elites=20, iterations=1, horizon=1, replan_every=1, select=select)
        seen.clear()
        plan = cem(recording, low, high, cfg, generator=torch.Generator().manual_seed(0))
        scores = energy(seen[0])
        if select == "best":
            torch.testing.assert_close(plan.actions, seen[0][scores.argmin()])
            assert energy(plan.actions[None]).item() == pytest.approx(plan.energy[-1])
        else:
            elites = seen[0][torch.topk(scores, 20, largest=False).indices]
            torch.testing.assert_close(plan.actions, elites.mean(0))
            assert energy(plan.actions[None]).item() > plan.energy[-1] + 0.3


def test_the_energy_reads_the_last_the_closest_or_every_imagined_step():
    """``planner.energy``: a sequence's energy is its last imagined frame's distance to the goal,
    the smallest distance over its imagined frames, or their mean; on a goal one sequence passes
    through and leaves, only ``min`` ranks that sequence first."""
    torch.manual_seed(0)
    model = ACPredictor(8, (2, 2), [-1.0, -1.0], [1.0, 1.0], dim=16, depth=1, num_heads=2).eval()
    for p in model.parameters():  # away from the copy-forward start, so every step depends on the actions
        torch.nn.init.normal_(p, std=0.5)
    context = layer_normed(torch.randn(1, 1, 4, 8))
    samples = torch.rand(6, 3, 2) * 2 - 1
    with torch.no_grad():
        frames = model.rollout(context, samples, steps=3).frames  # (6, 3, N, E)
    goal = frames[2, 0]  # sequence 2 passes through the goal at its first step
    distances = (frames - goal).abs().mean(dim=(2, 3))  # (6, 3)
    energies = {how: latent_energy(model, context, goal, over_steps=how)(samples) for how in ("final", "min", "mean")}
    torch.testing.assert_close(energies["final"], distances[:, -1])
    torch.testing.assert_close(energies["min"], distances.min(1).values)
    torch.testing.assert_close(energies["mean"], distances.mean(1))
    assert energies["min"].argmin() == 2 and energies["min"][2] == 0
    assert energies["final"][2] > 0


def test_the_state_term_adds_the_weighted_distance_to_the_goal_state():
    """With ``state_weight`` the energy is the token energy plus the weight times the largest
    wrapped angle between the imagined final qpos and the goal's; a sequence that ends at the goal's
    state but elsewhere in tokens is no longer scored as far as any other."""
    torch.manual_seed(0)
    model = ACPredictor(8, (2, 2), [-1.0, -1.0], [1.0, 1.0], state_dim=4, dim=16, depth=1, num_heads=2).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    context, states = layer_normed(torch.randn(1, 1, 4, 8)), torch.randn(1, 1, 4)
    goal, samples = torch.zeros(4, 8), torch.rand(5, 3, 2) * 2 - 1
    with torch.no_grad():
        final_qpos = model.rollout(context, samples, states, steps=3).states[:, -1, :2]
    goal_state = final_qpos[3] + torch.tensor([2 * torch.pi, -2 * torch.pi])  # sequence 3's end, one turn off
    tokens_only = latent_energy(model, context, goal, states=states)(samples)
    both = latent_energy(model, context, goal, states=states, goal_state=goal_state, state_weight=0.5)(samples)
    d = torch.remainder(final_qpos - final_qpos[3] + torch.pi, 2 * torch.pi) - torch.pi
    torch.testing.assert_close(both, tokens_only + 0.5 * d.abs().amax(1), atol=1e-4, rtol=0)
    assert both[3] == pytest.approx(tokens_only[3].item(), abs=1e-4)
    with pytest.raises(ValueError, match="goal's state"):
        latent_energy(model, context, goal, states=states, state_weight=0.5)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="elites"):
        PlannerConfig(samples=10, elites=20)
    with pytest.raises(ConfigError, match="replan_every"):
        PlannerConfig(horizon=2, replan_every=3)
    with pytest.raises(ConfigError, match="select"):
        PlannerConfig(select="median")
    with pytest.raises(ConfigError, match="energy"):
        PlannerConfig(energy="max")
    with pytest.raises(ConfigError, match="state_weight"):
        PlannerConfig(state_weight=-0.1)
    with pytest.raises(ValueError, match="history actions"):
        latent_energy(ACPredictor(8, (2, 2), [-1.0], [1.0]), torch.zeros(1, 2, 4, 8), torch.zeros(4, 8))


def test_plan_step_benchmark_agrees_with_an_eager_cem():
    """bench/bench_plan_step.py at its tiny size: the cached, batched plan step reaches the energy
    of the same CEM whose every imagined step reruns the predictor from the start."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "bench/bench_plan_step.py", "--size", "tiny", "--repeats", "1",
                          "--device", "cpu"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["eager_agrees"] and result["energy_seed0"] == pytest.approx(result["eager_energy_seed0"], rel=1e-4)
    assert result["tokens_per_step"] == 2 + 16  # action, state, 4x4 frame tokens
