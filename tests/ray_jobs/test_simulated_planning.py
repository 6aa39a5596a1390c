"""The simulator-backed policies of `jepa eval plan`: candidates simulated from a restored state must
end where the real episode would, whatever was simulated before them."""

import dataclasses

import numpy as np
import pytest

from jepa.world_model import load_world_model
from pipelines.planning_protocol import Episode, Protocol, make_goal
from ray_jobs.eval_plan import simulate_each, simulator_energy_episode
from ray_jobs.tiny_models import tiny_world_model


def test_candidates_end_where_the_episode_would_in_any_order():
    p = Protocol(img_size=32)
    ep = Episode(p, make_goal(p, 0))
    sequences = np.random.default_rng(0).uniform(-1, 1, (4, 5, 2))

    def end(env):
        return env.physics.data.qpos.copy()

    forward = simulate_each(ep, sequences, p, end)
    backward = simulate_each(ep, sequences[::-1].copy(), p, end)[::-1]
    np.testing.assert_array_equal(np.stack(forward), np.stack(backward))
    every = simulate_each(ep, sequences, p, end, every_step=True)  # (4 sequences, 5 steps)
    for k, action in enumerate(sequences[2]):
        ep.step(action)
        np.testing.assert_array_equal(ep.env.physics.data.qpos, every[2][k])
    np.testing.assert_array_equal(ep.env.physics.data.qpos, forward[2])


@pytest.mark.parametrize("energy", ["final", "min"])
def test_simulator_energy_never_loses_its_best_candidate(tmp_path, energy):
    world = load_world_model(tiny_world_model(tmp_path / "world"))
    cfg = dataclasses.replace(world.planner, energy=energy)
    result = simulator_energy_episode(world, Protocol(img_size=32, budget=10), cfg, 0)
    assert result.policy == "simulator-energy" and len(result.energies) == 2
    for trace in result.energies:  # a deterministic energy: the best so far competes in every iteration
        assert all(b <= a for a, b in zip(trace, trace[1:]))
