"""Ray Data read paths for training: clips from ingested shards, or straight from raw videos.

Shard mode (``shard_clip_dataset``, the production path): rows of the dataset's parquet shards
(``pipelines.shards``: one short H.264 segment per row) are streamed with ``read_parquet``, decoded,
augmented (random resized crop, the same for every frame of a clip, and horizontal flip) and given
their masks, all in ``map_batches`` on CPU. A row is one clip, never a whole video, so memory does
not grow with the dataset.

Direct mode (``clip_dataset``): each row is (uri, epoch); the decode transform seeks to the
keyframe before a random clip of the raw video and decodes up to its last frame. No ingest needed,
but every clip pays for decoding the source at full resolution.

Every transform draws from an RNG seeded by (seed, source, epoch), so every epoch sees different
clips yet a rerun sees the same ones, however Ray batches the rows.

Resuming: every builder takes ``start``, a position in its sequence of input rows (items in direct
mode, shard rows in shard mode, over all epochs), and leaves the rows before it out before anything
is read or decoded. Output rows carry ``INPUT_ROWS``, the input rows each clip stands for (itself
plus the dropped rows before it), so a trainer that sums it over the clips it consumed knows the
position to resume at, drops included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from jepa.config import MaskConfig
from jepa.masks import MultiBlockMaskGenerator
from pipelines import shards, storage
from pipelines.video import VideoDecodeError, decode_clip

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

INPUT_ROWS = "input_rows"
"""Output column: how many input rows of the dataset each clip accounts for (see ``input_rows``)."""


def _stable_hash(text: str) -> int:
    """64-bit hash that is the same in every process and run (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _split_key(uri: str) -> str:
    # The object key, not the bucket: copying a dataset to another bucket keeps its split.
    return storage.parse_uri(uri)[1] if storage.is_s3(uri) else uri


def list_videos(source_uri: str, suffixes: tuple[str, ...] = (".mp4",)) -> list[str]:
    return sorted(obj.uri for obj in storage.list_objects(source_uri, suffixes))


def split_held_out(uris: list[str], fraction: float, salt: str = "heldout") -> tuple[list[str], list[str]]:
    """(train, held_out) by a hash of each key: stable as videos are added, no RNG involved.

    Each video lands in held_out with probability ``fraction``, so small sets may get none.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    train, held_out = [], []
    for uri in uris:
        u = _stable_hash(f"{salt}:{_split_key(uri)}") / 2**64
        (held_out if u < fraction else train).append(uri)
    return train, held_out


def input_rows(kept: list[int], n: int) -> np.ndarray:
    """Input rows each output row stands for, given the indices ``kept`` of the ``n`` input rows of
    a batch that gave a clip: itself plus the dropped rows before it, and the last one also the
    batch's trailing drops. Summed over consumed clips this counts consumed input rows, so a resume
    starts after the dropped rows too (only a batch that keeps nothing goes uncounted)."""
    if not kept:
        return np.zeros(0, dtype=np.int64)
    counts = np.diff(np.asarray([-1, *kept], dtype=np.int64))
    counts[-1] += n - 1 - kept[-1]
    return counts


def _no_clips(num_frames: int, size: int) -> dict[str, np.ndarray]:
    return {"clip": np.zeros((0, num_frames, size, size, 3), dtype=np.uint8), "key": np.zeros(0, np.int64),
            INPUT_ROWS: np.zeros(0, np.int64)}


def decode_uri_batch(
    batch: dict[str, np.ndarray], decode_one: Callable[[str, int], np.ndarray],
    errors: tuple[type[Exception], ...], *, num_frames: int, size: int,
) -> dict[str, np.ndarray]:
    """{"uri", optional "epoch"} -> {"clip": uint8 (B, num_frames, size, size, 3), "key": int64 (B,),
    INPUT_ROWS: int64 (B,)}, each clip from ``decode_one(uri, epoch)``; rows that raise one of
    ``errors`` or FileNotFoundError are dropped with a warning (direct and image mode)."""
    uris = batch["uri"]
    epochs = batch.get("epoch", np.zeros(len(uris), dtype=np.int64))
    clips, keys, kept = [], [], []
    for i, (uri, epoch) in enumerate(zip(uris, epochs)):
        uri, epoch = str(uri), int(epoch)
        try:
            clips.append(decode_one(uri, epoch))
        except (*errors, FileNotFoundError) as err:
            log.warning("skipping %s: %s", uri, err)
            continue
        keys.append(row_key(uri, 0, epoch))
        kept.append(i)
    if not clips:
        return _no_clips(num_frames, size)
    return {"clip": np.stack(clips), "key": np.asarray(keys, dtype=np.int64), INPUT_ROWS: input_rows(kept, len(uris))}


def decode_clips_batch(
    batch: dict[str, np.ndarray], *, num_frames: int, fps: float, size: int, seed: int
) -> dict[str, np.ndarray]:
    """Direct mode's decode stage (``decode_uri_batch``): a clip of each raw video, drawn from an
    RNG seeded by (seed, video, epoch)."""
    def decode_one(uri: str, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, _stable_hash(uri), epoch])
        return decode_clip(storage.get_bytes(uri), num_frames, fps, size, rng=rng)

    return decode_uri_batch(batch, decode_one, (VideoDecodeError,), num_frames=num_frames, size=size)


def epoch_items(uris: list[str], *, seed: int, epochs: int, start: int = 0) -> list[dict]:
    """{"uri", "epoch"} rows of ``epochs`` passes over ``uris``, each pass in its own seeded order,
    from row ``start`` on. Built in the driver, so a resumed run never touches the rows before its
    position; whole epochs before it are not even permuted."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if not uris:
        return []
    first, offset = divmod(start, len(uris))
    items = []
    for epoch in range(first, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(uris))
        items += [{"uri": uris[i], "epoch": epoch} for i in order]
    if start and offset >= len(items):
        raise ValueError(f"start={start} is past the {epochs * len(uris)} rows of {epochs} epochs")
    return items[offset:]


def clip_dataset(
    uris: list[str],
    *,
    num_frames: int,
    fps: float,
    size: int,
    seed: int = 0,
    epochs: int = 1,
    decode_cpus: float = 0.5,
    decode_tasks: int | None = None,
    batch_size: int = 4,
    mask_grid: tuple[int, int, int] | None = None,
    mask_cfgs: list[MaskConfig] | None = None,
    start: int = 0,
) -> ray.data.Dataset:
    """Direct mode: {"clip": uint8 (T, H, W, 3), "key": int64[, "target_masks"]} rows decoded
    straight from raw videos, ``epochs`` passes over ``uris``; for small datasets (no ingest).

    Row order is shuffled per epoch here (cheap, deterministic) instead of ``random_shuffle``.
    ``decode_cpus`` is explicit and small so decode tasks leave room for Ray Train workers;
    ``decode_tasks`` caps how many run at once (each is a worker process importing PyAV, boto3).
    With ``mask_grid`` and ``mask_cfgs``, masks are added as in ``shard_clip_dataset``. ``start``
    drops that many leading (uri, epoch) rows before anything is downloaded (``epoch_items``).
    """
    import ray.data  # here, so the transforms above import without Ray

    items = epoch_items(uris, seed=seed, epochs=epochs, start=start)
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None
    ds = ray.data.from_items(items).map_batches(
        decode_clips_batch,
        fn_kwargs={"num_frames": num_frames, "fps": fps, "size": size, "seed": seed},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=decode_cpus,
        compute=compute,
    )
    return _with_masks(ds, mask_grid, mask_cfgs, seed, batch_size, decode_cpus, compute)


def _with_masks(ds, grid, mask_cfgs, seed: int, batch_size: int, num_cpus: float, compute):
    """Append the mask stage (``add_masks_batch``) when a token grid and mask configs are given."""
    if (grid is None) != (mask_cfgs is None):
        raise ValueError("give both mask_grid and mask_cfgs, or neither")
    if grid is None:
        return ds
    cfgs = [dataclasses.asdict(c) if isinstance(c, MaskConfig) else dict(c) for c in mask_cfgs]
    return ds.map_batches(add_masks_batch, fn_kwargs={"grid": tuple(grid), "mask_cfgs": cfgs, "seed": seed},
                          batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus, compute=compute)


# ---------------------------------------------------------------------------------------------
# Shard mode: augmentation and masks as plain batch transforms, then the Ray Data graph.

CROP_SCALE = (0.3, 1.0)
"""Random resized crop: range of the crop's area as a fraction of the frame (V-JEPA 2)."""
CROP_ASPECT = (0.75, 1.35)
"""Random resized crop: range of the crop's width / height (log-uniform)."""


def row_key(uri: str, segment: int, epoch: int) -> int:
    """Stable 63-bit id of one draw of one segment (fits int64; same in every process)."""
    return _stable_hash(f"{_split_key(uri)}#{int(segment)}#{int(epoch)}") >> 1


def sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    aspect: tuple[float, float] = CROP_ASPECT,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width): area ~ U(scale) x frame area, width/height ratio
    log-uniform in ``aspect``. Up to 10 draws must fit in the frame, else the largest centred
    crop with the ratio clamped to ``aspect``."""
    area = height * width
    log_lo, log_hi = np.log(aspect[0]), np.log(aspect[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ratio = float(np.exp(rng.uniform(log_lo, log_hi)))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < aspect[0]:
        w, h = width, min(height, int(round(width / aspect[0])))
    elif ratio > aspect[1]:
        h, w = height, min(width, int(round(height * aspect[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(clip: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the ``box`` of every frame resized to uint8 (T, size, size, 3).

    torch's uint8 bilinear kernel on the channels-last view (antialiased when shrinking): no
    float copy of the clip, and it is the fastest resize torch has on CPU."""
    top, left, h, w = box
    x = torch.from_numpy(np.ascontiguousarray(clip[:, top : top + h, left : left + w]))
    x = x.permute(0, 3, 1, 2)  # (T, 3, h, w) view, channels-last in memory
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def augment_clip(
    clip: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    aspect: tuple[float, float] = CROP_ASPECT,
    flip: float = 0.5,
) -> np.ndarray:
    """Random resized crop (one box for all frames) to ``size`` x ``size``, then a horizontal flip
    with probability ``flip``: uint8 (T, H, W, 3) -> uint8 (T, size, size, 3)."""
    box = sample_crop(clip.shape[1], clip.shape[2], rng, scale, aspect)
    out = resized_crop(clip, box, size)
    if rng.random() < flip:
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def _held_out(uri: str, fraction: float) -> bool:
    # Same rule as split_held_out, so shard mode and direct mode hold out the same videos.
    return fraction > 0 and _stable_hash(f"heldout:{_split_key(uri)}") / 2**64 < fraction


def decode_shard_batch(
    batch: dict[str, np.ndarray],
    *,
    num_frames: int,
    size: int,
    seed: int,
    epoch: int = 0,
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_aspect: tuple[float, float] = CROP_ASPECT,
    flip: float = 0.5,
    held_out_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Shard rows {"uri", "segment", "mp4"} -> {"clip": uint8 (B, num_frames, size, size, 3),
    "key": int64 (B,), INPUT_ROWS: int64 (B,)}. A segment longer than ``num_frames`` gives a random
    window of it; rows of held-out sources and undecodable segments are dropped (the latter with a
    warning)."""
    clips, keys, kept = [], [], []
    for i, (uri, segment, mp4) in enumerate(zip(batch["uri"], batch["segment"], batch["mp4"])):
        uri = str(uri)
        if _held_out(uri, held_out_fraction):
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
    if not clips:
        return _no_clips(num_frames, size)
    return {"clip": np.stack(clips), "key": np.array(keys, dtype=np.int64), INPUT_ROWS: input_rows(kept, len(batch["uri"]))}


def add_masks_batch(
    batch: dict[str, np.ndarray],
    *,
    grid: tuple[int, int, int],
    mask_cfgs: list[MaskConfig | dict],
    seed: int,
) -> dict[str, np.ndarray]:
    """Adds "target_masks": bool (B, K, N), per clip and mask config, True where a token is a
    target (N = T * H * W of the token ``grid``). Each clip's blocks are drawn from its own
    generator seeded by (seed, key), so they do not depend on how rows were batched. The flags are
    not cut: the trainer cuts each training batch to its minimum keep-counts with
    ``jepa.masks.masks_from_flags``, exactly the reference's rule, whatever batches Ray made here."""
    cfgs = [c if isinstance(c, MaskConfig) else MaskConfig(**c) for c in mask_cfgs]
    generators = [MultiBlockMaskGenerator(tuple(grid), c) for c in cfgs]
    keys = batch["key"]
    flags = np.zeros((len(keys), len(cfgs), int(np.prod(grid))), dtype=bool)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(_stable_hash(f"masks:{seed}:{int(key)}") >> 1)
        for k, gen in enumerate(generators):
            flags[i, k] = gen.target_flags(1, g)[0].numpy()
    return {**batch, "target_masks": flags}


def shard_clip_dataset(
    dataset_uri: str,
    *,
    num_frames: int,
    size: int,
    seed: int = 0,
    epochs: int = 1,
    fps: float | None = None,
    crop_scale: tuple[float, float] = CROP_SCALE,
    crop_aspect: tuple[float, float] = CROP_ASPECT,
    flip: float = 0.5,
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
    spec = _dataset_spec(info, uris[0])
    if spec is not None:
        if num_frames > spec.frames:
            raise ValueError(f"num_frames={num_frames} exceeds the {spec.frames} frames per segment of {dataset_uri}")
        if fps is not None and abs(fps - spec.fps) > 1e-6:
            raise ValueError(f"fps={fps} but {dataset_uri} was ingested at {spec.fps} fps: re-ingest or change fps")
    filesystem = storage.pyarrow_fs() if storage.is_s3(uris[0]) else None
    paths = [_arrow_path(u) for u in uris]
    compute = ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None
    decode_kwargs = {"num_frames": num_frames, "size": size, "seed": seed, "crop_scale": tuple(crop_scale),
                     "crop_aspect": tuple(crop_aspect), "flip": flip, "held_out_fraction": held_out_fraction}
    counts = _shard_row_counts(dataset_uri, info, uris, filesystem) if start else [0] * len(uris)
    passes = []
    for plan in plan_shard_passes(paths, counts, seed=seed, epochs=epochs, start=start):
        ds = _read_pass(plan, filesystem)
        ds = ds.map_batches(decode_shard_batch, fn_kwargs={**decode_kwargs, "epoch": plan.epoch}, batch_size=batch_size,
                            batch_format="numpy", num_cpus=decode_cpus, compute=compute)
        passes.append(_with_masks(ds, mask_grid, mask_cfgs, seed, batch_size, decode_cpus, compute))
    return passes[0].union(*passes[1:]) if len(passes) > 1 else passes[0]


@dataclasses.dataclass(frozen=True)
class ShardPass:
    """One epoch's reads: ``head`` (a shard file whose first ``head_skip`` rows were consumed
    before the resume position; None if the epoch starts on a file boundary), then ``files`` whole."""

    epoch: int
    files: list[str]
    head: str | None = None
    head_skip: int = 0


def plan_shard_passes(paths: list[str], counts: list[int], *, seed: int, epochs: int, start: int = 0) -> list[ShardPass]:
    """The epochs of ``shard_clip_dataset`` (each over ``paths`` in its seeded order) from row
    ``start`` on: whole epochs and whole files before it are left out, using ``counts`` (rows per
    file, aligned with ``paths``; unused when ``start`` is 0)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    total = sum(counts)
    first, skip = divmod(start, total) if start and total else (0, 0)
    if start and (not total or first >= epochs):
        raise ValueError(f"start={start} is past the {epochs * total} rows of {epochs} epochs")
    passes = []
    for epoch in range(first, epochs):
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(paths))]
        head = None
        while epoch == first and skip and head is None:
            i = order.pop(0)
            if skip >= counts[i]:
                skip -= counts[i]
            else:
                head = paths[i]
        passes.append(ShardPass(epoch, [paths[i] for i in order], head, skip if head else 0))
    return passes


def _read_pass(plan: ShardPass, filesystem) -> ray.data.Dataset:
    """Shard rows {"uri", "segment", "mp4"} of one pass: the head file without its consumed rows
    (dropped by (uri, segment), before decode), then the whole files."""
    import ray.data

    columns = ["uri", "segment", "mp4"]
    reads = []
    if plan.head is not None:
        consumed = _leading_rows(plan.head, plan.head_skip, filesystem)
        reads.append(ray.data.read_parquet(plan.head, filesystem=filesystem).select_columns(columns)
                     .map_batches(drop_rows_batch, fn_kwargs={"rows": consumed}, batch_format="pyarrow", batch_size=None))
    if plan.files:
        reads.append(ray.data.read_parquet(plan.files, filesystem=filesystem).select_columns(columns))
    return reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]


def _leading_rows(path: str, n: int, filesystem) -> list[tuple[str, int]]:
    """(uri, segment) of the first ``n`` rows of a shard file: only those two columns are read."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["uri", "segment"], filesystem=filesystem).slice(0, n)
    return list(zip(table["uri"].to_pylist(), table["segment"].to_pylist()))


def drop_rows_batch(batch, *, rows: list[tuple[str, int]]):
    """Arrow shard rows minus those whose (uri, segment) is in ``rows``: a cheap filter before the
    decode. (uri, segment) names one row of a shard, as ingest writes every segment once."""
    import pyarrow as pa

    drop = {(str(u), int(s)) for u, s in rows}
    keep = [(u, s) not in drop for u, s in zip(batch["uri"].to_pylist(), batch["segment"].to_pylist())]
    return batch.filter(pa.array(keep, type=pa.bool_()))


def _shard_row_counts(dataset_uri: str, info: dict | None, uris: list[str], filesystem) -> list[int]:
    """Rows per shard file (aligned with ``uris``): ``dataset.json``'s per-shard ``segments`` when
    it lists them all, else each file's parquet footer (no data read)."""
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

    def footer_rows(uri: str) -> int:
        with pq.ParquetFile(_arrow_path(uri), filesystem=filesystem) as shard:
            return shard.metadata.num_rows

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(footer_rows, uris))


def _arrow_path(uri: str) -> str:
    if storage.is_s3(uri):
        bucket, key = storage.parse_uri(uri)
        return f"{bucket}/{key}"
    return uri


def _dataset_spec(info: dict | None, first_shard: str) -> shards.ClipSpec | None:
    if info and "clip_spec" in info:
        return shards.ClipSpec.from_dict(info["clip_spec"])
    import pyarrow.parquet as pq

    fs = storage.pyarrow_fs() if storage.is_s3(first_shard) else None
    return shards.read_shard_spec(pq.read_schema(_arrow_path(first_shard), filesystem=fs))
