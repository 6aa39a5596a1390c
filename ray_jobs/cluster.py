"""Connecting to Ray with the environment every task needs (storage and tracking settings)."""

from __future__ import annotations

import json
import os

import ray

from pipelines.storage import CHECKSUM_SETTING, ENDPOINT_VARIABLES

# Variables forwarded to every Ray worker, so tasks on other nodes reach the same bucket and
# server with the same credentials. Without keys, each node's own default chain signs (AWS_PROFILE
# is forwarded; IRSA's and instance roles' settings come with the node itself).
FORWARDED_ENV = (
    *ENDPOINT_VARIABLES,
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION",
    *CHECKSUM_SETTING,
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "JEPA_API_TOKEN",
)  # fmt: skip


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _job_env_keys() -> set[str]:
    """Env vars the submitted Ray job (`ray job submit --runtime-env-json`) already sets: Ray refuses
    a driver whose own runtime env repeats one of them ("Failed to merge the Job's runtime env")."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    return set(json.loads(raw).get("runtime_env", {}).get("env_vars", {})) if raw else set()


def state_api_on_own_cluster() -> None:
    """Worker setup hook: Ray's state API (which Ray Train's placement-group cleaner polls) finds
    its cluster from RAY_ADDRESS, else from the newest Ray started on the machine, which need not
    be this one: with two clusters on a host the cleaner asked the wrong one, timed out, and held
    each run's shutdown for its stop timeout."""
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def job_runtime_env(env_vars: dict[str, str]) -> dict:
    """The runtime env of a driver's job: `env_vars` for every worker, and the state API pinned."""
    return {"env_vars": env_vars, "worker_process_setup_hook": state_api_on_own_cluster}


class ClusterError(RuntimeError):
    """No Ray cluster where one is needed, or RAY_ADDRESS names one that does not answer."""


def require_cluster(action: str) -> None:
    """Refuse `action` when it would land in a Ray started for this command alone (and stopped
    when it exits): a Serve app, for one, must outlive the command that deploys it."""
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        raise ClusterError(f"no Ray cluster to {action}: RAY_ADDRESS is not set. Start the local stack "
                           f"(`jepa stack up`, then `eval \"$(jepa stack env)\"`) or set RAY_ADDRESS=HOST:6379")


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local one with `num_cpus` logical CPUs.

    On a 2-core box, more logical CPUs than cores lets Ray Data decode while Train steps.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    job_keys = _job_env_keys()
    runtime_env = job_runtime_env({k: v for k, v in forwarded_env().items() if k not in job_keys})
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
        except ConnectionError as err:
            raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']}: "
                               f"{str(err).splitlines()[0]}") from err
    else:
        # address="local": never attach by accident to some other cluster running on this machine.
        # The dashboard (on 127.0.0.1) also serves the state API that Ray Train polls.
        ray.init(address="local", num_cpus=num_cpus or max(4, 2 * (os.cpu_count() or 1)),
                 dashboard_host="127.0.0.1", runtime_env=runtime_env)
