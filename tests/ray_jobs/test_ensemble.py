"""`jepa ensemble`: two world models over one encoder become one that plans with their average,
saved to a folder or registered in a real MLflow server, and planned with by `jepa eval plan`."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa.ac_ensemble import PredictorEnsemble
from jepa.world_model import load_world_model, save_world_model
from ray_jobs import tracking
from ray_jobs.cli import main
from ray_jobs.tiny_models import tiny_world_model

pytestmark = pytest.mark.integration


def retrained(folder, out, seed: int, encoder_too: bool = False) -> str:
    """The world model of ``folder`` with its predictor's output drawn anew (an untrained one only
    copies the frame forward), as if trained with another seed; optionally another encoder too."""
    world = load_world_model(folder)
    torch.manual_seed(seed)
    torch.nn.init.normal_(world.predictor.frame_out.weight, std=0.05)
    if encoder_too:
        with torch.no_grad():
            next(world.jepa.parameters()).add_(0.1)
    save_world_model(world, out)
    return str(out)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    base = tiny_world_model(root / "base")
    return retrained(base, root / "a", 1), retrained(base, root / "b", 2), retrained(base, root / "c", 3, encoder_too=True)


@torch.no_grad()
def test_out_folder_plans_with_the_mean_of_its_members(members, tmp_path, capsys):
    a, b, _ = members
    main(["ensemble", a, b, "--out", str(tmp_path / "ens")])
    assert "ensemble of 2 world models" in capsys.readouterr().out
    ens, wa, wb = (load_world_model(f) for f in (tmp_path / "ens", a, b))
    assert isinstance(ens.predictor, PredictorEnsemble) and len(ens.predictor) == 2
    z = wa.encode(torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8))[None]
    actions, states = torch.rand(4, 3, 2) * 2 - 1, torch.randn(1, 2, ens.env["state_dim"])
    actions[:, 0] = actions[0, 0]
    pa, pb = (w.predictor.rollout(z, actions, states, steps=2).frames for w in (wa, wb))
    assert not torch.allclose(pa, pb)
    torch.testing.assert_close(ens.predictor.rollout(z, actions, states, steps=2).frames, (pa + pb) / 2)


def test_members_over_other_encoders_are_refused(members, tmp_path, capsys):
    a, _, c = members
    with pytest.raises(SystemExit) as exit_:
        main(["ensemble", a, c, "--out", str(tmp_path / "ens")])
    assert exit_.value.code == 2
    assert "another encoder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ensemble", a, "--out", str(tmp_path / "ens")])
    assert "at least 2" in capsys.readouterr().err


def test_registered_ensemble_is_evaluated_by_eval_plan(members, mlflow_env, ray_local, tmp_path, capsys):
    a, b, _ = members
    main(["ensemble", a, b, "--register", "tiny-ensemble"])
    assert "registered models:/tiny-ensemble/" in capsys.readouterr().out
    info = tracking.resolve_model_version("models:/tiny-ensemble@candidate")
    assert MlflowClient().get_run(info["run_id"]).data.params["ensemble.member1"] == b
    main(["eval", "plan", "--model", "models:/tiny-ensemble@candidate", "--episodes", "1", "--policies",
          "world-model", "--json", "--no-progress"])
    result = json.loads(capsys.readouterr().out)
    assert result["policies"]["world-model"]["episodes"] == 1
    assert result["policies"]["world-model"]["plan_seconds_mean"] > 0
