"""`jepa eval surprise --json` end to end: pairs written to SeaweedFS, a tiny model from the MLflow
registry, the result on stdout, in a Markdown report, and as an MLflow evaluation run linked to the
model version."""

import json

import pytest
from mlflow.tracking import MlflowClient

from pipelines.physics_pairs import PAIR_TYPES, synthesize_pairs
from pipelines.synth_physics import PhysicsConfig
from ray_jobs.cli import main
from ray_jobs.tiny_models import register_tiny

pytestmark = pytest.mark.integration

PAIRS_PER_TYPE = 2


@pytest.fixture(scope="module")
def pairs_uri(s3_env):
    uri = f"s3://{s3_env.bucket}/eval/pairs"
    synthesize_pairs(PAIRS_PER_TYPE, uri, seed=5, cfg=PhysicsConfig(size=64, fps=8), progress=False)
    return uri


def test_eval_surprise_json_report_and_mlflow_run(pairs_uri, mlflow_env, tmp_path, capsys):
    model_uri = register_tiny("jepa-eval-surprise", ["masks=[{kind: future, context_steps: 2}]"])
    report = tmp_path / "surprise.md"
    capsys.readouterr()  # MLflow's own lines from the registration
    main(["eval", "surprise", "--model", model_uri, "--pairs", pairs_uri, "--json", "--report", str(report),
          "--no-progress"])
    result = json.loads(capsys.readouterr().out)

    assert result["model"] == "jepa-eval-surprise/1"
    assert result["settings"]["mask"] == "future" and result["settings"]["pairs"] == PAIRS_PER_TYPE * 6
    assert result["settings"]["window_frames"] == 8 and result["settings"]["context_frames"] == 4
    assert result["settings"]["scored_frames"] == 4  # all predicted frames unless --score-steps
    assert result["settings"]["score"] == "l1"  # no error scales
    assert list(result["accuracy"]) == list(PAIR_TYPES)
    for pair_type, scorers in result["accuracy"].items():
        assert set(scorers) == {"trained", "random-init", "pixel"}
        for stats in scorers.values():
            for est in stats.values():
                assert est["n"] == PAIRS_PER_TYPE and est["low"] <= est["value"] <= est["high"]
    # a control pair's two videos are identical, so every scorer ties: exactly chance
    assert all(e["value"] == 0.5 for s in result["accuracy"]["control"].values() for e in s.values())
    # the untrained model *is* the random-init baseline here: same weights, same scores
    assert result["accuracy"]["permanence"]["trained"] == result["accuracy"]["permanence"]["random-init"]
    assert "| permanence | 2 |" in report.read_text()

    client = MlflowClient()
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["jepa.model_version"] == "1" and run.data.tags["jepa.eval"] == "surprise"
    assert run.data.metrics["surprise_acc.control.pixel.max"] == 0.5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "surprise")}
    assert {"surprise/accuracy.png", "surprise/surprise_over_time.png", "surprise/report.md",
            "surprise/result.json"} <= artifacts
    version = client.get_model_version("jepa-eval-surprise", "1")
    assert version.tags["eval.surprise.run_id"] == run.info.run_id

    # the model predicts 2 token time steps after its 2 of context: a 3rd cannot be scored
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "surprise", "--model", model_uri, "--pairs", pairs_uri, "--score-steps", "3", "--no-mlflow"])
    assert exit_info.value.code == 2 and "--score-steps must be in 1..2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "surprise", "--model", model_uri, "--pairs", pairs_uri, "--score", "nll", "--no-mlflow"])
    assert exit_info.value.code == 2 and "model.pred_error_scale" in capsys.readouterr().err

    # bf16 autocast (train.precision's choices) runs the same scoring and says so
    main(["eval", "surprise", "--model", model_uri, "--pairs", pairs_uri, "--precision", "bf16", "--json",
          "--no-mlflow", "--no-progress"])
    bf16 = json.loads(capsys.readouterr().out)
    assert result["settings"]["precision"] == "auto" and bf16["settings"]["precision"] == "bf16"
    assert all(e["value"] == 0.5 for s in bf16["accuracy"]["control"].values() for e in s.values())
    assert bf16["accuracy"]["permanence"]["trained"] == bf16["accuracy"]["permanence"]["random-init"]


def test_a_model_with_error_scales_is_scored_by_likelihood(pairs_uri, mlflow_env, capsys):
    model_uri = register_tiny("jepa-eval-surprise-nll", ["masks=[{kind: future, context_steps: 2}]",
                                                         "model.pred_error_scale=true"])
    capsys.readouterr()
    main(["eval", "surprise", "--model", model_uri, "--pairs", pairs_uri, "--max-pairs", "1", "--json",
          "--no-mlflow", "--no-progress"])
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["score"] == "nll"
    # its untrained scale head says 1 everywhere: the same outcomes as its random init's
    assert result["accuracy"]["continuity"]["trained"] == result["accuracy"]["continuity"]["random-init"]


def test_eval_surprise_errors_are_one_line(pairs_uri, mlflow_env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "surprise", "--model", "models:/no-such-model@candidate", "--pairs", pairs_uri])
    assert exit_info.value.code == 2 and "no-such-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "surprise", "--model", "models:/x@y", "--pairs", pairs_uri, "--max-pairs", "0"])
    assert "--max-pairs" in capsys.readouterr().err
