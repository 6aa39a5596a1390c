"""One rank's side of a training run: the parts a worker loop shares with every other job.

A worker loop builds its model and optimizer, then lets `WorkerSession` resume it, hand it
batches, log rank 0's metrics, write checkpoints with the data position, and at the end log the
ranks' fingerprints and register the model. What it trains, and how, stays in the loop.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel

from jepa.checkpoint import TrainState
from jepa.config import TrackingConfig, TrainConfig, from_dict
from jepa.train_step import emulated_bf16
from pipelines.resume import INPUT_ROWS
from ray_jobs.training.metrics import StepLogger
from ray_jobs.training.registration import fingerprint, gather, log_fingerprints, register_model
from ray_jobs.training.run_folder import POSITION_FILE, DataStart


class BatchStream:
    """A rank's training batches, counting the dataset input rows behind them (`INPUT_ROWS`: drops
    included) so a checkpoint can record where the data stands. The dataset holds enough epochs for
    every step; Ray Train's equal split keeps DDP ranks in step."""

    def __init__(self, shard, batch_size: int, skip: int = 0):
        self._batches = iter(shard.iter_torch_batches(batch_size=batch_size, drop_last=True))
        self.rows = 0
        """Input rows of this attempt's dataset consumed so far, skipped batches included."""
        for _ in range(skip):  # only when the dataset starts before this rank's checkpoint
            if self.next() is None:
                break

    def next(self) -> dict[str, torch.Tensor] | None:
        batch = next(self._batches, None)
        if batch is not None:
            self.rows += int(batch.pop(INPUT_ROWS).sum())
        return batch


class WorkerSession:
    """Who this rank is and what it shares with the run; built from `run_job`'s loop config."""

    def __init__(self, loop_config: dict[str, Any]):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.job: str = loop_config["job"]
        self.run_id: str = loop_config["run_id"]
        self.train: TrainConfig = from_dict(TrainConfig, loop_config["train"])
        self.tracking: TrackingConfig = from_dict(TrackingConfig, loop_config["tracking"])
        self.start = DataStart(**loop_config["data_start"])
        self.logger = (StepLogger(self.run_id, log_every=self.train.log_every, last_step=self.train.steps - 1)
                       if self.rank == 0 else None)
        """Rank 0's metric logger; None on the other ranks."""
        self.stream: BatchStream | None = None
        if self.rank == 0 and emulated_bf16(self.device, self.train.precision):
            self.print("WARNING: train.precision=bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 "
                       "flag): bf16 is emulated here and trains several times slower than train.precision=auto")

    def print(self, message: str) -> None:
        print(f"[{self.job}] {message}", flush=True)

    def resume(self, load: Callable[[str], TrainState]) -> TrainState:
        """Where to continue: `load(folder)` of the latest checkpoint, which Ray Train hands the
        workers after a restart or a relaunch of the same run; else step 0."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return TrainState(step=0, extra={"mlflow_run_id": self.run_id})
        with checkpoint.as_directory() as folder:
            state = load(folder)
        self.print(f"rank {self.rank} resumed from {checkpoint.path} at step {state.step}")
        return state

    def batches(self, state: TrainState) -> BatchStream:
        """This rank's batches of `train.batch_size` from where `state` stands. The driver started
        the dataset at the checkpoint's position: skip only what it did not."""
        behind = state.clips_seen - self.start.clips_seen
        if behind < 0:
            raise RuntimeError(f"rank {self.rank}: the dataset starts at row {self.start.rows} (clips_seen "
                               f"{self.start.clips_seen}), past this rank's checkpoint (clips_seen {state.clips_seen})")
        if behind:
            self.print(f"rank {self.rank} skips {behind} decoded clips (no {POSITION_FILE} in its checkpoint)")
        self.stream = BatchStream(ray.train.get_dataset_shard("train"), self.train.batch_size,
                                  skip=behind // self.train.batch_size)
        return self.stream

    def checkpoint_due(self, state: TrainState) -> bool:
        every = self.train.checkpoint_every
        return bool(every and state.step % every == 0) or state.step == self.train.steps

    def save_checkpoint(self, state: TrainState, metrics: dict[str, float], save: Callable[[str], None]) -> None:
        """A collective: every rank calls it. Rank 0 writes `save(folder)` plus the data position
        and reports it (Ray uploads it and lists it only once complete); the others report none."""
        position = self._position(state)
        if self.logger is None:
            ray.train.report(metrics, checkpoint=None)
            return
        self.logger.flush()  # everything up to this step is in MLflow before the checkpoint exists
        with tempfile.TemporaryDirectory() as tmp:
            save(tmp)
            Path(tmp, POSITION_FILE).write_text(json.dumps(position))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def _position(self, state: TrainState) -> dict[str, Any]:
        """`rows`: input rows all ranks consumed from the first row of the first attempt (a resumed
        attempt's dataset starts there), and each rank's clips_seen."""
        rows = self.stream.rows if self.stream is not None else 0
        per_rank = gather((state.clips_seen, rows), self.world)
        return {"step": state.step, "world_size": self.world, "clips_seen_per_rank": [c for c, _ in per_rank],
                "rows": self.start.rows + sum(r for _, r in per_rank)}

    def finish(self, state: TrainState, model: torch.nn.Module, *, save_model: Callable[[str], None],
               python_model: PythonModel, signature: ModelSignature | None = None) -> None:
        """A collective. Logs every rank's weight fingerprint and node; rank 0 then saves the model
        with `save_model(folder)` and registers it as `tracking.registered_model@alias`."""
        ranks = gather((fingerprint(model), ray.get_runtime_context().get_node_id()), self.world)
        if self.logger is None:
            return
        self.logger.flush()
        log_fingerprints(self.logger.client, self.run_id, ranks, state.step)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(tmp)
            version = register_model(self.run_id, tmp, registered_model=self.tracking.registered_model,
                                     alias=self.tracking.alias, python_model=python_model, signature=signature)
        self.print(f"registered {self.tracking.registered_model} v{version} @{self.tracking.alias}")
