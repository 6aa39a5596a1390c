"""MLflow glue: a job's run (params, tags, a loss-curve plot), the JEPA pyfunc that a registered
model is logged as (our checkpoint folder inside), and the registry: resolving, downloading,
listing and promoting versions. Rank 0's metric logging and registration are in ray_jobs.training."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from jepa.config import RunConfig
from ray_jobs.training.registration import CHECKPOINT_ARTIFACT



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


def start_run(experiment: str, config: dict[str, Any], tags: dict[str, str], run_name: str | None = None) -> str:
    """Create a job's run with its resolved config and the git SHA as params (the SHA also as a
    tag, to filter runs by); returns its id."""
    mlflow.set_experiment(experiment)
    sha = git_sha()
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(flatten(config) | {"git_sha": sha})
        mlflow.set_tags({"git_sha": sha, **tags})
    return run.info.run_id


def run_url(run_id: str) -> str:
    run = MlflowClient().get_run(run_id)
    return f"{mlflow.get_tracking_uri().rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


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


class WorldModelPyfunc(mlflow.pyfunc.PythonModel):
    """An action-conditioned world model (`jepa train-ac`): `predict(frames)` -> each frame's
    pooled representation (B, E), the space `/v1/plan` measures energies in."""

    def load_context(self, context) -> None:
        from jepa.world_model import load_world_model

        self.model = load_world_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.model.encode(np.asarray(model_input)).mean(dim=1).numpy()


def model_signature(cfg: RunConfig, embed_dim: int) -> ModelSignature:
    m = cfg.model
    clips = TensorSpec(np.dtype(np.uint8), (-1, m.num_frames, m.img_size, m.img_size, 3))
    return ModelSignature(
        inputs=Schema([clips]), outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim))])
    )


def download_checkpoint(model_uri: str, dst: str | Path | None = None) -> Path:
    """Fetch the checkpoint folder of a registered model (`models:/NAME@ALIAS`)."""
    dst = Path(dst or tempfile.mkdtemp(prefix="jepa-model-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    flavor = Model.load(local).flavors["python_function"]
    return local / flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"]


def resolve_model_version(model_uri: str) -> dict[str, Any]:
    """Name, version and run of a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI; a malformed
    URI or one that names nothing registered is a RegistryError."""
    from mlflow.exceptions import MlflowException

    ref = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    if not ref or ("@" not in ref and "/" not in ref):
        raise RegistryError(f"expected models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, version = ref.rsplit("/", 1)
            mv = client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        raise RegistryError(f"{model_uri} is not registered at {mlflow.get_tracking_uri()} "
                            f"(`jepa models list NAME` shows the versions and aliases)") from None
    return {"name": mv.name, "version": int(mv.version), "run_id": mv.run_id, "uri": model_uri}


CHAMPION_ALIAS = "champion"
CURVE_METRICS = ("loss", "target_std", "effective_rank")
LOSS_CURVE_ARTIFACT = "plots/loss_curve.png"


class RegistryError(LookupError):
    """A registered model or version that does not exist; the message names it."""


def _check_version(client: MlflowClient, name: str, version: str | int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r} at {mlflow.get_tracking_uri()}") from None
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name} has no version {version} (versions: {known or 'none'})") from None


def promote(name: str, version: str | int, alias: str = CHAMPION_ALIAS) -> int | None:
    """Point `models:/NAME@alias` at `version`; returns the version it pointed at before, if any."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    _check_version(client, name, version)
    try:
        previous: int | None = int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    return previous


def list_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a registered model, newest first: version, aliases, run id, creation time
    (ms since the epoch) and status."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r} at {mlflow.get_tracking_uri()}") from None
    aliases: dict[int, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(int(version), []).append(alias)
    versions = client.search_model_versions(f"name='{name}'")
    return [
        {"version": int(v.version), "aliases": sorted(aliases.get(int(v.version), [])),
         "run_id": v.run_id, "created_ms": v.creation_timestamp, "status": v.status}
        for v in sorted(versions, key=lambda v: -int(v.version))
    ]


def log_loss_curve(run_id: str, artifact_file: str = LOSS_CURVE_ARTIFACT) -> str:
    """Plot the run's `loss` history (and `target_std`, `effective_rank` when logged) against the
    step, one panel each, and log it to the run as a PNG; returns the artifact path."""
    from matplotlib.figure import Figure  # not pyplot: no backend or global figure state involved

    client = MlflowClient()
    histories = {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
                 for name in CURVE_METRICS}
    histories = {name: points for name, points in histories.items() if points}
    if "loss" not in histories:
        raise ValueError(f"run {run_id} has no 'loss' metric to plot")
    fig = Figure(figsize=(7, 2.2 * len(histories)), layout="constrained")
    axes = fig.subplots(len(histories), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, points) in zip(axes, histories.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"run {run_id[:8]}")
    axes[-1].set_xlabel("step")
    client.log_figure(run_id, fig, artifact_file)
    return artifact_file
