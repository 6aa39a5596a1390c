"""`jepa eval plan --json` end to end: a (tiny, untrained) world model plans on real MuJoCo episodes
in Ray tasks beside the random policy and simulator CEM; the result goes to stdout and MLflow."""

import json

import pytest
from mlflow.tracking import MlflowClient

from ray_jobs.cli import main
from ray_jobs.tiny_models import tiny_world_model

pytestmark = pytest.mark.integration


def test_eval_plan_json_and_mlflow_run(tmp_path, ray_local, mlflow_env, capsys):
    folder = tiny_world_model(tmp_path / "world")
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
    report = (tmp_path / "plan.md").read_text()
    assert "| world-model | 2 |" in report
    bands = report.split("Successes by start-to-goal distance:")[1].split("\n\n")[1].splitlines()[2:]
    assert len(bands) == 3 and sum(int(b.split("|")[2]) for b in bands) == 2  # every goal in one band

    run = MlflowClient().get_run(result["mlflow_run_id"])
    assert run.data.tags["jepa.eval"] == "plan"
    assert run.data.metrics["random.success"] == rnd["success"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plan")}
    assert {"plan/strip_episode_000.png", "plan/energy_traces.png", "plan/result.json"} <= artifacts
