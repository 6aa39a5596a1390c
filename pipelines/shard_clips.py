"""Shard mode, the production read path: training clips from an ingested dataset's shards.

Rows of the dataset's parquet shards (``pipelines.shards``: one short H.264 segment per row) are
streamed with ``read_parquet``, decoded, augmented (``pipelines.augment``) and given their masks
(``pipelines.masking``), all in ``map_batches`` on CPU. A row is one clip, never a whole video, so
memory does not grow with the dataset. Every row's RNG is seeded by (seed, row key), so every
epoch sees different clips yet a rerun sees the same ones, however Ray batches the rows.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from jepa.config import DataConfig, MaskConfig
from pipelines import shards, storage
from pipelines.augment import augment_clip
from pipelines.keys import is_held_out, row_key
from pipelines.masking import with_masks
from pipelines.resume import ShardPass, clips_batch, drop_rows_batch, leading_rows, plan_shard_passes
from pipelines.video import VideoDecodeError

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

log = logging.getLogger(__name__)

SHARD_COLUMNS = ["uri", "segment", "mp4"]
"""The shard columns a training clip needs."""


def decode_shard_batch(
    batch: dict[str, np.ndarray],
    *,
    num_frames: int,
    size: int,
    seed: int,
    epoch: int = 0,
    crop_scale: tuple[float, float] = DataConfig.crop_scale,
    crop_aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
    held_out_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Shard rows {"uri", "segment", "mp4"} -> {"clip": uint8 (B, num_frames, size, size, 3),
    "key": int64 (B,), INPUT_ROWS: int64 (B,)}. A segment longer than ``num_frames`` gives a random
    window of it; rows of held-out sources and undecodable segments are dropped (the latter with a
    warning)."""
    clips, keys, kept = [], [], []
    for i, (uri, segment, mp4) in enumerate(zip(batch["uri"], batch["segment"], batch["mp4"])):
        uri = str(uri)
        if is_held_out(uri, held_out_fraction):
            continue
        key = row_key(uri, int(segment), epoch)
        rng = np.random.default_rng([seed, key])
        try:
            frames = shards.decode_segment(bytes(mp4))
        except VideoDecodeError as err:
            log.warning("skipping %s segment %s: %s", uri, segment, err)
            continue
        if len(frames) < num_frames:
            raise ValueError(f"{uri} segment {segment} has {len(frames)} frames, fewer than num_frames={num_frames}")
        offset = int(rng.integers(0, len(frames) - num_frames + 1))
        clips.append(augment_clip(frames[offset : offset + num_frames], size, rng, crop_scale, crop_aspect, flip))
        keys.append(key)
        kept.append(i)
    return clips_batch(clips, keys, kept, len(batch["uri"]), num_frames=num_frames, size=size)


def shard_clip_dataset(
    dataset_uri: str,
    *,
    num_frames: int,
    size: int,
    seed: int = 0,
    epochs: int = 1,
    fps: float | None = None,
    crop_scale: tuple[float, float] = DataConfig.crop_scale,
    crop_aspect: tuple[float, float] = DataConfig.crop_aspect,
    flip: float = DataConfig.flip,
    mask_grid: tuple[int, int, int] | None = None,
    mask_cfgs: list[MaskConfig] | None = None,
    held_out_fraction: float = 0.0,
    decode_cpus: float = 0.5,
    decode_tasks: int | None = None,
    batch_size: int = 4,
    start: int = 0,
) -> ray.data.Dataset:
    """Dataset of {"clip": uint8 (T, H, W, 3), "key": int64[, "target_masks": bool (K, N)]} rows
    streamed from an ingested dataset's shards (``s3://B/datasets/NAME`` or a local folder),
    ``epochs`` passes, each over the shard files in its own seeded order.

    ``start`` drops that many leading shard rows (over all epochs, held-out rows included) before
    decoding: whole epochs and whole shard files are never read, and only the one shard file the
    position falls in is read with its leading rows filtered out (``plan_shard_passes``).

    With ``mask_grid`` (the model's token grid) and ``mask_cfgs``, a second ``map_batches`` stage
    adds per-clip mask flags (``add_masks_batch``). ``fps``, when given, must match the shards'.
    ``held_out_fraction`` drops the sources ``split_held_out`` would hold out. Hand the result to
    Ray Train, whose ``streaming_split(equal=True)`` gives every worker the same number of rows.
    """
    import ray.data  # here, so the transforms above import without Ray

    info = shards.load_dataset_info(dataset_uri)
    uris = shards.shard_uris(dataset_uri, info)
    if not uris:
        raise FileNotFoundError(f"no shards in {dataset_uri} (no dataset.json shard list, nothing under shards/)")
    filesystem, _ = storage.arrow_location(uris[0])  # one filesystem for every shard
    paths = [storage.arrow_path(u) for u in uris]
    spec = _dataset_spec(info, filesystem, paths[0])
    if spec is not None:
        if num_frames > spec.frames:
            raise ValueError(f"num_frames={num_frames} exceeds the {spec.frames} frames per segment of {dataset_uri}")
        if fps is not None and abs(fps - spec.fps) > 1e-6:
            raise ValueError(f"fps={fps} but {dataset_uri} was ingested at {spec.fps} fps: re-ingest or change fps")
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None
    decode_kwargs = {"num_frames": num_frames, "size": size, "seed": seed, "crop_scale": tuple(crop_scale),
                     "crop_aspect": tuple(crop_aspect), "flip": flip, "held_out_fraction": held_out_fraction}
    counts = _shard_row_counts(dataset_uri, info, uris, paths, filesystem) if start else [0] * len(uris)
    passes = []
    for plan in plan_shard_passes(paths, counts, seed=seed, epochs=epochs, start=start):
        ds = _read_pass(plan, filesystem)
        ds = ds.map_batches(decode_shard_batch, fn_kwargs={**decode_kwargs, "epoch": plan.epoch}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=decode_cpus, compute=compute)
        passes.append(with_masks(ds, mask_grid, mask_cfgs, seed, batch_size, decode_cpus, compute))
    return passes[0].union(*passes[1:]) if len(passes) > 1 else passes[0]


def _read_pass(plan: ShardPass, filesystem: pafs.FileSystem) -> ray.data.Dataset:
    """Shard rows {"uri", "segment", "mp4"} of one pass: the head file without its consumed rows
    (dropped by (uri, segment), before decode), then the whole files."""
    import ray.data

    reads = []
    if plan.head is not None:
        consumed = leading_rows(plan.head, plan.head_skip, filesystem)
        reads.append(ray.data.read_parquet(plan.head, filesystem=filesystem).select_columns(SHARD_COLUMNS)
                     .map_batches(drop_rows_batch, fn_kwargs={"rows": consumed}, batch_format="pyarrow", batch_size=None))
    if plan.files:
        reads.append(ray.data.read_parquet(plan.files, filesystem=filesystem).select_columns(SHARD_COLUMNS))
    return reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]


def _shard_row_counts(dataset_uri: str, info: dict | None, uris: list[str], paths: list[str],
                      filesystem: pafs.FileSystem) -> list[int]:
    """Rows per shard file (aligned with ``uris`` and their ``paths`` in ``filesystem``):
    ``dataset.json``'s per-shard ``segments`` when it lists them all, else each file's parquet
    footer (no data read)."""
    listed = {}
    for entry in (info or {}).get("shards", []):
        if isinstance(entry, dict) and "segments" in entry:
            path = entry["path"]
            full = path if storage.is_s3(path) or os.path.isabs(path) else storage.join_uri(dataset_uri, path)
            listed[full] = int(entry["segments"])
    if all(u in listed for u in uris):
        return [listed[u] for u in uris]
    import pyarrow.parquet as pq
    from concurrent.futures import ThreadPoolExecutor

    def footer_rows(path: str) -> int:
        with pq.ParquetFile(path, filesystem=filesystem) as shard:
            return shard.metadata.num_rows

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer_rows, paths))


def _dataset_spec(info: dict | None, filesystem: pafs.FileSystem, first_shard: str) -> shards.ClipSpec | None:
    """The clip spec the shards were cut with: ``dataset.json``'s, else the first shard's metadata."""
    if info and "clip_spec" in info:
        return shards.ClipSpec.from_dict(info["clip_spec"])
    import pyarrow.parquet as pq

    return shards.read_shard_spec(pq.read_schema(first_shard, filesystem=filesystem))
