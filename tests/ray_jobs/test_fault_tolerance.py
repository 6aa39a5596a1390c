"""Fault tolerance against the real stack: checkpoints in SeaweedFS through Ray Train, a SIGKILLed
training worker, and a relaunched job that resumes its run (same MLflow run, no duplicate steps),
each resumed attempt's dataset starting at its checkpoint's data position, not at row 0."""

import io
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa.config import load_config
from pipelines.storage import get_bytes, list_objects
from pipelines.synth_physics import PhysicsConfig, synthesize

pytestmark = pytest.mark.integration

OVERRIDES = [
    "model.img_size=32", "model.num_frames=8", "model.patch_size=8",
    "model.pred_depth=1", "model.pred_embed_dim=64", "model.pred_num_heads=2",
    "train.batch_size=2", "train.num_workers=2", "train.global_batch_size=8", "train.log_every=1",
    "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.max_failures=2",
    "data.held_out_fraction=0", "tracking.experiment=fault-tolerance", "tracking.registered_model=jepa-ft",
]


@pytest.fixture(scope="module")
def source(stack_client_env):
    uri = f"s3://{stack_client_env.bucket}/raw/fault-tolerance"
    synthesize(6, uri, seed=5, cfg=PhysicsConfig(size=64, seconds=1.5, fps=8), progress=False)
    return uri


def _checkpoints(bucket: str, run_name: str) -> dict[str, int]:
    """Complete checkpoints Ray listed for the run -> their step (from train_state.pt)."""
    out = {}
    for obj in list_objects(f"s3://{bucket}/checkpoints/{run_name}", suffixes=("train_state.pt",)):
        state = torch.load(io.BytesIO(get_bytes(obj.uri)), weights_only=False)
        out[obj.uri.rsplit("/", 2)[-2]] = state["step"]
    return out


def _listed(bucket: str, run_name: str) -> list[str]:
    """Checkpoint folders in Ray Train's snapshot for the run (only complete ones get there)."""
    try:
        text = get_bytes(f"s3://{bucket}/checkpoints/{run_name}/checkpoint_manager_snapshot.json").decode()
    except FileNotFoundError:
        return []
    return sorted(set(re.findall(r"checkpoint_\d{4}-\d\d-\d\d_[\d.-]+", text)))


def _train_workers() -> list[int]:
    """PIDs of this session's Ray Train workers (descendants of this process, so never another
    job's Ray on the same machine)."""
    parents, names = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
                parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                names[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def mine(pid):
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, name in names.items() if name.startswith("ray::RayTrainWorker") and mine(pid)]


def _loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "loss"))


def _resumes(run_id: str) -> list[tuple[int, int]]:
    """(checkpoint step, dataset start row) of every resumed attempt (MLflow metric resume_row)."""
    return sorted((m.step, int(m.value)) for m in MlflowClient().get_metric_history(run_id, "resume_row"))


def _position(bucket: str, run_name: str, checkpoint: str) -> dict:
    return json.loads(get_bytes(f"s3://{bucket}/checkpoints/{run_name}/{checkpoint}/position.json"))


def test_killed_worker_restarts_from_checkpoint_and_a_relaunch_resumes(source, local_stack, capsys):
    from ray_jobs.pretrain import pretrain

    clips_per_step = 8  # train.global_batch_size: every video decodes, none held out, so 1 clip = 1 row
    bucket = local_stack.config.bucket
    run_name = f"ft-{uuid.uuid4().hex[:8]}"
    cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"data.source={source}", "train.steps=10",
                                                        f"train.run_name={run_name}"])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=pretrain(cfg)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    # Listed, not just uploaded: a kill between the upload and Ray's listing restarts from scratch.
    while not _listed(bucket, run_name):
        assert thread.is_alive() and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.3)
    workers = _train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    latest = max(_listed(bucket, run_name))
    killed_at = _checkpoints(bucket, run_name)[latest]
    thread.join(timeout=600)
    assert not thread.is_alive() and "result" in outcome, "training did not finish after the kill"

    result = outcome["result"]
    assert killed_at < cfg.train.steps  # the kill landed mid-run
    assert _loss_steps(result.run_id) == list(range(10))  # every step exactly once
    stored = _checkpoints(bucket, run_name)
    listed = _listed(bucket, run_name)  # what Ray Train resumes from
    assert stored[max(listed)] == 10 and len(listed) <= cfg.train.keep_checkpoints, (listed, stored)
    assert set(listed) <= set(stored)
    assert not set(_train_workers()) & set(workers)  # the worker group was replaced
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["ddp.fingerprint.rank0"] == params["ddp.fingerprint.rank1"]
    # The restarted attempt's dataset started at the checkpoint's position (every row before it
    # skipped before decode), and the final checkpoint records where the data stands.
    [(resumed_at, start_row)] = _resumes(result.run_id)
    assert killed_at <= resumed_at < cfg.train.steps and start_row == resumed_at * clips_per_step > 0
    out = capsys.readouterr().out
    assert "attempt 1 failed (failure 1/2)" in out, out[-3000:]
    assert f"attempt 2: resuming at step {resumed_at}, dataset from row {start_row}" in out
    assert _position(bucket, run_name, max(listed)) == {
        "step": 10, "world_size": 2, "clips_seen_per_rank": [40, 40], "rows": 10 * clips_per_step}

    # Relaunch with the same run name and a longer schedule: resumes at step 10, same MLflow run.
    longer = load_config("configs/tiny.yaml", OVERRIDES + [f"data.source={source}", "train.steps=12",
                                                           f"train.run_name={run_name}"])
    again = pretrain(longer)
    assert again.run_id == result.run_id
    assert _loss_steps(again.run_id) == list(range(12))
    stored = _checkpoints(bucket, run_name)
    assert stored[max(_listed(bucket, run_name))] == 12
    assert _resumes(again.run_id) == [(resumed_at, start_row), (10, 10 * clips_per_step)]
    assert _position(bucket, run_name, max(_listed(bucket, run_name)))["rows"] == 12 * clips_per_step
    print("checkpoints stored", stored, "listed by Ray", _listed(bucket, run_name))
    params = MlflowClient().get_run(again.run_id).data.params
    assert params["ddp.fingerprint.step12.rank0"] == params["ddp.fingerprint.step12.rank1"]
