"""Direct mode: training clips decoded straight from raw videos, no ingest needed.

Each row is (uri, epoch); the decode transform seeks to the keyframe before a random clip of the
raw video and decodes up to its last frame, so every clip pays for decoding the source at full
resolution: for small datasets, evaluation and demos (shard mode, ``pipelines.shard_clips``, is
the production path). Clips are drawn from an RNG seeded by (seed, video, epoch), so every epoch
sees different clips yet a rerun sees the same ones, however Ray batches the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from jepa.config import MaskConfig
from pipelines import storage
from pipelines.keys import row_key, stable_hash
from pipelines.masking import with_masks
from pipelines.resume import clips_batch, epoch_items
from pipelines.video import VideoDecodeError, decode_clip

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


def list_videos(source_uri: str, suffixes: tuple[str, ...] = (".mp4",)) -> list[str]:
    return sorted(obj.uri for obj in storage.list_objects(source_uri, suffixes))


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
    return clips_batch(clips, keys, kept, len(uris), num_frames=num_frames, size=size)


def decode_clips_batch(
    batch: dict[str, np.ndarray], *, num_frames: int, fps: float, size: int, seed: int
) -> dict[str, np.ndarray]:
    """Direct mode's decode stage (``decode_uri_batch``): a clip of each raw video, drawn from an
    RNG seeded by (seed, video, epoch)."""
    def decode_one(uri: str, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, stable_hash(uri), epoch])
        return decode_clip(storage.get_bytes(uri), num_frames, fps, size, rng=rng)

    return decode_uri_batch(batch, decode_one, (VideoDecodeError,), num_frames=num_frames, size=size)


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
    With ``mask_grid`` and ``mask_cfgs``, a mask stage follows the decode (``with_masks``).
    ``start`` drops that many leading (uri, epoch) rows before anything is downloaded
    (``epoch_items``).
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
    return with_masks(ds, mask_grid, mask_cfgs, seed, batch_size, decode_cpus, compute)
