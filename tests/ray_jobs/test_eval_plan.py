"""`jepa eval plan --json` end to end: a (tiny, untrained) world model with a state reader plans on
real MuJoCo episodes in Ray tasks beside the random policy and simulator CEM; the result goes to
stdout and MLflow."""

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from jepa.world_model import load_world_model
from pipelines.planning_protocol import Protocol, distance, make_goal
from ray_jobs.cli import main
from ray_jobs.tiny_models import tiny_world_model

pytestmark = pytest.mark.integration


def test_eval_plan_json_and_mlflow_run(tmp_path, ray_local, mlflow_env, capsys):
    folder = tiny_world_model(tmp_path / "world", state_weight=0.5)
    capsys.readouterr()
    main(["eval", "plan", "--model", folder, "--episodes", "2", "--json", "--no-progress",
          "--report", str(tmp_path / "plan.md")])
    result = json.loads(capsys.readouterr().out)

    assert set(result["policies"]) == {"world-model", "random", "simulator-cem"}
    assert result["settings"]["env"] == "reacher" and result["settings"]["budget"] == 50
    assert result["settings"]["seed_base"] == 1_000_000  # the reported goals; --seed-base tunes on others
    assert result["settings"]["planner"]["samples"] == 16  # the model's own planner config
    for policy, s in result["policies"].items():
        assert s["episodes"] == 2 and 0 <= s["low"] <= s["success"] <= s["high"] <= 1
        assert len(result["episodes"][policy]) == 2
    # the same goals for every policy
    starts = {p: [e["start_distance"] for e in eps] for p, eps in result["episodes"].items()}
    assert starts["random"] == starts["world-model"] == starts["simulator-cem"]
    # the simulator ceiling gets much closer to its goals than random actions
    sim, rnd = result["policies"]["simulator-cem"], result["policies"]["random"]
    assert sim["best_distance_median"] < rnd["best_distance_median"]
    assert result["policies"]["world-model"]["plan_seconds_mean"] > 0
    # how far the reader's goal state lies from the true one, for the policy that read it
    world = load_world_model(folder)
    p = Protocol(env="reacher", frameskip=5, img_size=32)
    for e in result["episodes"]["world-model"]:
        goal = make_goal(p, e["episode"])
        read = world.read_state(goal.image[None])[0].numpy()
        assert e["goal_read_error"] == pytest.approx(distance("reacher", read, goal.qpos), abs=1e-5)
    assert result["policies"]["world-model"]["goal_read_error_median"] == pytest.approx(
        np.median([e["goal_read_error"] for e in result["episodes"]["world-model"]]))
    assert result["policies"]["random"]["goal_read_error_median"] is None
    report = (tmp_path / "plan.md").read_text()
    assert "| world-model | 2 |" in report
    assert "world-model read the goal's state from the goal image within" in report
    bands = report.split("Successes by start-to-goal distance:")[1].split("\n\n")[1].splitlines()[2:]
    assert len(bands) == 3 and sum(int(b.split("|")[2]) for b in bands) == 2  # every goal in one band

    run = MlflowClient().get_run(result["mlflow_run_id"])
    assert run.data.tags["jepa.eval"] == "plan"
    assert run.data.metrics["random.success"] == rnd["success"]
    assert "world_model.goal_read_error" in run.data.metrics and "random.goal_read_error" not in run.data.metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plan")}
    assert {"plan/strip_episode_000.png", "plan/energy_traces.png", "plan/result.json"} <= artifacts
