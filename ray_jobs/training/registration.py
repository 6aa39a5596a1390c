"""The end of a run: each rank's weight fingerprint (equal iff DDP kept the ranks in step) and
node, logged as MLflow params, and the trained model logged and registered under an alias."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import torch
import torch.distributed as dist
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient

MODEL_ARTIFACT = "model"
CHECKPOINT_ARTIFACT = "checkpoint"
"""The model folder inside the logged pyfunc (its `artifacts` key)."""


def fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: equal across DDP ranks iff they hold identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def gather(value, world: int) -> list:
    """`value` of every rank, in rank order (a collective: every rank calls it)."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def log_fingerprints(client: MlflowClient, run_id: str, ranks: list[tuple[str, str]], step: int) -> None:
    """Params `ddp.fingerprint.rank{r}` and `ddp.node.rank{r}` from (fingerprint, node id) per rank.
    MLflow params are immutable: a relaunch that trains further logs `ddp.fingerprint.step{S}.rank{r}`."""
    again = "ddp.fingerprint.rank0" in client.get_run(run_id).data.params
    tag = f"step{step}." if again else ""
    for r, (fp, node) in enumerate(ranks):
        client.log_param(run_id, f"ddp.fingerprint.{tag}rank{r}", fp)
        client.log_param(run_id, f"ddp.node.{tag}rank{r}", node)
    prints = [fp for fp, _ in ranks]
    if len(set(prints)) != 1:
        print(f"[train] WARNING: DDP ranks diverged: {prints}", flush=True)


def register_model(run_id: str, model_dir: str | Path, *, registered_model: str, alias: str,
                   python_model: mlflow.pyfunc.PythonModel, signature: ModelSignature | None = None) -> int:
    """Log `model_dir` inside a pyfunc model of `run_id`, register it as `registered_model` and
    point `alias` at the new version; returns the version."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=python_model,
            artifacts={CHECKPOINT_ARTIFACT: str(model_dir)},
            signature=signature,
            pip_requirements=["torch", "numpy", "jepa-ray"],
            registered_model_name=registered_model,
        )
    version = int(info.registered_model_version)
    MlflowClient().set_registered_model_alias(registered_model, alias, version)
    return version
