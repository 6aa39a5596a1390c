"""Shard mode, the production read path: training clips from an ingested dataset's shards.

Rows of the dataset's parquet shards (``pipelines.shards``: one short H.264 segment per row) are
read, decoded, augmented (``pipelines.augment``) and given their masks (``pipelines.masking``) by
one Ray task per range of rows, on CPU. A row is one clip, never a whole video, so memory does not
grow with the dataset. Every row's RNG is seeded by (seed, row key), so every
epoch sees different clips yet a rerun sees the same ones, however Ray batches the rows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from jepa.config import DataConfig, MaskConfig
from pipelines import shards, storage
from pipelines.augment import augment_clip
from pipelines.keys import is_held_out, row_key
from pipelines.masking import add_masks_batch, mask_stage_kwargs
from pipelines.resume import clips_batch, plan_row_ranges
from pipelines.video import VideoDecodeError

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import ray.data

log = logging.getLogger(__name__)

SHARD_COLUMNS = ["uri", "segment", "mp4"]
"""The shard columns a training clip needs."""

MAX_PLAN_BLOCKS = 256
"""Most Ray blocks the read plan is split into (``shard_clip_dataset``)."""


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


def shard_rows_batch(rows: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
    """Arrow shard rows -> the {"uri", "segment", "mp4"} numpy batch ``decode_shard_batch`` takes."""
    cols = rows.select(SHARD_COLUMNS).to_pydict()
    return {"uri": np.asarray(cols["uri"]), "segment": np.asarray(cols["segment"]),
            "mp4": np.asarray(cols["mp4"], dtype=object)}


def decode_ranges_batch(
    batch: dict[str, np.ndarray],
    *,
    filesystem: pafs.FileSystem,
    batch_size: int,
    masks: dict | None = None,
    **decode_kwargs,
) -> Iterator[dict[str, np.ndarray]]:
    """Read tasks' stage: {"path", "lo", "hi", "epoch"} row ranges (``plan_row_ranges``) -> their
    clips, ``batch_size`` rows at a time (each a block of its own: ``decode_shard_batch``'s output,
    plus "target_masks" when ``masks`` holds ``add_masks_batch``'s arguments). The range is read
    here, in the decode task, so its MP4 bytes never pass through the object store."""
    for path, lo, hi, epoch in zip(batch["path"], batch["lo"], batch["hi"], batch["epoch"]):
        table = shards.read_shard_rows(str(path), int(lo), int(hi), filesystem, columns=SHARD_COLUMNS)
        for offset in range(0, table.num_rows, batch_size):
            out = decode_shard_batch(shard_rows_batch(table.slice(offset, batch_size)), epoch=int(epoch),
                                     **decode_kwargs)
            yield out if masks is None else add_masks_batch(out, **masks)


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
    rows_per_range: int = shards.SHARD_ROW_GROUP_ROWS,
    start: int = 0,
) -> ray.data.Dataset:
    """Dataset of {"clip": uint8 (T, H, W, 3), "key": int64, INPUT_ROWS: int64[, "target_masks":
    bool (K, N)]} rows streamed from an ingested dataset's shards (``s3://B/datasets/NAME`` or a
    local folder), ``epochs`` passes over them.

    The shards are listed once. Every file is cut into ranges of ``rows_per_range`` rows (a row
    group as ingest writes them), each epoch visits every range in its own seeded order
    (``plan_row_ranges``), and each range is one unit of work: its task reads it and decodes it
    (``decode_ranges_batch``). So decode parallelism follows ``decode_tasks`` (and ``decode_cpus``)
    within an epoch, and the first batch waits for one range, whatever the epoch count. Output
    blocks hold ``batch_size`` clips, so a consumer batching by the same size gets whole blocks.

    ``start`` drops that many leading rows of the plan (over all epochs, held-out rows included):
    the ranges before it are never read and the range it falls in starts at its first unconsumed
    row. With more than one decode task, clips arrive in completion order, not plan order (set
    ``preserve_order`` for the exact order). With ``mask_grid`` (the model's token grid) and
    ``mask_cfgs``, each clip gets its target-mask flags (``add_masks_batch``) in the same task.
    ``fps``, when given, must match the shards'. ``held_out_fraction`` drops the sources
    ``split_held_out`` would hold out. Hand the result to Ray Train, whose
    ``streaming_split(equal=True)`` gives every worker the same number of rows.
    """
    import ray.data  # here, so the transforms above import without Ray

    masks = mask_stage_kwargs(mask_grid, mask_cfgs, seed)
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
    counts = _shard_row_counts(dataset_uri, info, uris, paths, filesystem)
    plan = plan_row_ranges(paths, counts, rows_per_range=rows_per_range, seed=seed, epochs=epochs, start=start)
    if not plan:
        raise ValueError(f"the shards of {dataset_uri} hold no rows")
    kwargs = {"filesystem": filesystem, "batch_size": batch_size, "masks": masks, "num_frames": num_frames,
              "size": size, "seed": seed, "crop_scale": tuple(crop_scale), "crop_aspect": tuple(crop_aspect),
              "flip": flip, "held_out_fraction": held_out_fraction}
    # A Ray block per range costs about 1.5 ms of driver time to create; past MAX_PLAN_BLOCKS,
    # a block holds several consecutive ranges and its task streams them one after the other.
    items = [dataclasses.asdict(r) for r in plan]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_PLAN_BLOCKS)).map_batches(
        decode_ranges_batch, fn_kwargs=kwargs, batch_size=1, batch_format="numpy", num_cpus=decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None)
    # Blocks the size of one yielded batch, not Ray's default of up to 128 MiB: the consumer gets
    # clips as soon as a batch is decoded, and whole blocks when it batches by the same size.
    ds.context.target_max_block_size = batch_size * num_frames * size * size * 3
    return ds


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
