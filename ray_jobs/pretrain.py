"""`jepa pretrain`: Ray Train DDP over the clip dataset; rank 0 logs to MLflow and registers the model."""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from jepa.checkpoint import save_model
from jepa.config import RunConfig, from_dict
from jepa.masks import masks_from_flags
from jepa.model import build_jepa, token_grid
from jepa.optim import build_optimizer, lr_at
from jepa.train_step import train_step
from jepa.transforms import clips_to_tensor
from pipelines.clips import clip_dataset, list_videos, shard_clip_dataset, split_held_out
from pipelines.shards import load_dataset_info
from ray_jobs import tracking
from ray_jobs.cluster import connect, forwarded_env

# Train V2 tees print() into its logger as well as stdout; one copy of each progress line is enough.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: equal across DDP ranks iff they hold identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _clip_batches(shard, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """The dataset holds enough epochs for every step; the equal split keeps DDP ranks in step."""
    for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True):
        yield batch  # clip: (B, T, H, W, 3) uint8, target_masks: (B, K, N) bool


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg: RunConfig = from_dict(RunConfig, loop_config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(cfg.train.seed)
    plain = build_jepa(cfg.model, num_mask_configs=len(cfg.masks))
    model = ray.train.torch.prepare_model(plain)
    optimizer = build_optimizer(plain, cfg.optim)
    logger = tracking.MetricLogger(loop_config["run_id"]) if rank == 0 else None

    clips_iter = _clip_batches(ray.train.get_dataset_shard("train"), cfg.train.batch_size)
    t_last, steps_since = time.perf_counter(), 0
    for step in range(cfg.train.steps):
        batch = next(clips_iter, None)
        if batch is None:
            raise RuntimeError(f"rank {rank} ran out of clips at step {step}: too many undecodable videos?")
        clips = clips_to_tensor(batch["clip"], device)
        masks = masks_from_flags(batch["target_masks"])  # drawn in the data pipeline
        lr = lr_at(step, cfg.optim, cfg.train.steps)
        metrics = train_step(model, clips, masks, optimizer, lr, cfg.optim.ema_momentum, device)
        steps_since += 1
        if rank == 0 and (step % cfg.train.log_every == 0 or step == cfg.train.steps - 1):
            now = time.perf_counter()
            metrics["clips_per_s"] = steps_since * cfg.train.batch_size * world / (now - t_last)
            t_last, steps_since = now, 0
            logger.log(metrics, step)
            print(f"[pretrain] step {step + 1}/{cfg.train.steps} loss {metrics['loss']:.4f} "
                  f"lr {metrics['lr']:.2e} target_std {metrics['target_std']:.3f} "
                  f"clips/s {metrics['clips_per_s']:.1f}", flush=True)

    prints = [fingerprint(plain)]
    if world > 1:
        prints = [None] * world
        dist.all_gather_object(prints, fingerprint(plain))
    if rank == 0:
        logger.flush()
        client = logger.client
        for r, fp in enumerate(prints):
            client.log_param(loop_config["run_id"], f"ddp.fingerprint.rank{r}", fp)
        if len(set(prints)) != 1:
            print(f"[pretrain] WARNING: DDP ranks diverged: {prints}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(plain.cpu(), cfg, tmp)
            version = tracking.log_and_register(loop_config["run_id"], tmp, cfg, plain.encoder.embed_dim)
        print(f"[pretrain] registered {cfg.tracking.registered_model} v{version} "
              f"@{cfg.tracking.alias}", flush=True)


@dataclass
class PretrainResult:
    run_id: str
    model_uri: str
    version: int
    held_out: list[str]


def build_dataset(cfg: RunConfig):
    """Clips + masks for training: from an ingested dataset's shards (`data.dataset`), or straight
    from the raw videos under `data.source` (direct mode). Returns (dataset, held-out video URIs)."""
    d, m = cfg.data, cfg.model
    clips_needed = cfg.train.steps * cfg.train.batch_size * cfg.train.num_workers
    common = dict(num_frames=m.num_frames, size=m.img_size, fps=d.fps, seed=cfg.train.seed,
                  decode_cpus=d.decode_cpus, decode_tasks=d.decode_tasks,
                  mask_grid=token_grid(m), mask_cfgs=cfg.masks)
    if d.dataset:
        info = load_dataset_info(d.dataset) or {}
        segments = int(info.get("counts", {}).get("segments", 0)) or clips_needed
        usable = max(1, int(segments * (1 - d.held_out_fraction)))
        dataset = shard_clip_dataset(d.dataset, epochs=math.ceil(clips_needed / usable) + 1,
                                     crop_scale=d.crop_scale, crop_aspect=d.crop_aspect, flip=d.flip,
                                     held_out_fraction=d.held_out_fraction, **common)
        held_out: list[str] = []
        print(f"[pretrain] {segments} segments in {d.dataset}", flush=True)
    else:
        uris = list_videos(d.source)
        train_uris, held_out = split_held_out(uris, d.held_out_fraction)
        if len(train_uris) < cfg.train.num_workers * cfg.train.batch_size:
            raise SystemExit(
                f"{d.source} holds {len(uris)} videos ({len(train_uris)} for training): need at least "
                f"{cfg.train.num_workers * cfg.train.batch_size} (num_workers x batch_size) to train"
            )
        dataset = clip_dataset(train_uris, epochs=math.ceil(clips_needed / len(train_uris)) + 1, **common)
        print(f"[pretrain] {len(train_uris)} training videos, {len(held_out)} held out", flush=True)
    dataset.context.enable_progress_bars = False  # the step lines below are the progress
    return dataset, held_out


def pretrain(cfg: RunConfig, run_name: str | None = None) -> PretrainResult:
    """Train with Ray Train on `cfg.data.dataset` (shards) or `cfg.data.source` (raw videos);
    returns the registered model."""
    connect()
    dataset, held_out = build_dataset(cfg)
    run_id = tracking.start_run(cfg, run_name)
    print(f"[pretrain] MLflow run {tracking.run_url(run_id)}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "run_id": run_id},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        datasets={"train": dataset},
        run_config=ray.train.RunConfig(name=f"pretrain-{run_id}", worker_runtime_env={"env_vars": WORKER_ENV | forwarded_env()}),
    )
    trainer.fit()
    versions = tracking.MlflowClient().search_model_versions(f"run_id='{run_id}'")
    if not versions:
        raise RuntimeError(f"training finished but run {run_id} registered no model")
    version = max(int(v.version) for v in versions)
    name = cfg.tracking.registered_model
    return PretrainResult(run_id, f"models:/{name}/{version}", version, held_out)
