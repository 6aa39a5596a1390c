"""Which dataset a training run reads: image mode, an ingested dataset's shards, or direct mode.

The choice follows the run config (``data.modality``, ``data.dataset``, ``data.source``), so every
training job builds its input the same way; the modes themselves live in their own modules.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jepa.config import RunConfig
from jepa.model import token_grid
from pipelines.direct_clips import clip_dataset, list_videos
from pipelines.images import image_dataset, list_images
from pipelines.keys import split_held_out
from pipelines.shard_clips import shard_clip_dataset
from pipelines.shards import load_dataset_info

if TYPE_CHECKING:
    import ray.data

# Messages of object-store outages (botocore, pyarrow, S3 status codes) that Ray Data retries.
STORE_OUTAGE_ERRORS = ("Could not connect to the endpoint URL", "Connection was closed", "Read timeout on endpoint URL",
                       "InternalError", "ServiceUnavailable", "SlowDown")


class DatasetTooSmall(ValueError):
    """The source holds fewer training items than one batch on every worker."""


def _split_for_training(uris: list[str], kind: str, cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(train, held out) by key hash; refuses a source too small for one batch on every worker."""
    train_uris, held_out = split_held_out(uris, cfg.data.held_out_fraction)
    need = cfg.train.num_workers * cfg.train.batch_size
    if len(train_uris) < need:
        raise DatasetTooSmall(f"{cfg.data.source} holds {len(uris)} {kind} ({len(train_uris)} for training): "
                              f"need at least {need} (num_workers x batch_size) to train")
    return train_uris, held_out


def clips_to_train(cfg: RunConfig) -> int:
    """Clips all workers take from the dataset: the joint steps' batches, then each worker's
    predictor-stage cache, twice (room for a resume within the stage, which encodes a fresh one)."""
    t = cfg.train
    joint = cfg.joint_steps * t.batch_size * t.num_workers * t.accumulation_steps
    return joint + (2 * t.num_workers * cfg.predictor_stage.cache_clips if cfg.predictor_stage.steps else 0)


def training_dataset(cfg: RunConfig, start: int = 0) -> tuple[ray.data.Dataset, list[str]]:
    """Clips + masks for training: from an ingested dataset's shards (`data.dataset`), or straight
    from the raw videos (or images) under `data.source`, from input row `start` on (a resumed
    run's position: the rows before it are never decoded). Returns (dataset, held-out URIs)."""
    d, m = cfg.data, cfg.model
    clips_needed = clips_to_train(cfg)
    common = dict(num_frames=m.num_frames, size=m.img_size, fps=d.fps, seed=cfg.train.seed,
                  decode_cpus=d.decode_cpus, decode_tasks=d.decode_tasks,
                  mask_grid=token_grid(m), mask_cfgs=cfg.masks)
    if d.modality == "image":
        train_uris, held_out = _split_for_training(list_images(d.source), "images", cfg)
        dataset = image_dataset(train_uris, size=m.img_size, mask_grid=token_grid(m), mask_cfg=cfg.image_masks,
                                seed=cfg.train.seed, epochs=math.ceil(clips_needed / len(train_uris)) + 1,
                                crop_scale=d.crop_scale, crop_aspect=d.crop_aspect, flip=d.flip,
                                decode_cpus=d.decode_cpus, decode_tasks=d.decode_tasks, start=start)
        print(f"[data] {len(train_uris)} training images, {len(held_out)} held out", flush=True)
    elif d.dataset:
        info = load_dataset_info(d.dataset) or {}
        segments = int(info.get("counts", {}).get("segments", 0)) or clips_needed
        usable = max(1, int(segments * (1 - d.held_out_fraction)))
        dataset = shard_clip_dataset(d.dataset, epochs=math.ceil(clips_needed / usable) + 1,
                                     crop_scale=d.crop_scale, crop_aspect=d.crop_aspect, flip=d.flip,
                                     held_out_fraction=d.held_out_fraction, start=start,
                                     batch_size=cfg.train.batch_size, **common)
        held_out = []
        print(f"[data] {segments} segments in {d.dataset}", flush=True)
    else:
        train_uris, held_out = _split_for_training(list_videos(d.source), "videos", cfg)
        dataset = clip_dataset(train_uris, epochs=math.ceil(clips_needed / len(train_uris)) + 1, start=start, **common)
        print(f"[data] {len(train_uris)} training videos, {len(held_out)} held out", flush=True)
    dataset.context.enable_progress_bars = False  # the trainer's step lines are the progress
    # An object store outage longer than the storage clients' retries (pipelines.storage) fails a
    # decode task: retry the task rather than fail the dataset, for these errors only.
    dataset.context.retried_map_errors = list(STORE_OUTAGE_ERRORS)
    dataset.context.max_map_retries = 3
    return dataset, held_out
