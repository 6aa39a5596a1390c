"""MLflow glue: one run per pretraining job, per-step metrics from rank 0, and the trained model
logged as a pyfunc (our checkpoint folder inside) and registered under an alias."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from jepa.config import RunConfig

MODEL_ARTIFACT = "model"
CHECKPOINT_ARTIFACT = "checkpoint"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def start_run(cfg: RunConfig, run_name: str | None = None) -> str:
    """Create the job's run with the resolved config as params; returns its id."""
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(cfg.to_dict()))
        mlflow.set_tags({"git_sha": git_sha(), "jepa.arch": cfg.model.arch})
    return run.info.run_id


def run_url(run_id: str) -> str:
    run = MlflowClient().get_run(run_id)
    return f"{mlflow.get_tracking_uri().rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


class MetricLogger:
    """Buffers metrics and sends them in batches, so logging never dominates a short step."""

    def __init__(self, run_id: str, flush_every: int = 20):
        self.client = MlflowClient()
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[mlflow.entities.Metric] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer)
            self._buffer = []


class JepaPyfunc(mlflow.pyfunc.PythonModel):
    """`mlflow.pyfunc.load_model(...).predict(clips)` -> mean-pooled embeddings (B, D)."""

    def load_context(self, context) -> None:
        from jepa.checkpoint import load_model

        self.model, self.cfg = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        from jepa.transforms import clips_to_tensor

        with torch.no_grad():
            tokens = self.model.embed(clips_to_tensor(np.asarray(model_input), torch.device("cpu")))
        return tokens.mean(dim=1).numpy()


def model_signature(cfg: RunConfig, embed_dim: int) -> ModelSignature:
    m = cfg.model
    clips = TensorSpec(np.dtype(np.uint8), (-1, m.num_frames, m.img_size, m.img_size, 3))
    return ModelSignature(
        inputs=Schema([clips]), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim))])
    )


def log_and_register(run_id: str, checkpoint_dir: str | Path, cfg: RunConfig, embed_dim: int) -> int:
    """Log the checkpoint as an MLflow model in `run_id`, register it and point the alias at it."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=JepaPyfunc(),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
            signature=model_signature(cfg, embed_dim),
            pip_requirements=["torch", "numpy", "jepa-ray"],
            registered_model_name=cfg.tracking.registered_model,
        )
    version = int(info.registered_model_version)
    MlflowClient().set_registered_model_alias(cfg.tracking.registered_model, cfg.tracking.alias, version)
    return version


def download_checkpoint(model_uri: str, dst: str | Path | None = None) -> Path:
    """Fetch the checkpoint folder of a registered model (`models:/NAME@ALIAS`)."""
    dst = Path(dst or tempfile.mkdtemp(prefix="jepa-model-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    flavor = Model.load(local).flavors["python_function"]
    return local / flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]


def resolve_model_version(model_uri: str) -> dict[str, Any]:
    """Name, version and run of a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
    ref = model_uri[len("models:/"):]
    client = MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, version = ref.rsplit("/", 1)
        mv = client.get_model_version(name, version)
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "uri": model_uri}
