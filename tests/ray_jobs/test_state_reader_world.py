"""A world model that reads its goal's state from the goal image: saved and loaded with its reader,
planning with the state term, and refused a state weight when it has no reader."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from jepa.mpc import plan_toward, view_goal
from jepa.state_reader import StateReader
from jepa.world_model import load_world_model
from ray_jobs.cli import main
from ray_jobs.tiny_models import tiny_world_model


@torch.no_grad()
def test_the_reader_is_saved_with_the_world_model_and_plans(tmp_path):
    world = load_world_model(tiny_world_model(tmp_path / "world", state_weight=0.5))
    assert world.planner.state_weight == 0.5 and world.state_reader is not None
    rng = np.random.default_rng(0)
    observation, goal_image = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    goal = view_goal(world, goal_image, world.planner)
    assert goal.state.shape == (world.env["qpos_dim"],)
    torch.testing.assert_close(goal.state, world.read_state(goal_image[None])[0])
    state = rng.standard_normal(world.env["state_dim"]).astype(np.float32)
    call = plan_toward(world, observation, goal, state, world.planner, generator=torch.Generator().manual_seed(0))
    cfg = replace(world.planner, state_weight=0.0)
    assert view_goal(world, goal_image, cfg).state is None  # not read when not used
    tokens_only = plan_toward(world, observation, view_goal(world, goal_image, cfg), state, cfg,
                              generator=torch.Generator().manual_seed(0))
    assert call.energy[-1] > tokens_only.energy[-1]  # the distance to the goal's state is added


def test_a_reader_must_fit_the_model(tmp_path):
    world = load_world_model(tiny_world_model(tmp_path / "world"))
    with pytest.raises(ValueError, match="state reader reads"):
        world.attach_state_reader(StateReader(3, 8, 2, angular=True))
    with pytest.raises(ValueError, match="no state reader"):
        world.read_state(np.zeros((1, 32, 32, 3), np.uint8))
    stateless = load_world_model(tiny_world_model(tmp_path / "stateless", uses_state=False))
    h, w = stateless.token_grid
    with pytest.raises(ValueError, match="imagines states"):
        stateless.attach_state_reader(StateReader(h * w, stateless.jepa.encoder.embed_dim, 2, angular=True))


@pytest.mark.integration
def test_eval_plan_refuses_a_state_weight_without_a_reader(tmp_path, ray_local, capsys):
    folder = tiny_world_model(tmp_path / "world")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "plan", "--model", folder, "--episodes", "1", "--state-weight", "0.5", "--no-progress"])
    assert exit_.value.code == 2
    assert "no state reader" in capsys.readouterr().err
