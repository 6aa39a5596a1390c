"""`jepa train-ac` end to end: MuJoCo episodes recorded to SeaweedFS, cut into windows, a tiny
registered encoder, two Ray Train workers, and a registered world model that loads and imagines."""

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa.world_model import PREDICTOR_FILE, load_world_model
from pipelines.episode_shards import WindowSpec, ingest_episodes
from pipelines.mujoco_record import RecordConfig, record
from ray_jobs import tracking
from ray_jobs.cli import main
from ray_jobs.tiny_models import register_tiny

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def windows_uri(s3_env, ray_local):
    episodes = f"s3://{s3_env.bucket}/ac/episodes"
    record(RecordConfig(env="reacher", episodes=4, steps=40, frameskip=5, img_size=32, seed=3), episodes, progress=False)
    windows = f"s3://{s3_env.bucket}/ac/windows"
    ingest_episodes(episodes, windows, WindowSpec(frames=4, stride=2), episodes_per_shard=2, progress=False)
    return windows


def test_train_ac_registers_a_world_model_that_plans(windows_uri, stack_client_env, capsys, tmp_path):
    encoder = register_tiny("jepa-ac-encoder", ["model.num_frames=1", "data.modality=image"])
    main(["train-ac", "--config", "configs/reacher-ac.yaml", f"model.encoder={encoder}",
          f"data.dataset={windows_uri}", "model.dim=32", "model.depth=1", "model.num_heads=2", "model.pool=2",
          "train.steps=6", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=3",
          "model.state_reader=true", "planner.state_weight=0.2", "tracking.registered_model=jepa-ac-test"])
    out = capsys.readouterr().out
    assert "registered models:/jepa-ac-test/1 (@candidate)" in out
    run_id = MlflowClient().get_model_version("jepa-ac-test", "1").run_id
    # 4 episodes of 8 agent steps -> windows at 0, 2, 4 -> 12, in 2 shard files: one per rank. Read
    # from the run's tag: worker prints reach the driver's stdout asynchronously
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["jepa.rank0_data"] == "6 windows of 4 steps, 16 frames encoded"
    history = MlflowClient().get_metric_history(run_id, "teacher")
    assert [m.step for m in history] == [0, 2, 4, 5]
    assert MlflowClient().get_run(run_id).data.tags["jepa.encoder"] == encoder

    folder = Path(tracking.download_checkpoint("models:/jepa-ac-test@candidate"))
    world = load_world_model(folder)
    assert world.env["domain"] == "reacher" and world.env["frameskip"] == 5 and world.env["img_size"] == 32
    assert world.predictor.grid == (2, 2)  # 32 px / patch 8 = 4x4 tokens, pooled by 2
    assert torch.all(world.predictor.state_std != 1)  # the state statistics came from the data
    assert world.cfg.loss == "change_mse" and torch.all(world.predictor.change_std != 1)  # and the change's
    # the state reader trained beside the predictor, on the whole 4x4 grid, for the planner's state term
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "reader")] == [0, 2, 4, 5]
    assert world.state_reader.num_tokens == 16 and world.state_reader.angular
    assert world.planner.state_weight == 0.2
    assert world.read_state(torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)).shape == (2, 2)

    old = shutil.copytree(folder, tmp_path / "old")  # saved before the change loss: no change_std, still loads
    state = torch.load(old / PREDICTOR_FILE, weights_only=True)
    del state["change_std"]
    torch.save(state, old / PREDICTOR_FILE)
    assert torch.all(load_world_model(old).predictor.change_std == 1)
    frames = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    z = world.encode(frames)
    assert z.shape == (2, 4, world.jepa.encoder.embed_dim)
    with torch.no_grad():
        imagined = world.predictor.rollout(z[None, :1], torch.zeros(3, 2, 2), torch.zeros(1, 1, 4), steps=2)
    assert imagined.frames.shape == (3, 2, 4, world.jepa.encoder.embed_dim)
