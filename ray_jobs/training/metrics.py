"""Rank 0's metrics in MLflow: buffered, sent in batches, and never a step twice."""

from __future__ import annotations

import time

import mlflow
from mlflow.tracking import MlflowClient


class StepLogger:
    """Logs a step's metrics every `log_every` steps (and the last), buffered so logging never
    dominates a short step. MLflow cannot delete a metric point, and a restarted attempt recomputes
    the steps after its checkpoint: steps up to the run's highest logged step of `key` are skipped."""

    def __init__(self, run_id: str, *, log_every: int, last_step: int, key: str = "loss", flush_every: int = 20):
        self.client = MlflowClient()
        self.run_id, self.log_every, self.last_step, self.flush_every = run_id, log_every, last_step, flush_every
        self.logged_through = max((m.step for m in self.client.get_metric_history(run_id, key)), default=-1)
        self._buffer: list[mlflow.entities.Metric] = []

    def due(self, step: int) -> bool:
        """Whether `step` is logged: a log step not logged by an earlier attempt."""
        return step > self.logged_through and (step % self.log_every == 0 or step == self.last_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer)
            self._buffer = []

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
