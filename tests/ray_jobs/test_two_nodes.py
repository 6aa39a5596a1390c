"""Scale-out on a two-node Ray cluster built as on real machines: `jepa stack up` (SeaweedFS, MLflow
and a `ray start --head` node with 3 CPUs) plus a second node joined with `ray start --address ...`
(2 CPUs), then `jepa synth` and `jepa pretrain` from the command line against it. Two 2-CPU
training workers cannot both fit on the head, so one runs on each node; gloo DDP must keep their
weights identical, and the run logs to MLflow and checkpoints to the bucket as on one node."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.stack import Stack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
JEPA = str(Path(sys.executable).parent / "jepa")
OVERRIDES = [
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
    "train.steps=3", "train.batch_size=2", "train.num_workers=2", "train.cpus_per_worker=2",
    "train.checkpoint_every=2", "train.log_every=1", "data.held_out_fraction=0",
    "tracking.experiment=two-nodes", "tracking.registered_model=jepa-two-nodes",
]


@pytest.fixture(scope="module")
def two_nodes(make_stack_config, tmp_path_factory):
    """(client environment, stack config) of a running two-node cluster with its own stack."""
    cfg = replace(make_stack_config(tmp_path_factory.mktemp("two-nodes"), ray=True), ray_num_cpus=3)
    stack = Stack(cfg)
    stack.up()
    env = os.environ | stack.env()
    worker_log = open(cfg.state_dir / "worker-node.log", "wb")
    # the stack's Ray head passes the bucket and MLflow settings to its workers; so must this node
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--address={cfg.ray_address}",
         "--num-cpus=2", f"--node-ip-address={cfg.host}", "--disable-usage-stats"],
        env=env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"},
        stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _await_nodes(env, 2, worker)
        yield env, cfg
    finally:
        os.kill(worker.pid, signal.SIGTERM)  # `ray start --block` stops its raylet and workers
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        worker_log.close()
        stack.down(timeout_s=5.0)


def _await_nodes(env: dict, n: int, worker: subprocess.Popen, timeout_s: float = 60.0) -> None:
    probe = "import ray; ray.init(); print(sum(1 for x in ray.nodes() if x['Alive']))"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker node's `ray start` exited"
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1] == str(n):
            return
        time.sleep(1.0)
    raise AssertionError(f"the cluster never showed {n} alive nodes")


def _jepa(env: dict, *args: str) -> str:
    proc = subprocess.run([JEPA, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_pretrain_puts_one_rank_on_each_node(two_nodes):
    env, cfg = two_nodes
    source = f"s3://{cfg.bucket}/raw/two-nodes"
    _jepa(env, "synth", "physics", "--videos", "6", "--out", source, "--size", "64", "--fps", "8",
          "--seconds", "1.5")
    out = _jepa(env, "pretrain", "--config", "configs/tiny.yaml", *OVERRIDES, f"data.source={source}")
    run_id = next(line.split("/runs/")[1].split()[0].strip(";") for line in out.splitlines() if "/runs/" in line)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    params = client.get_run(run_id).data.params
    assert params["ddp.node.rank0"] != params["ddp.node.rank1"]  # one rank on each node
    assert params["ddp.fingerprint.rank0"] == params["ddp.fingerprint.rank1"]
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert "registered jepa-two-nodes v1" in out
