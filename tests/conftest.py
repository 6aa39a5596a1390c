"""Fixtures shared by the whole suite.

- `local_stack` (session): a real embedded stack (SeaweedFS S3 + MLflow server; no Ray head) on
  free ports in a temporary folder, started lazily by the first test that asks for `s3_env`,
  `mlflow_env` or `local_stack`, so unit tests never pay for it. Stopped at the end of the session.
- `s3_env` (session): sets JEPA_S3_ENDPOINT and AWS_* (from first use to the end of the session);
  yields `.endpoint`, `.bucket`, `.access_key`, `.secret_key`, `.region` and `.client()` (boto3).
- `mlflow_env` (session): sets MLFLOW_TRACKING_URI likewise; yields `.tracking_uri`.
- `ray_local` (module): an in-process local Ray cluster (`ray.init(num_cpus=4)`) whose workers
  already carry the stack's S3 and MLflow variables (the stack itself is not started by it). Ray
  is shut down at the end of every module, by whatever means it was started.

Under pytest-xdist (`make test`: 2 workers) each worker has its own session stack and Ray
clusters, on its own share of the port range.

Settings from the developer's shell (e.g. after `eval "$(jepa stack env)"`) are removed for the
session so tests never reach a stack they did not start; RAY_AUTH_MODE=disabled is set.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.config import StackConfig
from infra.stack import Stack

# Client settings that must not leak from the developer's shell into tests.
SCRUBBED_ENV = (
    "JEPA_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS", "JEPA_API_TOKEN",
)  # fmt: skip


@dataclass(frozen=True)
class S3Env:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))


@dataclass(frozen=True)
class MlflowEnv:
    tracking_uri: str


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_range() -> range:
    """20000-22999, so that neither a port nor port + 10000 falls in Ray's worker range
    (10002-19999) or the kernel's ephemeral range (32768+) where outgoing connections could grab
    it; split between pytest-xdist workers, which start their stacks at the same moment."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = 3000 // workers
    return range(20000 + worker * size, 20000 + (worker + 1) * size)


def free_ports(n: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    """`n` ports free together with port + 10000 (SeaweedFS takes that for gRPC), from this
    worker's share of 20000-22999 (`_port_range`)."""
    taken = {p for q in exclude for p in (q, q + 10000)}
    ports: list[int] = []
    candidates = _port_range()
    for port in random.sample(candidates, len(candidates)):
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
            taken |= {port, port + 10000}
            if len(ports) == n:
                return ports
    raise RuntimeError(f"could not find {n} free port pairs in {candidates}")


def fresh_stack_config(state_dir: Path, *, ray: bool = False, bucket: str = "jepa-test") -> StackConfig:
    """A StackConfig on free ports under `state_dir`."""
    s3, master, volume, filer, mlflow, gcs, client = free_ports(7)
    return StackConfig(
        state_dir=state_dir, bucket=bucket, s3_port=s3, weed_master_port=master,
        weed_volume_port=volume, weed_filer_port=filer, mlflow_port=mlflow, ray=ray,
        ray_port=gcs, ray_client_port=client, ray_num_cpus=4, ray_dashboard=False,
    )  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _hermetic_env() -> Iterator[None]:
    patch = pytest.MonkeyPatch()
    for name in SCRUBBED_ENV:
        patch.delenv(name, raising=False)
    patch.setenv("RAY_AUTH_MODE", "disabled")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def make_stack_config():
    """`make_stack_config(state_dir, ray=False, bucket="jepa-test")`: a config on free ports."""
    return fresh_stack_config


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory) -> StackConfig:
    """Ports and folder of the session's stack: cheap, starts nothing."""
    return fresh_stack_config(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="session")
def local_stack(stack_config) -> Iterator[Stack]:
    stack = Stack(stack_config)
    stack.up()
    yield stack
    stack.down(timeout_s=5.0)  # throwaway data: no need to wait out weed's ~16 s graceful stop


@pytest.fixture(scope="session")
def s3_env(local_stack) -> Iterator[S3Env]:
    """Session-scoped so module-scoped fixtures can use it: once a test asks for it, JEPA_S3_ENDPOINT
    and AWS_* stay set for the rest of the session (they only ever point at this session's stack)."""
    cfg = local_stack.config
    env = S3Env(endpoint=cfg.s3_endpoint, bucket=cfg.bucket, access_key=cfg.access_key,
                secret_key=cfg.secret_key, region=cfg.region)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPA_S3_ENDPOINT", env.endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", env.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", env.secret_key)
        patch.setenv("AWS_REGION", env.region)
        patch.setenv("AWS_DEFAULT_REGION", env.region)
        yield env


@pytest.fixture(scope="session")
def mlflow_env(local_stack) -> Iterator[MlflowEnv]:
    """Session-scoped like `s3_env`: MLFLOW_TRACKING_URI stays set once a test asks for it."""
    env = MlflowEnv(tracking_uri=local_stack.config.mlflow_uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env.tracking_uri)
        if "mlflow" in sys.modules:  # an earlier explicit set_tracking_uri would win over the variable
            sys.modules["mlflow"].set_tracking_uri(env.tracking_uri)
        yield env


@pytest.fixture(scope="module", autouse=True)
def _ray_per_module() -> Iterator[None]:
    """Every test module ends with Ray shut down, however it was started (`ray_local`, or a CLI
    test's `connect()`), so no module runs on a cluster that another module's teardown went
    through. Seen in our CI: after a module shut Serve down and dropped its Ray Train controller,
    the driver's GCS long poll never returned, and the next module's first Ray Train run waited
    forever for its controller to come alive (a Ray core fault we could not pin down)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(stack_config) -> None:
    """A fresh local Ray cluster for the test module (`_ray_per_module` shuts it down). Worker
    processes inherit the environment of the raylet, not of later tests, so the stack's client
    variables go in as the job's env_vars."""
    import ray

    from ray_jobs.cluster import job_runtime_env

    if ray.is_initialized():  # a test of this module connected already: use it
        return
    worker_env = {k: v for k, v in Stack(stack_config).env().items() if k != "RAY_ADDRESS"}
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", num_cpus=4, dashboard_host="127.0.0.1", runtime_env=job_runtime_env(worker_env))


@pytest.fixture(scope="module")
def stack_client_env(local_stack, ray_local) -> Iterator[StackConfig]:
    """What a user gets from `eval "$(jepa stack env)"`: every client variable of the stack (S3,
    MLflow, ...) set for the test module, except RAY_ADDRESS (tests use `ray_local`)."""
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        for key, value in Stack(local_stack.config).env().items():
            if key != "RAY_ADDRESS":
                patch.setenv(key, value)
        mlflow.set_tracking_uri(local_stack.config.mlflow_uri)
        yield local_stack.config
