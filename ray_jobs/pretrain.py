"""`jepa pretrain`: Ray Train DDP over the clip dataset; rank 0 logs to MLflow and registers the model."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jepa.checkpoint import TrainState, load_checkpoint, save_checkpoint, save_model
from jepa.config import ConfigError, RunConfig, from_dict
from jepa.masks import masks_from_flags
from jepa.model import build_jepa
from jepa.objective import collapse_warning
from jepa.optim import build_optimizer, lr_at
from jepa.train_step import train_step
from jepa.transforms import clips_to_tensor
from pipelines.clips import INPUT_ROWS
from pipelines.training_data import training_dataset
from pipelines.storage import get_bytes, is_s3, join_uri, parse_uri, put_bytes, pyarrow_fs
from ray_jobs import tracking
from ray_jobs.cluster import connect, forwarded_env
from ray_jobs.init_from import check_init_from, load_init_weights

# Train V2 tees print() into its logger as well as stdout; one copy of each progress line is enough.
# pyarrow's S3 client (Ray Train's checkpoint uploads) must not send checksum trailers to SeaweedFS
# (see pipelines.storage.pyarrow_fs); it reads this when a filesystem is built in each process.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}
# Beside Ray Train's files in `<checkpoint_uri>/<run name>/`: which MLflow run the training run logs to.
RUN_INFO_FILE = "jepa_run.json"
# In each checkpoint folder, beside jepa.checkpoint's files: where the data stood (`_data_position`),
# so the driver starts the next attempt's dataset there without loading a multi-GB train_state.pt.
POSITION_FILE = "position.json"
# Ray Train's list of a run's complete checkpoints, in the run folder.
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: equal across DDP ranks iff they hold identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class ClipStream:
    """A rank's training batches, counting the dataset input rows behind them (`INPUT_ROWS`: drops
    included) so a checkpoint can record where the data stands. The dataset holds enough epochs for
    every step; the equal split keeps DDP ranks in step."""

    def __init__(self, shard, batch_size: int, skip: int = 0):
        self._batches = iter(shard.iter_torch_batches(batch_size=batch_size, drop_last=True))
        self.rows = 0
        """Input rows of this attempt's dataset consumed so far, skipped batches included."""
        for _ in range(skip):  # only when the dataset starts before this rank's checkpoint
            if self.next() is None:
                break

    def next(self) -> dict[str, torch.Tensor] | None:
        batch = next(self._batches, None)
        if batch is not None:
            self.rows += int(batch.pop(INPUT_ROWS).sum())
        return batch  # clip: (B, T, H, W, 3) uint8, target_masks: (B, K, N) bool


def _data_position(state: TrainState, rows: int, start_rows: int, world: int) -> dict[str, Any]:
    """Where the data stands at a checkpoint (a collective: every rank calls it): `rows`, the input
    rows all ranks consumed from the first row of the first attempt (a resumed attempt's dataset
    starts there), and each rank's clips_seen. Written to POSITION_FILE by rank 0."""
    per_rank = [(state.clips_seen, rows)]
    if world > 1:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, (state.clips_seen, rows))
    return {"step": state.step, "world_size": world, "clips_seen_per_rank": [c for c, _ in per_rank],
            "rows": start_rows + sum(r for _, r in per_rank)}


def _last_logged_step(client, run_id: str) -> int:
    """Highest step of the run's `loss` history (-1 if none): a restarted attempt logs only later
    steps, so no step appears twice (MLflow cannot delete a metric point)."""
    return max((m.step for m in client.get_metric_history(run_id, "loss")), default=-1)


def _report(metrics: dict[str, float], state: TrainState, plain, optimizer, cfg: RunConfig,
            logger: tracking.MetricLogger | None, position: dict[str, Any]) -> None:
    """Checkpoint: rank 0 writes the folder (with the data position) and reports it (Ray uploads it
    to the run's storage and lists it only once the upload is complete); the other ranks report
    without one."""
    if logger is None:
        ray.train.report(metrics, checkpoint=None)
        return
    logger.flush()  # everything up to this step is in MLflow before the checkpoint exists
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(plain, optimizer, cfg, tmp, state)
        Path(tmp, POSITION_FILE).write_text(json.dumps(position))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg: RunConfig = from_dict(RunConfig, loop_config["run"])
    run_id = loop_config["run_id"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    t = cfg.train
    accum = t.accumulation_steps

    torch.manual_seed(t.seed)
    plain = build_jepa(cfg.model, num_mask_configs=cfg.num_mask_configs)
    if cfg.model.init_from and rank == 0 and ray.train.get_checkpoint() is None:
        load_init_weights(plain, cfg)  # the other ranks get these weights from DDP's broadcast
    model = ray.train.torch.prepare_model(plain)
    optimizer = build_optimizer(plain, cfg.optim)
    state = TrainState(step=0, extra={"mlflow_run_id": run_id})
    checkpoint = ray.train.get_checkpoint()  # latest listed one: set after a restart or on resume
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder, plain, optimizer)
        print(f"[pretrain] rank {rank} resumed from {checkpoint.path} at step {state.step}", flush=True)
    logger = tracking.MetricLogger(run_id) if rank == 0 else None
    # A restarted attempt (or a relaunch) may find steps past its checkpoint already logged.
    logged_through = _last_logged_step(logger.client, run_id) if logger else -1

    # The driver started the dataset at the checkpoint's position: skip only what it did not.
    start = loop_config["data_start"]
    behind = state.clips_seen - start["clips_seen"]
    if behind < 0:
        raise RuntimeError(f"rank {rank}: the dataset starts at row {start['rows']} (clips_seen "
                           f"{start['clips_seen']}), past this rank's checkpoint (clips_seen {state.clips_seen})")
    if behind:
        print(f"[pretrain] rank {rank} skips {behind} decoded clips (no {POSITION_FILE} in its checkpoint)", flush=True)
    clips = ClipStream(ray.train.get_dataset_shard("train"), t.batch_size, skip=behind // t.batch_size)
    t_last, steps_since = time.perf_counter(), 0
    for step in range(state.step, t.steps):
        micro_batches = []
        for _ in range(accum):
            batch = clips.next()
            if batch is None:
                raise RuntimeError(f"rank {rank} ran out of clips at step {step}: too many undecodable videos?")
            # masks were drawn in the data pipeline; images also carry context flags (I-JEPA)
            masks = masks_from_flags(batch["target_masks"], batch.get("context_masks"))
            micro_batches.append((clips_to_tensor(batch["clip"], device), masks))
        lr = lr_at(step, cfg.optim, t.steps)
        metrics = train_step(model, micro_batches, optimizer, lr, cfg.optim.ema_momentum, device)
        state.step, state.clips_seen = step + 1, state.clips_seen + accum * t.batch_size
        steps_since += 1
        if logger and step > logged_through and (step % t.log_every == 0 or step == t.steps - 1):
            now = time.perf_counter()
            metrics["clips_per_s"] = steps_since * accum * t.batch_size * world / (now - t_last)
            t_last, steps_since = now, 0
            logger.log(metrics, step)
            print(f"[pretrain] step {step + 1}/{t.steps} loss {metrics['loss']:.4f} "
                  f"lr {metrics['lr']:.2e} target_std {metrics['target_std']:.3f} "
                  f"eff_rank {metrics['effective_rank']:.1f}/{plain.encoder.embed_dim} "
                  f"clips/s {metrics['clips_per_s']:.1f}", flush=True)
            if warning := collapse_warning(metrics, plain.encoder.embed_dim):
                print(f"[pretrain] WARNING at step {step + 1}: {warning}", flush=True)
                logger.client.set_tag(run_id, "jepa.collapse_warning", f"step {step + 1}: {warning}")
        if (t.checkpoint_every and state.step % t.checkpoint_every == 0) or state.step == t.steps:
            position = _data_position(state, clips.rows, start["rows"], world)
            _report({"step": state.step, "loss": metrics["loss"]}, state, plain, optimizer, cfg, logger, position)

    # Each rank's weights (equal iff DDP kept the ranks in step) and the Ray node it ran on.
    mine = (fingerprint(plain), ray.get_runtime_context().get_node_id())
    ranks = [mine]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    if rank == 0:
        logger.flush()
        client = logger.client
        # MLflow params are immutable: a relaunch that trains further logs under its final step.
        again = "ddp.fingerprint.rank0" in client.get_run(run_id).data.params
        tag = f"step{state.step}." if again else ""
        for r, (fp, node) in enumerate(ranks):
            client.log_param(run_id, f"ddp.fingerprint.{tag}rank{r}", fp)
            client.log_param(run_id, f"ddp.node.{tag}rank{r}", node)
        prints = [fp for fp, _ in ranks]
        if len(set(prints)) != 1:
            print(f"[pretrain] WARNING: DDP ranks diverged: {prints}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(plain.cpu(), cfg, tmp)
            version = tracking.log_and_register(run_id, tmp, cfg, plain.encoder.embed_dim)
        print(f"[pretrain] registered {cfg.tracking.registered_model} v{version} "
              f"@{cfg.tracking.alias}", flush=True)


@dataclass
class PretrainResult:
    run_id: str
    model_uri: str
    version: int
    held_out: list[str]


def checkpoint_root(cfg: RunConfig) -> str:
    """`train.checkpoint_uri`, else s3://BUCKET/checkpoints in the bucket the data comes from,
    else ./checkpoints (data in a local folder: one machine only)."""
    if cfg.train.checkpoint_uri:
        return cfg.train.checkpoint_uri
    data = cfg.data.dataset or cfg.data.source
    if is_s3(data):
        return f"s3://{parse_uri(data)[0]}/checkpoints"
    return str(Path("checkpoints").resolve())


def storage_for(root: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig: `bucket/prefix` on the S3
    filesystem of pipelines.storage, or a local folder."""
    if is_s3(root):
        bucket, key = parse_uri(root)
        return f"{bucket}/{key}".rstrip("/"), pyarrow_fs()
    return str(Path(root).resolve()), None


def _existing_run_id(run_dir: str) -> str | None:
    try:
        return json.loads(get_bytes(join_uri(run_dir, RUN_INFO_FILE)))["mlflow_run_id"]
    except FileNotFoundError:
        return None


def latest_position(root: str, name: str) -> dict[str, Any] | None:
    """POSITION_FILE of the run's latest complete checkpoint, the one Ray Train hands the next
    attempt's workers (`ray.train.Result.from_path` reads the run's snapshot, which lists only
    uploaded checkpoints); None if the run has none. Never loads train_state.pt."""
    storage_path, fs = storage_for(root)
    fs = fs or pafs.LocalFileSystem()
    run_path = f"{storage_path}/{name}"
    if fs.get_file_info(f"{run_path}/{RAY_SNAPSHOT_FILE}").type == pafs.FileType.NotFound:
        return None
    checkpoint = ray.train.Result.from_path(run_path, storage_filesystem=fs).checkpoint
    if checkpoint is None:
        return None
    path = f"{checkpoint.path}/{POSITION_FILE}"
    if checkpoint.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        print(f"[pretrain] {checkpoint.path} has no {POSITION_FILE} (written before positions were "
              f"recorded): the dataset starts at row 0 and the workers skip what it consumed", flush=True)
        return None
    with checkpoint.filesystem.open_input_stream(path) as f:
        return json.loads(f.read())


def _data_start(position: dict[str, Any] | None) -> dict[str, int]:
    """Where an attempt's dataset starts (input rows over all ranks) and the per-rank clips_seen
    that corresponds to, handed to the workers so they skip nothing more."""
    if position is None:
        return {"rows": 0, "clips_seen": 0}
    return {"rows": int(position["rows"]), "clips_seen": int(position["clips_seen_per_rank"][0])}


def _announce_start(run_id: str, position: dict[str, Any] | None, attempt: int) -> None:
    """Print where an attempt starts; a resumed one also logs MLflow metric `resume_row` (the
    dataset row it starts at) at its checkpoint's step, one point per resume."""
    if position is None:
        if attempt > 1:
            print(f"[pretrain] attempt {attempt}: no checkpoint yet, starting over at step 0, dataset row 0", flush=True)
        return
    print(f"[pretrain] attempt {attempt}: resuming at step {position['step']}, dataset from row "
          f"{position['rows']} (the rows before it are not read again)", flush=True)
    tracking.MlflowClient().log_metric(run_id, "resume_row", position["rows"], step=position["step"])


def _describe(err: Exception) -> str:
    """One line for a failed attempt: which ranks failed with what, else the error's first line."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {r}: {type(e).__name__}" for r, e in sorted(failures.items()))
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _preempted(err: Exception) -> bool:
    """A node preemption rather than a failure (Ray Train's own rule): not charged to max_failures."""
    if isinstance(err, ray.train.PreemptionError):
        return True
    failures = getattr(err, "worker_failures", {}).values()
    return any(getattr(getattr(e, "health_check_failure", e), "preempted", False) for e in failures)


def _trainer(cfg: RunConfig, run_id: str, name: str, root: str, dataset, data_start: dict[str, int]) -> TorchTrainer:
    """One attempt of the run: Ray Train itself never restarts it (max_failures=0, no preemption
    retries), `pretrain` does, so every attempt's dataset starts at its checkpoint's position."""
    storage_path, storage_fs = storage_for(root)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_id": run_id, "data_start": data_start},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        datasets={"train": dataset},
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=0, max_preemption_failures=0),
            worker_runtime_env={"env_vars": WORKER_ENV | forwarded_env()},
        ),
    )


def pretrain(cfg: RunConfig, run_name: str | None = None) -> PretrainResult:
    """Train with Ray Train on `cfg.data.dataset` (shards) or `cfg.data.source` (raw videos);
    returns the registered model.

    Checkpoints go to `<checkpoint_root>/<train.run_name>/checkpoint_*` every `train.checkpoint_every`
    steps and at the end. A failed worker group is restarted here from the latest one (up to
    `train.max_failures` times; preemptions do not count), with a dataset that starts at that
    checkpoint's data position; relaunching with the same `train.run_name` does the same and keeps
    logging to the same MLflow run.
    """
    if cfg.train.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints: must be at least 1 (the latest checkpoint)")
    check_init_from(cfg)
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")  # a local Ray inherits it
    connect()
    root = checkpoint_root(cfg)
    run_id = _existing_run_id(join_uri(root, cfg.train.run_name)) if cfg.train.run_name else None
    if run_id:
        print(f"[pretrain] resuming {cfg.train.run_name}: MLflow run {run_id}", flush=True)
    position = latest_position(root, cfg.train.run_name) if cfg.train.run_name else None
    dataset, held_out = training_dataset(cfg, start=_data_start(position)["rows"])
    run_id = run_id or tracking.start_run(cfg, run_name)
    name = cfg.train.run_name or f"pretrain-{run_id}"
    put_bytes(join_uri(root, name, RUN_INFO_FILE), json.dumps({"mlflow_run_id": run_id}).encode())
    print(f"[pretrain] MLflow run {tracking.run_url(run_id)}; checkpoints in {join_uri(root, name)}", flush=True)
    failures = attempt = 0
    while True:
        attempt += 1
        _announce_start(run_id, position, attempt)
        try:
            _trainer(cfg, run_id, name, root, dataset, _data_start(position)).fit()
            break
        except ray.train.TrainingFailedError as err:
            # Restarted here, not by Ray Train: its restart would replay the dataset from its first row.
            preempted = _preempted(err)
            failures += 0 if preempted else 1
            limit = cfg.train.max_failures
            if not preempted and 0 <= limit < failures:
                raise
            cause = "a preemption" if preempted else f"failure {failures}/{'unlimited' if limit < 0 else limit}"
            print(f"[pretrain] attempt {attempt} failed ({cause}): {_describe(err)}", flush=True)
            position = latest_position(root, name)
            dataset, _ = training_dataset(cfg, start=_data_start(position)["rows"])
    tracking.log_loss_curve(run_id)  # plots/loss_curve.png: loss, target_std, effective_rank by step
    versions = tracking.MlflowClient().search_model_versions(f"run_id='{run_id}'")
    if not versions:
        raise RuntimeError(f"training finished but run {run_id} registered no model")
    version = max(int(v.version) for v in versions)
    name = cfg.tracking.registered_model
    return PretrainResult(run_id, f"models:/{name}/{version}", version, held_out)
