"""`predictor_stage` in a real `jepa pretrain` (Ray Train, 2 DDP workers, SeaweedFS, MLflow): the
last steps train the predictor alone, the encoders stay as the joint steps left them, and a run
relaunched within the stage encodes a fresh cache and goes on."""

import io
import re
import uuid

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa.checkpoint import WEIGHTS_FILE
from jepa.config import load_config
from pipelines.storage import get_bytes, list_objects
from pipelines.synth_physics import PhysicsConfig, synthesize
from ray_jobs import tracking

pytestmark = pytest.mark.integration


def _weights_at(bucket: str, run_name: str, step: int) -> dict:
    for obj in list_objects(f"s3://{bucket}/checkpoints/{run_name}", suffixes=("train_state.pt",)):
        if torch.load(io.BytesIO(get_bytes(obj.uri)), weights_only=False)["step"] == step:
            return torch.load(io.BytesIO(get_bytes(obj.uri.replace("train_state.pt", WEIGHTS_FILE))))
    raise AssertionError(f"no checkpoint of step {step}")


def test_the_stage_trains_the_predictor_on_frozen_encoders(stack_client_env, capsys):
    from ray_jobs.pretrain import pretrain

    bucket = stack_client_env.bucket
    source = f"s3://{bucket}/raw/predictor-stage"
    synthesize(6, source, seed=3, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)
    run_name = f"stage-{uuid.uuid4().hex[:8]}"
    overrides = [
        "model.img_size=32", "model.num_frames=8", "model.patch_size=8", "model.pred_depth=1",
        "model.pred_embed_dim=64", "model.pred_num_heads=2", "model.pred_error_scale=true",
        "masks=[{num_blocks: 8}, {kind: future, context_steps: 2}]",
        "train.steps=6", "train.batch_size=2", "train.num_workers=2", "train.log_every=1", "train.checkpoint_every=3",
        "predictor_stage.steps=3", "predictor_stage.batch_size=2", "predictor_stage.cache_clips=3",
        "data.held_out_fraction=0", f"data.source={source}", f"train.run_name={run_name}",
        "tracking.experiment=predictor-stage", "tracking.registered_model=jepa-stage",
    ]
    result = pretrain(load_config("configs/tiny.yaml", overrides))

    out = capsys.readouterr().out
    assert re.search(r"rank \d: predictor stage from step 4: encoding 4 clips with the frozen encoders", out), out[-3000:]
    assert "step 6/6 (predictor) loss" in out and "error_nll" in out
    history = MlflowClient().get_metric_history
    assert sorted(m.step for m in history(result.run_id, "loss")) == list(range(6))
    assert sorted(m.step for m in history(result.run_id, "target_std")) == [0, 1, 2]  # joint steps only
    assert sorted(m.step for m in history(result.run_id, "error_nll")) == list(range(6))

    joint_end = _weights_at(bucket, run_name, 3)
    final = torch.load(tracking.download_checkpoint(result.model_uri) / WEIGHTS_FILE)
    for network in ("encoder", "target_encoder"):
        for name, value in final[network].items():
            assert torch.equal(value, joint_end[network][name]), f"{network}.{name} moved in the stage"
    moved = [k for k, v in final["predictor"].items() if not torch.equal(v, joint_end["predictor"][k])]
    assert any(k.startswith("log_scale") for k in moved) and any(k.startswith("blocks") for k in moved), moved

    # Relaunched by name with 2 more stage steps: resumes at step 6, inside the stage.
    again = pretrain(load_config("configs/tiny.yaml", overrides + ["train.steps=8", "predictor_stage.steps=5"]))
    out = capsys.readouterr().out
    assert again.run_id == result.run_id
    assert re.search(r"rank \d: predictor stage from step 7: encoding 4 clips", out), out[-3000:]
    assert sorted(m.step for m in history(again.run_id, "loss")) == list(range(8))
    longer = torch.load(tracking.download_checkpoint(again.model_uri) / WEIGHTS_FILE)
    for network in ("encoder", "target_encoder"):
        assert all(torch.equal(v, joint_end[network][k]) for k, v in longer[network].items())
    assert any(not torch.equal(v, final["predictor"][k]) for k, v in longer["predictor"].items())
