"""Connecting to Ray with the environment every task needs (storage and tracking settings)."""

from __future__ import annotations

import json
import os

import ray

# Variables forwarded to every Ray worker, so tasks on other nodes reach the same bucket and server.
FORWARDED_ENV = (
    "JEPA_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_REQUEST_CHECKSUM_CALCULATION",  # pyarrow S3 writes to SeaweedFS (pipelines.storage.pyarrow_fs)
    "MLFLOW_TRACKING_URI",
    "JEPA_API_TOKEN",
)


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _job_env_keys() -> set[str]:
    """Env vars the submitted Ray job (`ray job submit --runtime-env-json`) already sets: Ray refuses
    a driver whose own runtime env repeats one of them ("Failed to merge the Job's runtime env")."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return set(json.loads(raw).get("runtime_env", {}).get("env_vars", {})) if raw else set()


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one with `num_cpus` logical CPUs.

    On a 2-core box, more logical CPUs than cores lets Ray Data decode while Train steps.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    job_keys = _job_env_keys()
    runtime_env = {"env_vars": {k: v for k, v in forwarded_env().items() if k not in job_keys}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
    else:
        # address="local": never attach by accident to some other cluster running on this machine.
        # The dashboard (on 127.0.0.1) also serves the state API that Ray Train polls.
        ray.init(address="local", num_cpus=num_cpus or max(4, 2 * (os.cpu_count() or 1)),
                 dashboard_host="127.0.0.1", runtime_env=runtime_env)
