"""`jepa models promote / list` and the loss-curve artifact, against a real MLflow server."""

import json
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ray_jobs.cli import main


@pytest.mark.parametrize("words", [["models"], ["models", "promote"], ["models", "list"]], ids=" ".join)
def test_models_commands_have_help(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0 and "usage: jepa models" in capsys.readouterr().out


def _register_tiny_version(name: str) -> tuple[int, str]:
    """A run with a small artifact, registered as the next version of `name` (no training)."""
    mlflow.set_experiment("models-cli")
    with mlflow.start_run() as run:
        mlflow.log_text("weights would be here", "model/weights.txt")
    client = MlflowClient()
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    # MLflow 3's register_model("runs:/...") wants a logged model; a plain artifact folder will do here.
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "candidate", version.version)  # as pretraining does
    return int(version.version), run.info.run_id


@pytest.fixture(scope="module")
def registered(mlflow_env):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    return name, [_register_tiny_version(name) for _ in range(2)]


@pytest.mark.integration
def test_promote_sets_champion_and_reports_the_previous_one(registered, capsys):
    name, [(v1, _), (v2, _)] = registered
    assert main(["models", "promote", name, str(v1)]) == 0
    assert capsys.readouterr().out.strip() == f"models:/{name}@champion -> v{v1} (no previous @champion)"
    assert main(["models", "promote", name, str(v2)]) == 0
    assert capsys.readouterr().out.strip() == f"models:/{name}@champion -> v{v2} (previous @champion: v{v1})"
    assert int(MlflowClient().get_model_version_by_alias(name, "champion").version) == v2


@pytest.mark.integration
def test_list_shows_versions_aliases_and_runs(registered, capsys):
    name, [(v1, run1), (v2, run2)] = registered
    assert main(["models", "promote", name, str(v2)]) == 0
    capsys.readouterr()
    assert main(["models", "list", name]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:3] == ["version", "aliases", "run_id"]
    assert [row.split()[:3] for row in rows] == [
        [str(v2), "@candidate,@champion", run2],  # newest first; @candidate followed the last run
        [str(v1), "-", run1],
    ]
    assert main(["models", "list", name, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["aliases"], v["run_id"]) for v in listed] == [
        (v2, ["candidate", "champion"], run2), (v1, [], run1)]


@pytest.mark.integration
def test_unknown_name_or_version_is_a_clear_error(registered, capsys):
    name, [(v1, _), (v2, _)] = registered
    def fails(*words):
        with pytest.raises(SystemExit) as exit_info:
            main(["models", *words])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err  # one line, no traceback
        return err

    assert fails("promote", name, "99") == f"error: {name} has no version 99 (versions: [{v1}, {v2}])\n"
    assert fails("promote", "no-such-model", "1").startswith("error: no registered model named 'no-such-model'")
    assert fails("list", "no-such-model").startswith("error: no registered model named 'no-such-model'")
    assert int(MlflowClient().get_model_version_by_alias(name, "candidate").version) == v2  # untouched


@pytest.mark.integration
def test_loss_curve_is_logged_as_a_png(mlflow_env, tmp_path):
    from ray_jobs.tracking import LOSS_CURVE_ARTIFACT, log_loss_curve

    mlflow.set_experiment("models-cli")
    with mlflow.start_run() as run:
        for step in range(12):
            mlflow.log_metrics({"loss": 1.0 / (step + 1), "target_std": 0.8, "effective_rank": 40.0 + step},
                               step=step)
    assert log_loss_curve(run.info.run_id) == LOSS_CURVE_ARTIFACT
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=LOSS_CURVE_ARTIFACT,
                                                dst_path=str(tmp_path))
    with open(local, "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    with mlflow.start_run() as empty:
        pass
    with pytest.raises(ValueError, match="no 'loss' metric"):
        log_loss_curve(empty.info.run_id)
