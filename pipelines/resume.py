"""Resume planning: a training dataset can start at a position in its input rows, and its clips
say how many input rows they used up, so a trainer knows where to resume.

Every dataset builder takes ``start``, a position in its sequence of input rows (items in direct
and image mode, shard rows in shard mode, over all epochs), and leaves the rows before it out
before anything is read or decoded. Output rows carry ``INPUT_ROWS``, the input rows each clip
stands for (itself plus the dropped rows before it), so a trainer that sums it over the clips it
consumed knows the position to resume at, drops included.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow.fs as pafs

INPUT_ROWS = "input_rows"
"""Output column: how many input rows of the dataset each clip accounts for (see ``input_rows``)."""


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


def clips_batch(clips: list[np.ndarray], keys: list[int], kept: list[int], n: int, *,
                num_frames: int, size: int) -> dict[str, np.ndarray]:
    """A decode stage's output for a batch of ``n`` input rows whose rows ``kept`` gave ``clips``:
    {"clip": uint8 (B, num_frames, size, size, 3), "key": int64 (B,), INPUT_ROWS: int64 (B,)}
    (typed and shaped even when B is 0)."""
    if not clips:
        return {"clip": np.zeros((0, num_frames, size, size, 3), dtype=np.uint8), "key": np.zeros(0, np.int64),
                INPUT_ROWS: np.zeros(0, np.int64)}
    return {"clip": np.stack(clips), "key": np.asarray(keys, dtype=np.int64), INPUT_ROWS: input_rows(kept, n)}


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


@dataclasses.dataclass(frozen=True)
class ShardPass:
    """One epoch's reads: ``head`` (a shard file whose first ``head_skip`` rows were consumed
    before the resume position; None if the epoch starts on a file boundary), then ``files`` whole."""

    epoch: int
    files: list[str]
    head: str | None = None
    head_skip: int = 0


def plan_shard_passes(paths: list[str], counts: list[int], *, seed: int, epochs: int, start: int = 0) -> list[ShardPass]:
    """The epochs of shard mode (each over ``paths`` in its seeded order) from row ``start`` on:
    whole epochs and whole files before it are left out, using ``counts`` (rows per file, aligned
    with ``paths``; unused when ``start`` is 0)."""
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


def leading_rows(path: str, n: int, filesystem: pafs.FileSystem) -> list[tuple[str, int]]:
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
