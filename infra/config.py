"""Settings of the local stack: `StackConfig` (state folder, bucket, ports, timeouts; each default
overridable by the JEPA_* variable named beside it) and `StackError`, the error the stack raises for
anything the user can act on. It exists so that code which only needs to know where the stack is
(tests, `jepa demo`, clients building `S3Settings`) gets it without the service definitions or the
process machinery; it is the bottom layer: `infra.services`, `infra.stack` and `infra.cli` import
it, and it imports none of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra.processes import ServiceError

if TYPE_CHECKING:
    from pipelines.storage import S3Settings


class StackError(ServiceError):
    """Something the user can act on: a busy port, a service that did not come up, a missing tool."""



def _env_int(name: str, default: int) -> Callable[[], int]:
    def read() -> int:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise StackError(f"{name}={value!r} is not an integer") from None
    return read


def _env_str(name: str, default: str) -> Callable[[], str]:
    return lambda: os.environ.get(name, "").strip() or default


def _env_bool(name: str, default: bool) -> Callable[[], bool]:
    def read() -> bool:
        value = os.environ.get(name, "").strip().lower()
        return default if not value else value not in ("0", "false", "no", "off")
    return read


@dataclass
class StackConfig:
    """Where the stack keeps its state and which ports it binds. Each default can be overridden by
    the environment variable named beside it, so `StackConfig()` honours the user's shell."""

    state_dir: Path = field(default_factory=lambda: Path(_env_str("JEPA_STACK_DIR", ".stack")()))
    """Data, logs, pidfiles and stack.env (JEPA_STACK_DIR); made absolute on construction."""
    bucket: str = field(default_factory=_env_str("JEPA_BUCKET", "jepa"))
    """Bucket created at start; MLflow artifacts go under s3://BUCKET/mlflow (JEPA_BUCKET)."""
    s3_port: int = field(default_factory=_env_int("JEPA_S3_PORT", 8333))
    """SeaweedFS S3 API (JEPA_S3_PORT)."""
    weed_master_port: int = field(default_factory=_env_int("JEPA_WEED_MASTER_PORT", 9333))
    weed_volume_port: int = field(default_factory=_env_int("JEPA_WEED_VOLUME_PORT", 8080))
    weed_filer_port: int = field(default_factory=_env_int("JEPA_WEED_FILER_PORT", 8888))
    """SeaweedFS internals; weed also binds each of its four ports + 10000 for gRPC."""
    mlflow_port: int = field(default_factory=_env_int("JEPA_MLFLOW_PORT", 5000))
    """MLflow tracking server (JEPA_MLFLOW_PORT)."""
    mlflow_workers: int = 1
    """uvicorn workers: one starts in ~7 s; each extra costs ~250 MB and seconds of start-up."""
    ray: bool = field(default_factory=_env_bool("JEPA_STACK_RAY", True))
    """Start a Ray head (JEPA_STACK_RAY=0 for S3 + MLflow only)."""
    ray_port: int = field(default_factory=_env_int("JEPA_RAY_PORT", 6379))
    """Ray GCS port; clients use RAY_ADDRESS=127.0.0.1:PORT (JEPA_RAY_PORT)."""
    ray_client_port: int = field(default_factory=_env_int("JEPA_RAY_CLIENT_PORT", 10001))
    """Ray Client server (ray://127.0.0.1:PORT)."""
    ray_agent_port: int = 0
    """Dashboard agent HTTP port; 0 picks a free one, so a test's ray.init() can keep 52365."""
    ray_num_cpus: int = field(default_factory=_env_int("JEPA_RAY_NUM_CPUS", 4))
    """Logical CPUs of the head: more than the 2 cores so Ray Data and Train don't starve each other."""
    ray_dashboard: bool = field(default_factory=_env_bool("JEPA_RAY_DASHBOARD", True))
    """Ray dashboard on 127.0.0.1:ray_dashboard_port; it also serves the state API that Ray Train
    polls (without it, Train logs "Failed to query ... actor state" every few seconds)."""
    ray_dashboard_port: int = 8265
    access_key: str = "jepa"
    """S3 keys handed to clients; SeaweedFS accepts any pair unless given an identity config."""
    secret_key: str = "jepa-local-secret"
    region: str = "us-east-1"
    start_timeout_s: float = 120.0
    """Per service; SeaweedFS took 1-15 s here, MLflow ~7 s, the Ray head ~6 s."""
    stop_timeout_s: float = 40.0
    """Per service, before SIGKILL; SeaweedFS needs ~16 s after SIGTERM (its filer waits 15 s)."""

    host: str = field(default="127.0.0.1", init=False)
    """Every service binds loopback only."""

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().absolute()

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def ray_address(self) -> str:
        return f"{self.host}:{self.ray_port}"

    def s3_settings(self, endpoint: str | None = None) -> S3Settings:
        """How `pipelines.storage` reaches the stack's bucket; pass the endpoint of a running
        SeaweedFS (it keeps the port it started with), else the configured one is used."""
        from pipelines.storage import S3Settings  # boto3 and pyarrow: not for `jepa stack --help`

        return S3Settings(endpoint=endpoint or self.s3_endpoint, access_key=self.access_key,
                          secret_key=self.secret_key, region=self.region)
