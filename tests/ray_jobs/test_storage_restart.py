"""SeaweedFS killed and restarted under load: S3 calls retry through the outage instead of failing,
and `jepa pretrain` running meanwhile finishes its run.

Everything runs on a stack of its own (SeaweedFS + MLflow on free ports), because the session's
SeaweedFS is shared by other tests. `jepa pretrain` runs as a subprocess with its own local Ray:
the session's `ray_local` workers carry the session stack's variables, so Ray Data tasks there
would read from the wrong store."""

import io
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from infra.processes import wait_until
from infra.stack import Stack
from pipelines.storage import get_bytes, put_bytes, pyarrow_fs
from pipelines.synth_physics import PhysicsConfig, synthesize

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

DOWN_S = 3.0
"""How long weed stays dead before the restart begins; its start-up adds ~3 s (idle machine)."""
STEPS = 12
OVERRIDES = [
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
    "train.batch_size=2", "train.num_workers=2", "train.global_batch_size=8", "train.log_every=1",
    f"train.steps={STEPS}", "train.checkpoint_every=2", "train.keep_checkpoints=2",
    # A storage error that escaped the retries must fail the job, not hide behind a restart.
    "train.max_failures=0",
    "data.held_out_fraction=0", "tracking.experiment=storage-restart", "tracking.registered_model=jepa-restart",
]  # fmt: skip


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory, make_stack_config):
    """SeaweedFS + MLflow for this module alone; this process's storage calls go to it."""
    stack = Stack(make_stack_config(tmp_path_factory.mktemp("restart-stack")))
    stack.up()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in stack.env().items():
                patch.setenv(key, value)
            yield stack
    finally:
        stack.down(timeout_s=5.0)


def _restart_seaweedfs(stack: Stack, while_down: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """SIGKILL the stack's weed, run `while_down`, wait DOWN_S, start weed again on the same ports and
    data folder. Returns epoch seconds: (killed, restart begun, answering again)."""
    os.killpg(stack.status()["seaweedfs"]["pid"], signal.SIGKILL)  # weed leads its own process group
    down_at = time.time()
    assert wait_until(lambda: not stack.status()["seaweedfs"]["running"], 10)
    while_down()
    time.sleep(DOWN_S)
    restart_at = time.time()
    stack.up()  # sees the dead pidfile, clears its leftovers and starts SeaweedFS alone (MLflow runs on)
    return down_at, restart_at, time.time()


def test_s3_calls_started_during_an_outage_complete_after_the_restart(own_stack):
    """boto3 (clip reads) and pyarrow (Ray Train's checkpoint uploads) through a filesystem pickled
    the way Ray ships it to workers: started while weed is dead, they must wait and succeed."""
    bucket = own_stack.config.bucket
    payload = os.urandom(300_000)
    put_bytes(f"s3://{bucket}/restart/before.bin", payload)
    fs = pickle.loads(pickle.dumps(pyarrow_fs()))

    def pyarrow_write():
        with fs.open_output_stream(f"{bucket}/restart/during.bin") as out:
            out.write(payload)
        return payload

    calls = {
        "boto3 read": lambda: get_bytes(f"s3://{bucket}/restart/before.bin"),
        "pyarrow read": lambda: fs.open_input_file(f"{bucket}/restart/before.bin").readall(),
        "pyarrow write": pyarrow_write,
    }
    results: dict[str, tuple[object, float]] = {}

    def call(name):
        try:
            results[name] = (calls[name](), time.time())
        except Exception as err:  # reported by the assertion below
            results[name] = (err, time.time())

    threads = [threading.Thread(target=call, args=(name,), daemon=True) for name in calls]
    down_at, restart_at, up_at = _restart_seaweedfs(own_stack, lambda: [t.start() for t in threads])
    for t in threads:
        t.join(timeout=120)
    print(f"\nSeaweedFS down {up_at - down_at:.1f} s; "
          + ", ".join(f"{name} done {at - down_at:.1f} s after the kill" for name, (_, at) in results.items()))
    failed = [f"{name}: {str(value)[:300]}" for name, (value, _) in results.items() if value != payload]
    assert not failed and len(results) == len(calls), "\n".join(failed)
    assert all(done_at >= restart_at for _, done_at in results.values()), "a call finished while weed was dead"
    assert get_bytes(f"s3://{bucket}/restart/during.bin") == payload


def _listed(bucket: str, run_name: str) -> list[str]:
    """Checkpoint folders in Ray Train's snapshot for the run (only complete uploads get there)."""
    try:
        text = get_bytes(f"s3://{bucket}/checkpoints/{run_name}/checkpoint_manager_snapshot.json").decode()
    except FileNotFoundError:
        return []
    return sorted(set(re.findall(r"checkpoint_\d{4}-\d\d-\d\d_[\d.-]+", text)))


def _stored(stack: Stack, run_name: str) -> dict[str, float]:
    """Checkpoint folder -> upload time (epoch s, whole seconds) of its train_state.pt; a plain boto3
    client, since pipelines.storage's listing has no LastModified."""
    import boto3
    from botocore.config import Config

    c = stack.config
    s3 = boto3.client("s3", endpoint_url=c.s3_endpoint, aws_access_key_id=c.access_key,
                      aws_secret_access_key=c.secret_key, region_name=c.region,
                      config=Config(s3={"addressing_style": "path"}))
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=c.bucket, Prefix=f"checkpoints/{run_name}/")
    return {obj["Key"].rsplit("/", 2)[-2]: obj["LastModified"].timestamp()
            for page in pages for obj in page.get("Contents", []) if obj["Key"].endswith("/train_state.pt")}


def test_pretrain_rides_out_a_seaweedfs_restart(own_stack, tmp_path):
    cfg = own_stack.config
    source = f"s3://{cfg.bucket}/raw/restart"
    synthesize(6, source, seed=7, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)
    run_name = f"restart-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | own_stack.env()
    log_path = tmp_path / "pretrain.log"
    started_at = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray_jobs.cli", "pretrain", "--config", "configs/tiny.yaml", *OVERRIDES,
             f"data.source={source}", f"train.run_name={run_name}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Kill weed when rank 0 reports step 3: the step-2 checkpoint is uploaded, the step-4 one is
        # next and clips keep streaming. (Ray Train's snapshot, which lists checkpoints, lagged the
        # uploads by two steps on a busy machine, so it makes a late trigger.)
        assert wait_until(lambda: f"[pretrain] step 3/{STEPS} " in log_path.read_text() or proc.poll() is not None,
                          300, 0.2)
        assert proc.poll() is None, "pretrain ended before step 3:\n" + log_path.read_text()[-4000:]
        down_at, _, up_at = _restart_seaweedfs(own_stack)
        print(f"\nSeaweedFS killed {down_at - started_at:.1f} s after launch, answering again "
              f"{up_at - down_at:.1f} s later")
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text()
    print(f"pretrain finished {time.time() - started_at:.1f} s after launch")
    assert rc == 0, output[-6000:]
    assert "registered models:/jepa-restart/" in output, output[-3000:]

    # One run from start to end: every step logged exactly once, before and after the outage.
    run_id = re.search(r"runs/([0-9a-f]{32})", output).group(1)
    client = MlflowClient(tracking_uri=cfg.mlflow_uri)
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(STEPS))
    stamps = [m.timestamp / 1000 for m in history]
    assert min(stamps) < down_at and max(stamps) > up_at, "the outage did not fall inside training"
    print(f"{sum(down_at <= s <= up_at for s in stamps)} of {STEPS} steps finished while SeaweedFS was down")
    assert client.search_model_versions(f"run_id='{run_id}'"), "no model registered"

    # Checkpoints written after the restart, listed by Ray Train; the last one holds the final step.
    stored = _stored(own_stack, run_name)
    listed = _listed(cfg.bucket, run_name)
    assert listed and set(listed) <= set(stored), (listed, stored)
    assert all(stored[c] >= math.floor(up_at) for c in listed), (listed, stored, up_at)
    state = torch.load(io.BytesIO(get_bytes(f"s3://{cfg.bucket}/checkpoints/{run_name}/{max(listed)}/train_state.pt")),
                       weights_only=False)
    assert state["step"] == STEPS
