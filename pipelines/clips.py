"""Minimal Ray Data read path for training: video URIs -> random fixed-rate clips.

Each row is (uri, epoch); the decode transform draws one clip per row from an RNG seeded by
(seed, uri, epoch), so every epoch sees different clips yet a rerun sees the same ones.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from pipelines import storage
from pipelines.video import VideoDecodeError, decode_clip

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


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


def decode_clips_batch(
    batch: dict[str, np.ndarray], *, num_frames: int, fps: float, size: int, seed: int
) -> dict[str, np.ndarray]:
    """{"uri", optional "epoch"} -> {"clip": uint8 (B, T, H, W, 3)}; undecodable rows are dropped."""
    uris = batch["uri"]
    epochs = batch.get("epoch", np.zeros(len(uris), dtype=np.int64))
    clips = []
    for uri, epoch in zip(uris, epochs):
        uri = str(uri)
        rng = np.random.default_rng([seed, _stable_hash(uri), int(epoch)])
        try:
            clips.append(decode_clip(storage.get_bytes(uri), num_frames, fps, size, rng=rng))
        except (VideoDecodeError, FileNotFoundError) as err:
            log.warning("skipping %s: %s", uri, err)
    if not clips:
        return {"clip": np.zeros((0, num_frames, size, size, 3), dtype=np.uint8)}
    return {"clip": np.stack(clips)}


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
) -> ray.data.Dataset:
    """Dataset of {"clip": uint8 (T, H, W, 3)} rows, ``epochs`` passes over ``uris``.

    Row order is shuffled per epoch here (cheap, deterministic) instead of ``random_shuffle``.
    ``decode_cpus`` is explicit and small so decode tasks leave room for Ray Train workers;
    ``decode_tasks`` caps how many run at once (each is a worker process importing PyAV, boto3).
    """
    import ray.data  # here, so the transforms above import without Ray

    items = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(uris))
        items += [{"uri": uris[i], "epoch": epoch} for i in order]
    return ray.data.from_items(items).map_batches(
        decode_clips_batch,
        fn_kwargs={"num_frames": num_frames, "fps": fps, "size": size, "seed": seed},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=decode_cpus,
        compute=ray.data.TaskPoolStrategy(size=decode_tasks) if decode_tasks else None,
    )
