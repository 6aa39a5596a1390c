"""`jepa ensemble`: join world models trained apart over one encoder into one model that plans
with their averaged predictions (``jepa.ac_ensemble``), saved to a folder or registered the way
`jepa train-ac` registers a model, so `jepa eval plan` and Serve load it like any other."""

from __future__ import annotations

import tempfile
from pathlib import Path

from jepa.world_model import WorldModel, ensemble, save_world_model
from ray_jobs import tracking
from ray_jobs.eval_plan import load_world


def join(uris: list[str]) -> WorldModel:
    if len(uris) < 2:
        raise ValueError(f"an ensemble joins at least 2 world models, got {len(uris)}")
    return ensemble([load_world(uri)[0] for uri in uris])


def save_ensemble(uris: list[str], folder: str | Path) -> Path:
    return save_world_model(join(uris), folder)


def register_ensemble(uris: list[str], name: str, alias: str, experiment: str) -> tuple[str, int]:
    """Register the ensemble of ``uris`` as ``name``@``alias`` in a run of ``experiment`` that
    records its members; returns (run id, version)."""
    from ray_jobs.training.registration import register_model

    world = join(uris)
    members = {f"ensemble.member{i}": uri for i, uri in enumerate(uris)}
    run_id = tracking.start_run(experiment, members | {"ensemble.size": len(world.predictor)},
                                {"jepa.encoder": world.cfg.encoder, "jepa.ensemble": "true"},
                                run_name=f"ensemble of {len(uris)}")
    with tempfile.TemporaryDirectory() as tmp:
        save_world_model(world, tmp)
        version = register_model(run_id, tmp, registered_model=name, alias=alias,
                                 python_model=tracking.WorldModelPyfunc())
    return run_id, version
