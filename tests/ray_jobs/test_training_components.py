"""The second-job check: a job other than V-JEPA, built from `ray_jobs.training` with nothing but
its own config and worker loop (a linear regression), runs on the real stack: Ray Train DDP,
checkpoints with the data position in SeaweedFS, rank-0 metrics in MLflow, registration, and a
relaunch under the same run name that resumes where the first one stopped."""

import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray.cloudpickle
import ray.data
import ray.train.torch
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from jepa.checkpoint import load_train_state, save_train_state
from jepa.config import TrackingConfig, TrainConfig, from_dict
from ray_jobs.training.driver import TrainingJob, run_job
from ray_jobs.training.worker import WorkerSession

pytestmark = pytest.mark.integration
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

TRUE_W = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32)


# ---- the whole job: its config and its worker loop -------------------------------------------

@dataclass
class LinearConfig:
    lr: float = 0.05
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


class LinearPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model = torch.nn.Linear(4, 1)
        self.model.load_state_dict(torch.load(Path(context.artifacts["checkpoint"]) / "weights.pt"))

    def predict(self, context, model_input, params=None):
        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()


def linear_loop(loop_config: dict) -> None:
    session = WorkerSession(loop_config)
    cfg = from_dict(LinearConfig, loop_config["config"])
    torch.manual_seed(session.train.seed)
    plain = torch.nn.Linear(4, 1)
    model = ray.train.torch.prepare_model(plain)
    optimizer = torch.optim.SGD(plain.parameters(), lr=cfg.lr)

    def save(folder: str, state) -> None:
        torch.save(plain.state_dict(), Path(folder) / "weights.pt")
        save_train_state(folder, optimizer, state)

    def load(folder: str):
        plain.load_state_dict(torch.load(Path(folder) / "weights.pt"))
        return load_train_state(folder, optimizer)

    state = session.resume(load)
    batches = session.batches(state)
    for step in range(state.step, session.train.steps):
        batch = batches.next()
        loss = F.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step, state.clips_seen = step + 1, state.clips_seen + session.train.batch_size
        if session.logger and session.logger.due(step):
            session.logger.log({"loss": loss.item()}, step)
        if session.checkpoint_due(state):
            session.save_checkpoint(state, {"loss": loss.item()}, save=lambda folder: save(folder, state))
    session.finish(state, plain, save_model=lambda folder: torch.save(plain.state_dict(), Path(folder) / "weights.pt"),
                   python_model=LinearPyfunc())


# ---- the test ----------------------------------------------------------------------------------

def linear_rows(n: int) -> list[dict]:
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    return [{"x": xi, "y": np.float32(xi @ TRUE_W), "input_rows": 1} for xi in x]


def job(cfg: LinearConfig, data_uri: str, rows: list[dict], starts: list[int]) -> TrainingJob:
    def build_dataset(start: int):
        starts.append(start)
        return ray.data.from_items(rows[start:])

    from dataclasses import asdict

    return TrainingJob(name="linear", worker_loop=linear_loop, config=asdict(cfg), train=cfg.train,
                       tracking=cfg.tracking, build_dataset=build_dataset, data_uri=data_uri)


def loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "loss"))


def test_a_second_job_needs_only_its_config_and_worker_loop(stack_client_env):
    bucket, name = stack_client_env.bucket, f"linear-{uuid.uuid4().hex[:8]}"
    rows, starts = linear_rows(400), []
    ctrl_c = signal.getsignal(signal.SIGINT)
    train = dict(batch_size=4, num_workers=2, log_every=1, checkpoint_every=2, keep_checkpoints=2, run_name=name)
    tracking = TrackingConfig(experiment="second-job", registered_model=name, alias="candidate")

    first = run_job(job(LinearConfig(train=TrainConfig(steps=6, **train), tracking=tracking),
                        f"s3://{bucket}/linear", rows, starts))
    assert (first.version, first.model_uri) == (1, f"models:/{name}/1")
    assert loss_steps(first.run_id) == list(range(6))
    params = MlflowClient().get_run(first.run_id).data.params
    assert params["ddp.fingerprint.rank0"] == params["ddp.fingerprint.rank1"]  # DDP kept the ranks equal
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # Ray Train's handler, bound to a finished run, is gone

    second = run_job(job(LinearConfig(train=TrainConfig(steps=10, **train), tracking=tracking),
                         f"s3://{bucket}/linear", rows, starts))
    assert second.run_id == first.run_id and second.version == 2  # the same MLflow run, a new version
    assert starts == [0, 6 * 4 * 2]  # the relaunch's dataset started at the checkpoint's 48 rows
    assert loss_steps(first.run_id) == list(range(10))  # steps 6-9 added, none twice
    resumes = MlflowClient().get_metric_history(first.run_id, "resume_row")
    assert [(m.step, m.value) for m in resumes] == [(6, 48.0)]

    losses = [m.value for m in sorted(MlflowClient().get_metric_history(first.run_id, "loss"), key=lambda m: m.step)]
    assert losses[-1] < 0.5 * losses[0], losses  # it trained, across the resume
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    x = np.eye(4, dtype=np.float32)
    prediction = model.predict(x)[:, 0]
    assert np.abs(prediction - TRUE_W).mean() < np.abs(TRUE_W).mean()  # closer to the truth than 0 is
