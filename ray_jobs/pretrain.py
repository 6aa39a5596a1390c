"""`jepa pretrain`: Ray Train DDP over the clip dataset; rank 0 logs to MLflow and registers the model."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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
from jepa.model import build_jepa, token_grid
from jepa.objective import collapse_warning
from jepa.optim import build_optimizer, lr_at
from jepa.train_step import train_step
from jepa.transforms import clips_to_tensor
from pipelines.clips import clip_dataset, list_videos, shard_clip_dataset, split_held_out
from pipelines.images import image_dataset, list_images
from pipelines.shards import load_dataset_info
from pipelines.storage import get_bytes, is_s3, join_uri, parse_uri, put_bytes, pyarrow_fs
from ray_jobs import tracking
from ray_jobs.cluster import connect, forwarded_env

# Train V2 tees print() into its logger as well as stdout; one copy of each progress line is enough.
# pyarrow's S3 client (Ray Train's checkpoint uploads) must not send checksum trailers to SeaweedFS
# (see pipelines.storage.pyarrow_fs); it reads this when a filesystem is built in each process.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}
# Beside Ray Train's files in `<checkpoint_uri>/<run name>/`: which MLflow run the training run logs to.
RUN_INFO_FILE = "jepa_run.json"


def fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: equal across DDP ranks iff they hold identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _clip_batches(shard, batch_size: int, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """The dataset holds enough epochs for every step; the equal split keeps DDP ranks in step.
    A resumed run skips the `skip` batches its earlier attempts consumed."""
    for i, batch in enumerate(shard.iter_torch_batches(batch_size=batch_size, drop_last=True)):
        if i >= skip:
            yield batch  # clip: (B, T, H, W, 3) uint8, target_masks: (B, K, N) bool


def _last_logged_step(client, run_id: str) -> int:
    """Highest step of the run's `loss` history (-1 if none): a restarted attempt logs only later
    steps, so no step appears twice (MLflow cannot delete a metric point)."""
    return max((m.step for m in client.get_metric_history(run_id, "loss")), default=-1)


def _report(metrics: dict[str, float], state: TrainState, plain, optimizer, cfg: RunConfig,
            logger: tracking.MetricLogger | None) -> None:
    """Checkpoint: rank 0 writes the folder and reports it (Ray uploads it to the run's storage and
    lists it only once the upload is complete); the other ranks report without one."""
    if logger is None:
        ray.train.report(metrics, checkpoint=None)
        return
    logger.flush()  # everything up to this step is in MLflow before the checkpoint exists
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(plain, optimizer, cfg, tmp, state)
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

    clips_iter = _clip_batches(ray.train.get_dataset_shard("train"), t.batch_size,
                               skip=state.clips_seen // t.batch_size)
    t_last, steps_since = time.perf_counter(), 0
    for step in range(state.step, t.steps):
        micro_batches = []
        for _ in range(accum):
            batch = next(clips_iter, None)
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
            _report({"step": state.step, "loss": metrics["loss"]}, state, plain, optimizer, cfg, logger)

    prints = [fingerprint(plain)]
    if world > 1:
        prints = [None] * world
        dist.all_gather_object(prints, fingerprint(plain))
    if rank == 0:
        logger.flush()
        client = logger.client
        # MLflow params are immutable: a relaunch that trains further logs under its final step.
        prefix = "ddp.fingerprint." if "ddp.fingerprint.rank0" not in client.get_run(run_id).data.params \
            else f"ddp.fingerprint.step{state.step}."
        for r, fp in enumerate(prints):
            client.log_param(run_id, f"{prefix}rank{r}", fp)
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


def _split_for_training(uris: list[str], kind: str, cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(train, held out) by key hash; refuses a source too small for one batch on every worker."""
    train_uris, held_out = split_held_out(uris, cfg.data.held_out_fraction)
    need = cfg.train.num_workers * cfg.train.batch_size
    if len(train_uris) < need:
        raise SystemExit(f"{cfg.data.source} holds {len(uris)} {kind} ({len(train_uris)} for training): "
                         f"need at least {need} (num_workers x batch_size) to train")
    return train_uris, held_out


def build_dataset(cfg: RunConfig):
    """Clips + masks for training: from an ingested dataset's shards (`data.dataset`), or straight
    from the raw videos under `data.source` (direct mode). Returns (dataset, held-out video URIs)."""
    d, m = cfg.data, cfg.model
    clips_needed = cfg.train.steps * cfg.train.batch_size * cfg.train.num_workers * cfg.train.accumulation_steps
    common = dict(num_frames=m.num_frames, size=m.img_size, fps=d.fps, seed=cfg.train.seed,
                  decode_cpus=d.decode_cpus, decode_tasks=d.decode_tasks,
                  mask_grid=token_grid(m), mask_cfgs=cfg.masks)
    if d.modality == "image":
        train_uris, held_out = _split_for_training(list_images(d.source), "images", cfg)
        dataset = image_dataset(train_uris, size=m.img_size, mask_grid=token_grid(m), mask_cfg=cfg.image_masks,
                                seed=cfg.train.seed, epochs=math.ceil(clips_needed / len(train_uris)) + 1,
                                crop_scale=d.crop_scale, crop_aspect=d.crop_aspect, flip=d.flip,
                                decode_cpus=d.decode_cpus, decode_tasks=d.decode_tasks)
        print(f"[pretrain] {len(train_uris)} training images, {len(held_out)} held out", flush=True)
    elif d.dataset:
        info = load_dataset_info(d.dataset) or {}
        segments = int(info.get("counts", {}).get("segments", 0)) or clips_needed
        usable = max(1, int(segments * (1 - d.held_out_fraction)))
        dataset = shard_clip_dataset(d.dataset, epochs=math.ceil(clips_needed / usable) + 1,
                                     crop_scale=d.crop_scale, crop_aspect=d.crop_aspect, flip=d.flip,
                                     held_out_fraction=d.held_out_fraction, **common)
        held_out: list[str] = []
        print(f"[pretrain] {segments} segments in {d.dataset}", flush=True)
    else:
        train_uris, held_out = _split_for_training(list_videos(d.source), "videos", cfg)
        dataset = clip_dataset(train_uris, epochs=math.ceil(clips_needed / len(train_uris)) + 1, **common)
        print(f"[pretrain] {len(train_uris)} training videos, {len(held_out)} held out", flush=True)
    dataset.context.enable_progress_bars = False  # the step lines below are the progress
    return dataset, held_out


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


def pretrain(cfg: RunConfig, run_name: str | None = None) -> PretrainResult:
    """Train with Ray Train on `cfg.data.dataset` (shards) or `cfg.data.source` (raw videos);
    returns the registered model.

    Checkpoints go to `<checkpoint_root>/<train.run_name>/checkpoint_*` every `train.checkpoint_every`
    steps and at the end. Ray Train restarts failed worker groups from the latest one (up to
    `train.max_failures` times); relaunching with the same `train.run_name` resumes the run from its
    latest checkpoint and keeps logging to the same MLflow run.
    """
    if cfg.train.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints: must be at least 1 (the latest checkpoint)")
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")  # a local Ray inherits it
    connect()
    root = checkpoint_root(cfg)
    run_id = _existing_run_id(join_uri(root, cfg.train.run_name)) if cfg.train.run_name else None
    if run_id:
        print(f"[pretrain] resuming {cfg.train.run_name}: MLflow run {run_id}", flush=True)
    dataset, held_out = build_dataset(cfg)
    run_id = run_id or tracking.start_run(cfg, run_name)
    name = cfg.train.run_name or f"pretrain-{run_id}"
    put_bytes(join_uri(root, name, RUN_INFO_FILE), json.dumps({"mlflow_run_id": run_id}).encode())
    print(f"[pretrain] MLflow run {tracking.run_url(run_id)}; checkpoints in {join_uri(root, name)}", flush=True)
    storage_path, storage_fs = storage_for(root)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_id": run_id},
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
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": WORKER_ENV | forwarded_env()},
        ),
    )
    trainer.fit()
    tracking.log_loss_curve(run_id)  # plots/loss_curve.png: loss, target_std, effective_rank by step
    versions = tracking.MlflowClient().search_model_versions(f"run_id='{run_id}'")
    if not versions:
        raise RuntimeError(f"training finished but run {run_id} registered no model")
    version = max(int(v.version) for v in versions)
    name = cfg.tracking.registered_model
    return PretrainResult(run_id, f"models:/{name}/{version}", version, held_out)
