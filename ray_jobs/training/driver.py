"""The driver of a Ray Train job: one MLflow run, a dataset that starts at the resume point, and
restarts of failed attempts from their latest checkpoint.

Ray Train's own restart (`FailureConfig`) would replay the dataset from its first row, so it is
off; `run_job` restarts the worker group itself, up to `train.max_failures` times (node
preemptions do not count), each attempt with a dataset rebuilt at its checkpoint's data position.
Relaunching with the same `train.run_name` does the same and logs to the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray.train
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jepa.config import TrackingConfig, TrainConfig
from ray_jobs import tracking
from ray_jobs.cluster import connect, forwarded_env
from ray_jobs.training.run_folder import DataStart, RunFolder, checkpoint_root

# Train V2 tees print() into its logger as well as stdout; one copy of each progress line is enough.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


@dataclass
class TrainingJob:
    """What a job brings to `run_job`; the rest is shared."""

    name: str
    """Short name: the log prefix, and the run folder `<name>-<MLflow run id>` when no run_name."""
    worker_loop: Callable[[dict[str, Any]], None]
    """Ray Train's `train_loop_per_worker`; builds a `WorkerSession` from its loop config."""
    config: dict[str, Any]
    """The job's resolved config (handed to the workers as `loop_config["config"]`, logged as params)."""
    train: TrainConfig
    tracking: TrackingConfig
    build_dataset: Callable[[int], ray.data.Dataset] | None
    """The training dataset from input row N on (a resumed attempt's position); None for a job
    whose workers read their data themselves."""
    data_uri: str
    """Where the data lives: its bucket holds the checkpoints unless `train.checkpoint_uri` is set."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra MLflow tags of a new run."""


@dataclass
class TrainedModel:
    run_id: str
    version: int
    model_uri: str
    """models:/NAME/VERSION"""


def run_job(job: TrainingJob) -> TrainedModel:
    """Train `job` with Ray Train (DDP over `train.num_workers`), log to MLflow, register the model."""
    say = _printer(job.name)
    connect()
    root = checkpoint_root(job.train.checkpoint_uri, job.data_uri)
    resumed = RunFolder(root, job.train.run_name) if job.train.run_name else None
    run_id = resumed.mlflow_run_id() if resumed else None
    if run_id:
        say(f"resuming {job.train.run_name}: MLflow run {run_id}")
    position = resumed.latest_position() if resumed else None
    dataset = _dataset(job, position)
    run_id = run_id or tracking.start_run(job.tracking.experiment, job.config, job.tags, job.train.run_name or None)
    folder = resumed or RunFolder(root, f"{job.name}-{run_id}")
    folder.record_mlflow_run(run_id)
    say(f"MLflow run {tracking.run_url(run_id)}; checkpoints in {folder.uri}")

    failures = attempt = 0
    while True:
        attempt += 1
        _announce(say, run_id, position, attempt)
        try:
            _fit(_trainer(job, run_id, folder, dataset, DataStart.from_position(position)))
            break
        except ray.train.TrainingFailedError as err:
            preempted = _preempted(err)
            failures += 0 if preempted else 1
            limit = job.train.max_failures
            if not preempted and 0 <= limit < failures:
                raise
            cause = "a preemption" if preempted else f"failure {failures}/{'unlimited' if limit < 0 else limit}"
            say(f"attempt {attempt} failed ({cause}): {_describe(err)}")
            position = folder.latest_position()
            dataset = _dataset(job, position)
    versions = MlflowClient().search_model_versions(f"run_id='{run_id}'")
    if not versions:
        raise RuntimeError(f"training finished but run {run_id} registered no model")
    version = max(int(v.version) for v in versions)
    return TrainedModel(run_id, version, f"models:/{job.tracking.registered_model}/{version}")


def _fit(trainer: TorchTrainer) -> None:
    """`trainer.fit()`, then SIGINT's handler as it was before. Train V2 binds a Ctrl-C handler to
    its controller and leaves it installed after the run: a Ctrl-C later (while the model
    registers, say) would ask the finished controller to abort and, when that fails, call
    `sys.exit(0)` instead of raising KeyboardInterrupt; and the handler keeps the dead
    controller's actor handle until the next fit replaces it."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main_thread else None
    try:
        trainer.fit()
    finally:
        if previous is not None:  # None: a handler not set from Python, nothing to put back
            signal.signal(signal.SIGINT, previous)


def _dataset(job: TrainingJob, position: dict[str, Any] | None):
    return job.build_dataset(DataStart.from_position(position).rows) if job.build_dataset else None


def _trainer(job: TrainingJob, run_id: str, folder: RunFolder, dataset, start: DataStart) -> TorchTrainer:
    """One attempt: Ray Train itself never restarts it (no failure or preemption retries)."""
    storage_path, storage_filesystem = folder.ray_storage()
    t = job.train
    return TorchTrainer(
        job.worker_loop,
        train_loop_config={"job": job.name, "config": job.config, "train": dataclasses.asdict(t),
                           "tracking": dataclasses.asdict(job.tracking), "run_id": run_id,
                           "data_start": {"rows": start.rows, "clips_seen": start.clips_seen}},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        datasets={"train": dataset} if dataset is not None else None,
        run_config=ray.train.RunConfig(
            name=folder.name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=FailureConfig(max_failures=0, max_preemption_failures=0),
            worker_runtime_env={"env_vars": WORKER_ENV | forwarded_env()},
        ),
    )


def _printer(name: str) -> Callable[[str], None]:
    return lambda message: print(f"[{name}] {message}", flush=True)


def _announce(say, run_id: str, position: dict[str, Any] | None, attempt: int) -> None:
    """Print where an attempt starts; a resumed one also logs MLflow metric `resume_row` (the
    dataset row it starts at) at its checkpoint's step, one point per resume."""
    if position is None:
        if attempt > 1:
            say(f"attempt {attempt}: no checkpoint yet, starting over at step 0, dataset row 0")
        return
    say(f"attempt {attempt}: resuming at step {position['step']}, dataset from row {position['rows']} "
        f"(the rows before it are not read again)")
    MlflowClient().log_metric(run_id, "resume_row", position["rows"], step=position["step"])


def _describe(err: Exception) -> str:
    """One line for a failed attempt: which ranks failed with what, else the error's first line."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {r}: {type(e).__name__}" for r, e in sorted(failures.items()))
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _preempted(err: Exception) -> bool:
    """A node preemption rather than a failure (Ray Train's own rule): not charged to max_failures."""
    if isinstance(err, ray.train.PreemptionError):
        return True
    failures = getattr(err, "worker_failures", {}).values()
    return any(getattr(getattr(e, "health_check_failure", e), "preempted", False) for e in failures)
