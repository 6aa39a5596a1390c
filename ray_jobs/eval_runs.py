"""What every `jepa eval ...` command shares: loading the model it judges, and recording the result
as a table on stdout, Markdown, JSON and an MLflow evaluation run linked to the model version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from jepa.checkpoint import load_model
from jepa.config import RunConfig
from jepa.model import JEPA, build_jepa
from ray_jobs import tracking

EVAL_EXPERIMENT = "jepa-eval"


@dataclass
class ModelRef:
    """Which model an evaluation judged: what its MLflow evaluation run is linked to."""

    uri: str
    name: str
    version: int | None
    """None for a checkpoint folder outside the registry."""
    run_id: str | None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}" if self.version is not None else self.name

    @classmethod
    def of(cls, uri: str) -> "ModelRef":
        """A registered model's version and run (`models:/...`), or a local folder by its name."""
        if uri.startswith("models:/"):
            info = tracking.resolve_model_version(uri)
            return cls(uri, info["name"], info["version"], info["run_id"])
        return cls(uri, Path(uri).name, None, None)


@dataclass
class EvaluatedModel(ModelRef):
    model: JEPA
    cfg: RunConfig


def load_evaluated_model(uri: str, device: str = "cpu") -> EvaluatedModel:
    """A registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or a local checkpoint folder."""
    if not uri.startswith("models:/") and not Path(uri).is_dir():
        raise FileNotFoundError(f"{uri}: not a models:/ URI or a checkpoint folder")
    ref = ModelRef.of(uri)
    model, cfg = load_model(tracking.download_checkpoint(uri) if ref.version is not None else uri, device)
    return EvaluatedModel(ref.uri, ref.name, ref.version, ref.run_id, model=model.eval(), cfg=cfg)


def random_init(cfg: RunConfig) -> JEPA:
    """The baseline every evaluation compares with: the same architecture at the initial weights
    its training started from (seeded by `train.seed`; the global RNG is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs).eval()


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def text(self) -> str:
        cells = [self.headers, *[[str(c) for c in row] for row in self.rows]]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


def log_evaluation(
    evaluated: ModelRef,
    kind: str,
    *,
    params: dict[str, Any],
    metrics: dict[str, float],
    result: dict[str, Any],
    report_md: str,
    figures: dict[str, Any],
) -> str:
    """One MLflow run in experiment `jepa-eval` holding an evaluation of a model version; the run
    and the version point at each other by tags. Returns the run id."""
    mlflow.set_experiment(EVAL_EXPERIMENT)
    tags = {"jepa.eval": kind, "jepa.model_uri": evaluated.uri, "git_sha": tracking.git_sha()}
    if evaluated.version is not None:
        tags |= {"jepa.model_name": evaluated.name, "jepa.model_version": str(evaluated.version)}
    if evaluated.run_id:
        tags["jepa.training_run_id"] = evaluated.run_id
    with mlflow.start_run(run_name=f"{kind} {evaluated.label}", tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_text(report_md, f"{kind}/report.md")
        mlflow.log_text(json.dumps(result, indent=2), f"{kind}/result.json")
        for path, fig in figures.items():
            mlflow.log_figure(fig, path)
    if evaluated.version is not None:
        MlflowClient().set_model_version_tag(evaluated.name, str(evaluated.version), f"eval.{kind}.run_id",
                                             run.info.run_id)
    return run.info.run_id
