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

This module is the `Stack` itself (pidfiles, locking, start order, rollback, stop); the settings
are `infra.config.StackConfig`, the services `infra.services`, the command line `infra.cli`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from infra.config import StackConfig, StackError
from infra.processes import (ProcRecord, group_members, log_tail, pid_alive, port_free, port_owner, reap, spawn,
                             stop_group)
from infra.services import MLflowServer, RayHead, SeaweedFS, Service


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


if __name__ == "__main__":  # `python -m infra.stack`, as the docs say: the same as `python -m infra.cli`
    from infra.cli import cli

    sys.exit(cli())
